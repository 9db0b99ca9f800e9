"""Shared fixtures: config composition, the CLI as a subprocess, stub and real servers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from litecoder.cli import setup
from litecoder.paths import litecoder_home
from litecoder.plugins import get_plugins

from .stub_openai import StubServer

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = litecoder_home() / "models" / "SmolLM2-135M-Instruct"


@pytest.fixture
def compose_cfg():
    """Compose litecoder's config with overrides, as the CLI would."""
    conf_dir = setup()

    def _compose(*overrides: str):
        with initialize_config_dir(config_dir=conf_dir, version_base=None):
            return compose(config_name="config", overrides=list(overrides))

    return _compose


@pytest.fixture
def plugins():
    """The plugin host; inline plugins registered through it are removed afterwards."""
    host = get_plugins()
    added: list[str] = []
    original_register = host.register

    def register(plugin, name=None):
        registered = original_register(plugin, name)
        added.append(registered)
        return registered

    host.register = register  # type: ignore[method-assign]
    yield host
    host.register = original_register  # type: ignore[method-assign]
    for name in added:
        if host.pm.get_plugin(name) is not None:
            host.unregister(name)


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m litecoder ARGS`` in a subprocess, outputs under ``cwd/outputs``."""
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "litecoder", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def cli(tmp_path):
    def _cli(*args: str, env: dict | None = None, timeout: float = 600):
        return run_cli(*args, f"run.root={tmp_path / 'outputs'}", cwd=tmp_path, env=env, timeout=timeout)

    _cli.outputs = tmp_path / "outputs"  # type: ignore[attr-defined]
    return _cli


@pytest.fixture
def stub_server():
    with StubServer() as server:
        yield server


@pytest.fixture(scope="session")
def model_dir() -> Path:
    if not (DEFAULT_MODEL / "config.json").is_file():
        pytest.fail(f"the default model is missing at {DEFAULT_MODEL}; run `bash scripts/setup.sh`")
    return DEFAULT_MODEL


@pytest.fixture(scope="session")
def vllm_url(model_dir, tmp_path_factory):
    """A real vLLM server on SmolLM2, started by litecoder's own backend code.

    Set LITECODER_TEST_VLLM_URL to reuse a server that is already running.
    """
    existing = os.environ.get("LITECODER_TEST_VLLM_URL")
    if existing:
        yield existing.rstrip("/")
        return
    from litecoder.backends.vllm import VLLMBackend, VLLMBackendConfig
    from litecoder.config import register_configs

    register_configs()
    config = OmegaConf.structured(VLLMBackendConfig)
    backend = VLLMBackend(config, tmp_path_factory.mktemp("vllm-server"))
    backend.start()
    try:
        yield backend.base_url.removesuffix("/v1")
    finally:
        backend.close()
