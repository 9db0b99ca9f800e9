#!/usr/bin/env bash
# Set up (idempotent) and run litecoder. Without arguments: the default job, the whole
# pipeline (stage=all) for the networking domain on the local vLLM server, into outputs/demo/.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
if [ "$#" -eq 0 ]; then
  set -- +experiment=demo
fi
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m litecoder "$@"
