#!/usr/bin/env bash
# The README's test command: installs what is missing (scripts/setup.sh), then runs the checks
# (ruff, import-linter contracts, mypy --strict on meshcore) and every test tier (unit, in-process, netns).
# Extra arguments go to pytest, e.g. `scripts/test.sh tests/unit -k policy`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
echo "== ruff";          ruff check .
echo "== import-linter"; lint-imports --no-cache
echo "== mypy";          mypy
echo "== pytest"
if [ $# -eq 0 ]; then set -- tests; fi
exec pytest -q -p no:cacheprovider "$@"
