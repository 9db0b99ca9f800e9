#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite, real vLLM server included.
# Extra arguments go to pytest (e.g. -m "not vllm" for the quick tests only).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest "$@"
