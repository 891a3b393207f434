#!/usr/bin/env bash
# Run the pytest suite again on each newer CPython this machine has, each in a
# virtual environment of its own (.venv-3.12, .venv-3.13). scripts/test.sh runs
# every check on the default python3; this script repeats only the tests, since
# the frames, tracebacks and event loop internals that the queue relies on
# change between Python versions. A version that is not installed is skipped
# with a message. Set PYTHON_VERSIONS to choose others, e.g. "3.12".
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
    # pyenv's shims only run the versions it has selected, so look in its
    # versions folder first, then on PATH.
    local version=$1 candidate
    if command -v pyenv >/dev/null 2>&1; then
        for candidate in "$(pyenv root)"/versions/"$version".*/bin/python"$version"; do
            if [ -x "$candidate" ]; then
                echo "$candidate"
                return
            fi
        done
    fi

    candidate=$(command -v "python$version" || true)
    if [ -n "$candidate" ] && "$candidate" -c "" >/dev/null 2>&1; then
        echo "$candidate"
    fi
}

status=0
for version in ${PYTHON_VERSIONS:-3.12 3.13}; do
    python=$(find_python "$version")
    if [ -z "$python" ]; then
        echo "== python $version: not installed, skipped"
        continue
    fi

    venv=".venv-$version"
    if [ ! -x "$venv/bin/python" ]; then
        "$python" -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --upgrade pip
    fi

    stamp="$venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
    if [ ! -e "$stamp" ]; then
        "$venv/bin/python" -m pip install --quiet -e ".[test]"
        rm -f "$venv"/.installed-*
        touch "$stamp"
    fi

    echo "== pytest on $("$venv/bin/python" --version)"
    PYTHONASYNCIODEBUG=1 "$venv/bin/python" -m pytest -q -p no:cacheprovider "$@" ||
        status=1
done

exit "$status"
