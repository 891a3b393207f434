"""The benchmark suite: its smoke run, its CLI checks and its baseline pools.

These tests check that the suite runs and that its baselines compute the right
results. They never assert a speed: the figures belong in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from benchmarks import cli, gctime, hooks, instructions, retry, roundtrip
from benchmarks.contenders import POOLS, THROUGHPUT_POOLS, WORKERS, Contender
from benchmarks.harness import format_table, interleave, paired_ratios

ROOT = Path(__file__).resolve().parent.parent

HEADINGS = (
    "1. No-op throughput",
    "2. Memory per pending task",
    "3. Scaling",
    "4. Priority latency",
    "5. Retry path",
    "6. Hook overhead",
    "7. Round trip",
    "Targets (measured, not enforced)",
)

SCENARIO_NAMES = cli.SCENARIOS

# The smoke run takes a few seconds. This limit only stops a run that hangs.
SMOKE_TIMEOUT = 120


def run_benchmarks(*args: str) -> subprocess.CompletedProcess[str]:
    # Without coverage: measuring the run makes it six times slower, and the
    # library's own tests already cover the code it drives.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    return subprocess.run(
        [sys.executable, "-m", "benchmarks", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT,
        check=False,
    )


# The finished smoke run and the JSON document it wrote.
SmokeRun = tuple[subprocess.CompletedProcess[str], dict[str, Any]]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> SmokeRun:
    """Run ``python -m benchmarks --smoke --json FILE`` once for the module."""
    path = tmp_path_factory.mktemp("bench") / "smoke.json"
    completed = run_benchmarks("--smoke", "--json", str(path))
    document = json.loads(path.read_text()) if path.exists() else {}
    return completed, document


# The smoke run


def test_smoke_exit_code(smoke: SmokeRun) -> None:
    completed, _ = smoke
    assert completed.returncode == 0, completed.stderr


def test_smoke_stderr_clean(smoke: SmokeRun) -> None:
    completed, _ = smoke
    assert "Traceback" not in completed.stderr
    assert "Warning" not in completed.stderr


@pytest.mark.parametrize("heading", HEADINGS)
def test_smoke_prints_scenario(smoke: SmokeRun, heading: str) -> None:
    completed, _ = smoke
    assert heading in completed.stdout


def test_smoke_prints_contenders(
    smoke: SmokeRun,
) -> None:
    completed, _ = smoke
    for contender in THROUGHPUT_POOLS:
        if contender.available():
            assert contender.label in completed.stdout
        else:
            assert f"{contender.label}: skipped" in completed.stdout


@pytest.mark.parametrize("scenario", SCENARIO_NAMES)
def test_smoke_json_scenario(smoke: SmokeRun, scenario: str) -> None:
    _, document = smoke
    records = [r for r in document["records"] if r["scenario"] == scenario]
    sizes = {r["size"] for r in records}
    assert records
    assert sizes <= set(cli.SMOKE_SIZES)
    for record in records:
        assert record["samples"], record
        assert all(sample >= 0 for sample in record["samples"]), record


def test_smoke_json_repeats(
    smoke: SmokeRun,
) -> None:
    _, document = smoke
    throughput = [r for r in document["records"] if r["scenario"] == "throughput"]
    assert document["settings"]["repeat"] == 1
    assert document["settings"]["sizes"] == list(cli.SMOKE_SIZES)
    assert all(len(r["samples"]) == 1 for r in throughput)


def test_smoke_json_machine(
    smoke: SmokeRun,
) -> None:
    _, document = smoke
    machine = document["machine"]
    assert machine["cores"].isdigit()
    assert machine["python"].endswith(platform.python_version())
    assert machine["cpu"]


def test_smoke_json_targets(
    smoke: SmokeRun,
) -> None:
    _, document = smoke
    targets = document["targets"]
    assert targets
    assert {t["met"] for t in targets} <= {True, False, None}


def test_scaling_alone_measures_basics(tmp_path: Path) -> None:
    path = tmp_path / "scaling.json"
    completed = run_benchmarks(
        "--smoke", "--loop", "asyncio", "--scenarios", "scaling", "--json", str(path)
    )
    document = json.loads(path.read_text())
    scaling = [r for r in document["records"] if r["scenario"] == "scaling"]
    assert completed.returncode == 0, completed.stderr
    assert "3. Scaling" in completed.stdout
    assert "1. No-op throughput" not in completed.stdout
    assert {r["contender"] for r in scaling} == {"pool", "aq"}


def test_unknown_scenario_rejected() -> None:
    completed = run_benchmarks("--scenarios", "throughput,bogus")
    assert completed.returncode == 2
    assert "invalid --scenarios" in completed.stderr


# CLI parsing


def test_sizes_parsed_sorted() -> None:
    assert cli.parse_sizes("100000,10_000,100000") == (10_000, 100_000)


@pytest.mark.parametrize("text", ["", "ten", "10000,x", "50"])
def test_sizes_invalid(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        cli.parse_sizes(text)


@given(st.sets(st.integers(cli.MIN_SIZE, 10**7), min_size=1, max_size=5))
def test_sizes_round_trip(sizes: set[int]) -> None:
    text = ",".join(str(size) for size in sizes)
    assert cli.parse_sizes(text) == tuple(sorted(sizes))


def test_scenarios_parsed() -> None:
    assert cli.parse_scenarios("retry, memory") == ("retry", "memory")


@pytest.mark.parametrize("text", ["", ",", "speed", "memory,speed"])
def test_scenarios_invalid(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        cli.parse_scenarios(text)


# Harness


@given(
    st.lists(st.text(min_size=1, max_size=3), min_size=1, max_size=6, unique=True),
    st.integers(1, 8),
)
def test_interleave_rotates(keys: list[str], repeat: int) -> None:
    calls: list[str] = []

    def measure(key: str) -> float:
        calls.append(key)
        return float(len(calls))

    samples = interleave(keys, repeat, measure)
    width = len(keys)
    assert len(calls) == width * repeat
    for index in range(repeat):
        block = calls[index * width : (index + 1) * width]
        shift = index % width
        assert block == keys[shift:] + keys[:shift]
    assert all(len(samples[key]) == repeat for key in keys)


def test_paired_ratios_values() -> None:
    assert paired_ratios([2.0, 3.0], [1.0, 6.0]) == [2.0, 0.5]


def test_paired_ratios_length_mismatch() -> None:
    with pytest.raises(ValueError):
        paired_ratios([1.0, 2.0], [1.0])


def test_format_table_aligns() -> None:
    text = format_table(["name", "value"], [["a", "1"], ["longer", "12345"]])
    lines = text.splitlines()
    assert lines[0] == "name    value"
    assert lines[1] == "------  -----"
    assert lines[2] == "a           1"
    assert lines[3] == "longer  12345"


# Baseline pools: each must compute what async_queue computes.


async def double(value: int) -> int:
    return value * 2


def installed(contenders: tuple[Contender, ...]) -> list[Contender]:
    return [c for c in contenders if c.available()]


@pytest.mark.parametrize("contender", installed(THROUGHPUT_POOLS), ids=lambda c: c.key)
async def test_pool_results(contender: Contender) -> None:
    pool = contender.factory()
    await pool.open()
    handles = [await pool.asubmit(double, value) for value in range(100)]
    results = []
    for handle in handles:
        if contender.key == "aiojobs":
            results.append(await handle.wait())
        else:
            results.append(await handle)
    await pool.close()
    assert results == [value * 2 for value in range(100)]


@pytest.mark.parametrize("contender", installed(POOLS), ids=lambda c: c.key)
async def test_pool_wait_all(contender: Contender) -> None:
    done: list[int] = []

    async def record(value: int) -> None:
        done.append(value)

    pool = contender.factory()
    await pool.open()
    handles = [await pool.asubmit(record, value) for value in range(3 * WORKERS)]
    await pool.wait_all(handles)
    await pool.close()
    assert sorted(done) == list(range(3 * WORKERS))


@pytest.mark.parametrize("contender", installed(hooks.CONTENDERS), ids=lambda c: c.key)
async def test_hooks_pool_results(contender: Contender) -> None:
    pool = contender.factory()
    await pool.open()
    handles = [pool.submit(double, value) for value in range(100)]
    results = [await handle for handle in handles]
    await pool.close()
    assert results == [value * 2 for value in range(100)]


def test_smoke_prints_hook_contenders(smoke: SmokeRun) -> None:
    completed, _ = smoke
    for contender in hooks.CONTENDERS:
        if contender.available():
            assert contender.label in completed.stdout
        else:
            assert f"{contender.label}: skipped" in completed.stdout


@pytest.mark.parametrize("contender", roundtrip.CONTENDERS, ids=lambda c: c.key)
async def test_round_trips_each_finish(contender: Contender) -> None:
    if not contender.available():
        pytest.skip(f"{contender.needs} is not installed")

    # Each round trip awaits its handle: a task that never ran would hang
    # until pytest's timeout.
    elapsed = await roundtrip.time_round_trips(contender, 50)
    assert elapsed > 0


@pytest.mark.parametrize("contender", retry.CONTENDERS, ids=lambda c: c.key)
async def test_retry_pool_recovers(contender: Contender) -> None:
    # time_retries() raises if a task fails for good or never failed at all.
    elapsed = await retry.time_retries(contender, 50)
    assert elapsed > 0


# Instructions per task


def test_parse_collected() -> None:
    report = (
        "==7== Events    : Ir\n"
        "==7== Collected : 1234567\n"
        "==7==\n"
        "==7== I   refs:      1,234,567\n"
    )

    assert instructions.parse_collected(report) == 1_234_567


def test_parse_collected_without_summary() -> None:
    with pytest.raises(ValueError, match="no 'Collected :' line"):
        instructions.parse_collected("valgrind: Bad option: --tool=nope")


@pytest.mark.parametrize(
    ("args", "valgrind", "message"),
    [
        (["nope"], "/usr/bin/valgrind", "unknown contender 'nope'"),
        (["--size", "0"], "/usr/bin/valgrind", "--size must be at least 1, got 0"),
        (["aq"], None, "valgrind is not on the PATH"),
    ],
)
def test_instructions_rejects(
    args: list[str],
    valgrind: str | None,
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(instructions.shutil, "which", lambda name: valgrind)

    with pytest.raises(SystemExit) as exit_info:
        instructions.main(args)

    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


# A stand-in for valgrind: it runs the command after its own options, then
# reports 1,000 instructions per task of that run plus 5 for the start.
FAKE_VALGRIND = """#!/bin/sh
while [ "${1#--}" != "$1" ]; do shift; done
"$@" || exit $?
echo "==1== Collected : $(( ${6} * 1000 + 5 ))" >&2
"""


def test_instructions_runs_each_contender_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = tmp_path / "valgrind"
    fake.write_text(FAKE_VALGRIND)
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(ROOT)

    assert instructions.main(["--size", "200", "pool", "aq"]) == 0

    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    keys = ("pool", "aq")
    table = {cells[0]: cells[1:] for cells in rows if cells and cells[0] in keys}
    assert table == {"pool": ["1,000", "1.00x"], "aq": ["1,000", "1.00x"]}


# Collector time


def test_collector_clock_adds_up_collections(monkeypatch: pytest.MonkeyPatch) -> None:
    readings = iter([1.0, 1.5, 2.0, 2.25])
    monkeypatch.setattr(gctime.time, "perf_counter", lambda: next(readings))
    clock = gctime.CollectorClock()

    clock("start", {"generation": 0})
    clock("stop", {"generation": 0})
    clock("start", {"generation": 2})
    clock("stop", {"generation": 2})

    assert clock.seconds == 0.75
    assert clock.full_collections == 1


def test_gctime_measure_counts_forced_collection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A full collection during the run is counted, and the callback is removed."""
    real_time_pool = gctime.time_pool

    async def collecting_time_pool(contender: Any, size: int) -> float:
        gc.collect()
        return await real_time_pool(contender, size)

    monkeypatch.setattr(gctime, "time_pool", collecting_time_pool)
    callbacks_before = list(gc.callbacks)

    figures = gctime.measure("aq", 200)

    assert figures["full_collections"] == 1
    assert figures["collector"] > 0
    assert figures["total"] > 0
    assert gc.callbacks == callbacks_before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "unknown contender 'nope'"),
        (["--size", "0"], "--size must be at least 1, got 0"),
    ],
)
def test_gctime_rejects(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        gctime.main(args)

    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_gctime_reports_each_contender(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)

    assert gctime.main(["--size", "200", "pool", "aq"]) == 0

    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    table = {
        cells[0]: cells[1:] for cells in rows if cells and cells[0] in ("pool", "aq")
    }
    assert set(table) == {"pool", "aq"}
    for total, collector, share, full in table.values():
        assert float(total) >= 0
        assert float(collector) >= 0
        assert share.endswith("%")
        assert int(full) >= 0


@pytest.mark.parametrize(
    ("key", "reference"),
    [
        ("aq", "pool"),
        ("aq-noop-hook", "pool"),
        ("retry-aq", "retry-pool"),
        ("roundtrip-aq-await", "roundtrip-pool"),
    ],
)
def test_instruction_reference(key: str, reference: str) -> None:
    assert key in instructions.runners()
    assert instructions.reference_of(key) == reference


def test_targets_none_measured() -> None:
    completed = run_benchmarks(
        "--smoke", "--loop", "asyncio", "--scenarios", "roundtrip"
    )

    assert completed.returncode == 0, completed.stderr
    assert "7. Round trip" in completed.stdout
    assert "none of the chosen scenarios measures a target" in completed.stdout
    assert "not measured" not in completed.stdout


def test_instructions_rejects_missing_module(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("benchmarks.contenders.optional_module", lambda name: None)

    assert instructions.missing_modules()["roundtrip-aiojobs"] == "aiojobs"
    with pytest.raises(SystemExit) as exited:
        instructions.main(["roundtrip-pool", "roundtrip-aiojobs"])

    assert exited.value.code == 2
    error = capsys.readouterr().err
    assert (
        "contender 'roundtrip-aiojobs' needs aiojobs, which is not installed" in error
    )
