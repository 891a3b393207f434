"""Run the examples in README.md and docs/, so that the docs cannot drift.

A fenced block whose info string is exactly ``python`` is a complete program.
Each one runs as a script in a fresh interpreter and must exit with status 0
and write nothing to stderr. An ``output`` block right after it (with only
blank lines between) is the exact stdout that the program must print. Blocks
with any other info string, such as ``python fragment``, are not run.
``docs/benchmarks.md`` is left out: ``tests/test_benchmarks_smoke.py`` covers
its command.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SKIPPED_PAGES = {"benchmarks.md"}

# A fence opens a block: three or more backticks or tildes, then the info
# string. Fences indented by up to 3 spaces count, as in CommonMark.
FENCE = re.compile(r"^ {0,3}(?P<fence>`{3,}|~{3,})(?P<info>.*)$")

# In asyncio debug mode (PYTHONASYNCIODEBUG=1, as in scripts/test.sh, or -X
# dev) the loop warns about each callback that takes longer than 0.1 s on its
# clock. On a busy machine any example can trigger it, and on the virtual
# clock each advance() does, so these lines are not failures.
SLOW_CALLBACK = re.compile(r"^Executing <.*> took \d+\.\d+ seconds$")

# Seconds one example may run before it counts as hung.
EXAMPLE_TIMEOUT = 60


@dataclass(frozen=True)
class Block:
    """A fenced code block of a Markdown file."""

    path: Path
    line: int  # 1-based line of the opening fence
    info: str
    text: str


@dataclass(frozen=True)
class Example:
    """A ``python`` block and the ``output`` block that follows it, if any."""

    code: Block
    output: Block | None

    @property
    def name(self) -> str:
        return f"{self.code.path.relative_to(ROOT)}:{self.code.line}"


def doc_files() -> list[Path]:
    """Return README.md and every page of docs/ whose examples are run."""
    pages = [p for p in sorted(DOCS.glob("*.md")) if p.name not in SKIPPED_PAGES]
    return [ROOT / "README.md", *pages]


def parse_blocks(path: Path) -> list[tuple[Block, bool]]:
    """Return the fenced blocks of ``path``, in order.

    Each block comes with a flag that is true when only blank lines separate
    it from the block before it.
    """
    blocks: list[tuple[Block, bool]] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    adjacent = False
    index = 0
    while index < len(lines):
        match = FENCE.match(lines[index])
        if match is None:
            if lines[index].strip():
                adjacent = False
            index += 1
            continue

        fence = match["fence"]
        closing = re.compile(rf"^ {{0,3}}{fence[0]}{{{len(fence)},}}\s*$")
        start = index
        body: list[str] = []
        index += 1
        while index < len(lines) and not closing.match(lines[index]):
            body.append(lines[index])
            index += 1

        if index == len(lines):
            raise ValueError(f"{path}:{start + 1}: the fenced block is not closed")

        text = "\n".join(body) + "\n"
        blocks.append((Block(path, start + 1, match["info"].strip(), text), adjacent))
        adjacent = True
        index += 1

    return blocks


def collect_examples(path: Path) -> list[Example]:
    """Return the examples of ``path``, each with its expected output."""
    examples: list[Example] = []
    previous: Block | None = None
    for block, adjacent in parse_blocks(path):
        if block.info == "output":
            if previous is None or previous.info != "python" or not adjacent:
                raise ValueError(
                    f"{path}:{block.line}: an output block must follow a "
                    "python block, with only blank lines between them"
                )
            examples[-1] = Example(examples[-1].code, block)
        elif block.info == "python":
            examples.append(Example(block, None))

        previous = block

    return examples


EXAMPLES = [example for path in doc_files() for example in collect_examples(path)]


def run_example(code: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as a script in a new interpreter, in ``workdir``.

    ``-X dev`` turns on asyncio debug mode and resource warnings, and ``-W
    error`` turns every warning, such as a coroutine never awaited, into an
    error. The working directory is not the project root, so that the root's
    ``queue.py`` does not shadow the standard library's ``queue`` module.
    """
    script = workdir / "example.py"
    script.write_text(code, encoding="utf-8")
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, "-X", "dev", "-W", "error", str(script)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=EXAMPLE_TIMEOUT,
        check=False,
    )


def unexpected_stderr(stderr: str) -> str:
    """Return ``stderr`` without asyncio's slow-callback warnings."""
    lines = [line for line in stderr.splitlines() if not SLOW_CALLBACK.match(line)]
    return "\n".join(lines)


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_example_runs(example: Example, tmp_path: Path) -> None:
    result = run_example(example.code.text, tmp_path)
    errors = unexpected_stderr(result.stderr)

    assert result.returncode == 0, f"{example.name} failed:\n{result.stderr}"
    assert errors == "", f"{example.name} wrote to stderr:\n{errors}"
    if example.output is not None:
        line = example.output.line
        message = f"{example.name}: stdout differs from the output block at line {line}"
        assert result.stdout == example.output.text, message


def test_examples_found() -> None:
    pages = {example.code.path for example in EXAMPLES}

    assert ROOT / "README.md" in pages
    for path in doc_files():
        if path.name not in ("README.md", "index.md"):
            assert path in pages, f"{path.name} has no runnable example"


def test_index_links_every_page() -> None:
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    linked = set(re.findall(r"\]\(([\w-]+\.md)\)", index))
    pages = {p.name for p in DOCS.glob("*.md")} - {"index.md"}

    assert pages <= linked, f"docs/index.md does not link {sorted(pages - linked)}"
    assert linked <= pages, f"docs/index.md links missing {sorted(linked - pages)}"


def test_parse_blocks_pairs_output(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "Text.\n\n"
        "```python\nprint(1)\n```\n\n"
        "```output\n1\n```\n\n"
        "````python fragment\n```\nawait queue.stop()\n````\n\n"
        "```python\npass\n```\n",
        encoding="utf-8",
    )

    examples = collect_examples(page)

    assert [e.code.line for e in examples] == [3, 16]
    assert examples[0].code.text == "print(1)\n"
    assert examples[0].output is not None
    assert examples[0].output.text == "1\n"
    assert examples[1].output is None


def test_parse_blocks_rejects_stray_output(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "```python\nprint(1)\n```\n\nIt prints:\n\n```output\n1\n```\n",
        encoding="utf-8",
    )

    with pytest.raises(ValueError, match=r"page\.md:7: an output block"):
        collect_examples(page)


def test_parse_blocks_rejects_unclosed(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("```python\nprint(1)\n", encoding="utf-8")

    with pytest.raises(ValueError, match=r"page\.md:1: the fenced block is not closed"):
        parse_blocks(page)
