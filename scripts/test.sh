#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite, real vLLM server and Docker engine included.
# Extra arguments go to pytest (e.g. -m "not vllm and not docker" for the quick tests only).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest "$@"
