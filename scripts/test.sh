#!/usr/bin/env bash
# Set up a virtual environment in .venv (once), then run every check the
# project has: ruff, mypy --strict, and the pytest suite with coverage, with
# asyncio debug mode on.
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi

.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[test]"

echo "== ruff"
.venv/bin/ruff check async_queue tests queue.py
.venv/bin/ruff format --check async_queue tests queue.py

echo "== mypy --strict"
.venv/bin/mypy --strict async_queue tests/typing

echo "== pytest"
PYTHONASYNCIODEBUG=1 .venv/bin/python -m pytest --cov=async_queue --cov-branch \
    --cov-report=term-missing:skip-covered "$@"
