#!/usr/bin/env bash
# The README's first command: install everything (scripts/setup.sh), then run the demo.
# Extra arguments go to `ambientctl demo` (see `.venv/bin/ambientctl demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/ambientctl demo "$@"
