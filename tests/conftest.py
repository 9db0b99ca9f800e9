"""Shared fixtures: litecoder's own suite uses the fixtures litecoder ships for plugin authors
(``litecoder.testing``) under short names, plus the real model and vLLM server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from litecoder.paths import litecoder_home
from litecoder.testing import run_cli  # noqa: F401 - kept importable for tests that use it

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = litecoder_home() / "models" / "SmolLM2-135M-Instruct"


@pytest.fixture
def compose_cfg(litecoder_compose):
    """Compose litecoder's config with overrides, as the CLI would."""
    return litecoder_compose


@pytest.fixture
def plugins(litecoder_plugins):
    """The plugin host; inline plugins registered through it are removed afterwards."""
    return litecoder_plugins


@pytest.fixture
def cli(litecoder_cli):
    """``python -m litecoder`` in a subprocess, outputs under ``cli.outputs``."""
    return litecoder_cli


@pytest.fixture
def stub_server(litecoder_stub_model):
    return litecoder_stub_model


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
    config.extra_args = ["--enforce-eager"]  # a faster start; see tests/test_vllm.py EAGER
    backend = VLLMBackend(config, tmp_path_factory.mktemp("vllm-server"))
    backend.start()
    try:
        yield backend.base_url.removesuffix("/v1")
    finally:
        backend.close()


def _served_tokens(url: str) -> tuple[float, float]:
    """Prompt and generated tokens the vLLM server has processed so far (its /metrics)."""
    import httpx

    totals = {"vllm:prompt_tokens_total": 0.0, "vllm:generation_tokens_total": 0.0}
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in totals:
            totals[name] += float(line.rsplit(" ", 1)[1])
    return totals["vllm:prompt_tokens_total"], totals["vllm:generation_tokens_total"]


#: (test id, prompt tokens, generated tokens) of every test that used the shared server
SERVED: list[tuple[str, float, float]] = []


@pytest.fixture(autouse=True)
def _count_served_tokens(request):
    """Record what each test cost the shared vLLM server: on a slow CPU, generated tokens are
    what real-model tests spend their time on, so they are sized by this figure."""
    if "vllm_url" not in request.fixturenames:
        yield
        return
    url = request.getfixturevalue("vllm_url")
    before = _served_tokens(url)
    yield
    after = _served_tokens(url)
    SERVED.append((request.node.nodeid, after[0] - before[0], after[1] - before[1]))


def pytest_terminal_summary(terminalreporter):
    if not SERVED:
        return
    terminalreporter.section("tokens served by the shared vLLM server, per test")
    for nodeid, prompt, generated in sorted(SERVED, key=lambda row: -row[2]):
        terminalreporter.write_line(f"{generated:>8,.0f} generated {prompt:>9,.0f} prompt  {nodeid}")
    terminalreporter.write_line(f"{sum(row[2] for row in SERVED):>8,.0f} generated in all "
                                f"({sum(row[1] for row in SERVED):,.0f} prompt)")
