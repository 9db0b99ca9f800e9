"""Shared fixtures: litecoder's own suite uses the fixtures litecoder ships for plugin authors
(``litecoder.testing``) under short names, plus the real model and vLLM server."""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from litecoder.paths import litecoder_home
from litecoder.testing import run_cli  # noqa: F401 - kept importable for tests that use it

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = litecoder_home() / "models" / "SmolLM2-135M-Instruct"


#: a ChatML chat template (the family SmolLM2's belongs to), for tests that sample through a
#: scripted model: the prefix is derived from a template as in a real run, without the model
CHATML = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture(scope="session")
def template_dir(tmp_path_factory) -> Path:
    """A tokenizer directory with only a chat template: what quick tests sample with."""
    directory = tmp_path_factory.mktemp("tokenizer")
    config = {"chat_template": CHATML, "bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


def _with_template(request, args: tuple[str, ...]) -> tuple[str, ...]:
    """Quick tests (not marked vllm) sample with ``template_dir``, so they need no model
    directory; a test that sets its own tokenizer or template, or whose sample stage has no
    ``tokenizer`` key (a plugin's replacement), is left alone."""
    own = ("sample.tokenizer", "sample.template.prefix", "sample.template.chat_template")
    if request.node.get_closest_marker("vllm") or any(a.lstrip("+~").startswith(own) for a in args):
        return args
    from litecoder.plugins import get_plugins

    schema = get_plugins().registry("stage").entry("sample").config
    if schema is None or "tokenizer" not in {f.name for f in fields(schema)}:
        return args
    return (*args, f"sample.tokenizer={request.getfixturevalue('template_dir')}")


@pytest.fixture
def compose_cfg(litecoder_compose, request):
    """Compose litecoder's config with overrides, as the CLI would."""
    return lambda *args: litecoder_compose(*_with_template(request, args))


@pytest.fixture
def plugins(litecoder_plugins):
    """The plugin host; inline plugins registered through it are removed afterwards."""
    return litecoder_plugins


@pytest.fixture
def cli(litecoder_cli, request):
    """``python -m litecoder`` in a subprocess, outputs under ``cli.outputs``."""

    def run(*args, **kwargs):
        if any(a.startswith("--") for a in args if a not in ("--cfg", "-m", "--multirun")):
            return litecoder_cli(*args, **kwargs)  # --info, --compare: no config to extend
        return litecoder_cli(*_with_template(request, args), **kwargs)

    run.outputs = litecoder_cli.outputs
    return run


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
    from litecoder.backends.vllm import served_tokens

    served = served_tokens(url)
    return served["prompt_tokens"], served["generation_tokens"]


def pytest_configure(config):
    """Every vLLM server the suite starts (the shared one, and those the CLI starts in tests about
    starting and stopping servers) records itself in one ledger, summed at the end."""
    from litecoder.backends.vllm import LEDGER_ENV

    if LEDGER_ENV not in os.environ:
        import tempfile

        os.environ[LEDGER_ENV] = str(Path(tempfile.mkdtemp(prefix="litecoder-ledger-")) / "servers.jsonl")


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


def _ledger_summary() -> str:
    from litecoder.backends.vllm import LEDGER_ENV

    path = Path(os.environ[LEDGER_ENV])
    events = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    starts = [e for e in events if e["event"] == "start"]
    stops = [e for e in events if e["event"] == "stop"]
    generated = sum(e["generation_tokens"] for e in stops)
    prompt = sum(e["prompt_tokens"] for e in stops)
    unknown = f", {len(starts) - len(stops)} not counted (stopped without a count)" if len(stops) < len(starts) else ""
    return (f"vLLM servers started: {len(starts)} ({sum(e['seconds'] for e in starts):,.0f} s to start); "
            f"tokens generated: {generated:,.0f} ({prompt:,.0f} prompt){unknown}")


def pytest_terminal_summary(terminalreporter):
    terminalreporter.section("model server cost")
    terminalreporter.write_line(_ledger_summary())
    if not SERVED:
        return
    terminalreporter.section("tokens served by the shared vLLM server, per test")
    for nodeid, prompt, generated in sorted(SERVED, key=lambda row: -row[2]):
        terminalreporter.write_line(f"{generated:>8,.0f} generated {prompt:>9,.0f} prompt  {nodeid}")
    terminalreporter.write_line(f"{sum(row[2] for row in SERVED):>8,.0f} generated in all "
                                f"({sum(row[1] for row in SERVED):,.0f} prompt)")


@pytest.fixture(scope="session")
def _base_image():
    """The sandbox's base image, built once per session when the engine lacks it."""
    from litecoder.plugins import get_plugins
    from litecoder.sandboxes.docker import DockerSandbox, DockerSandboxConfig

    sandbox = DockerSandbox(OmegaConf.structured(DockerSandboxConfig), "test-base-image")
    try:
        sandbox.ensure_image(get_plugins().registry("image_builder"))
    finally:
        sandbox.close()


@pytest.fixture(autouse=True)
def _docker_tests_have_the_base_image(request):
    """Docker tests may open containers straight from the base image, so any of them can run
    alone, not only after a test that happened to build it."""
    if request.node.get_closest_marker("docker"):
        request.getfixturevalue("_base_image")
