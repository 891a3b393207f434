#!/usr/bin/env bash
# Set up a virtual environment in .venv (once, from PyPI), then run every check the
# project has: ruff, mypy --strict, and the pytest suite with coverage, with
# asyncio debug mode on.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
fi

# Install again only when pyproject.toml changed, so that later runs need no
# network access.
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -e "$stamp" ]; then
    .venv/bin/python -m pip install --quiet -e ".[test]"
    rm -f .venv/.installed-*
    touch "$stamp"
fi

echo "== ruff"
.venv/bin/ruff check async_queue tests queue.py queue.pyi
.venv/bin/ruff format --check async_queue tests queue.py queue.pyi

echo "== mypy --strict"
.venv/bin/mypy --strict async_queue tests/typing

echo "== pytest"
PYTHONASYNCIODEBUG=1 .venv/bin/python -m pytest --cov=async_queue --cov-branch \
    --cov-report=term-missing:skip-covered "$@"
