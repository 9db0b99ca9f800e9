"""pytest fixtures for testing litecoder plugins, shipped with litecoder.

litecoder registers this module as a pytest plugin (the ``pytest11`` entry point), so every
project that has litecoder and pytest installed can use the fixtures without importing them:

- ``litecoder_plugins``: the process-wide plugin host. Plugins registered through it in a test
  (``litecoder_plugins.register(MyPlugin(), "my-plugin")``) are removed after the test.
- ``litecoder_compose``: ``compose(*overrides)`` returns the config the CLI would compose.
- ``litecoder_cli``: ``cli(*args)`` runs ``python -m litecoder ARGS`` in a subprocess with the
  run directories under ``cli.outputs`` (in ``tmp_path``); returns the ``CompletedProcess``.
- ``litecoder_stub_model``: a scripted OpenAI-compatible server (``.url``, ``.requests``);
  assign ``.handler`` to script its replies (see ``litecoder.testing.stub_openai``).

Hydra and the run machinery are imported inside the fixtures, so loading the plugin costs a
test session nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import pytest

from .stub_openai import StubServer, completion_body

if TYPE_CHECKING:
    from omegaconf import DictConfig
    from ..plugins import Plugins

__all__ = ["StubServer", "completion_body", "run_cli"]

MARKERS = (
    "docker: uses the real Docker engine",
    "harbor: runs Harbor itself from a cached Debian trixie root (litecoder.testing.harbor)",
    "vllm: starts or uses a real vLLM server (slow)",
)


def pytest_configure(config: pytest.Config) -> None:
    # Plugin test suites can mark tests like litecoder's own without declaring the markers.
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 600,
            python: str | os.PathLike = sys.executable) -> subprocess.CompletedProcess:
    """``python -m litecoder ARGS`` in a subprocess (``HYDRA_FULL_ERROR`` unset, so user errors
    are the one line the CLI prints)."""
    full_env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    full_env.update(env or {})
    return subprocess.run([str(python), "-m", "litecoder", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def _with_run_root(args: list[str], outputs: Path) -> list[str]:
    """Add ``run.root=outputs`` next to the other overrides: the CLI takes its overrides as one
    group, so ``domain=x --cfg job`` must not become ``domain=x --cfg job run.root=...``.
    ``--info plugins`` writes nothing and takes no overrides."""
    if args[:1] == ["--info"]:
        return args
    first = next((i for i, a in enumerate(args) if "=" in a and not a.startswith("-")), None)
    at = len(args) if first is None else first + 1
    return [*args[:at], f"run.root={outputs}", *args[at:]]


@pytest.fixture
def litecoder_plugins() -> Iterator[Plugins]:
    """The plugin host (``litecoder.plugins.Plugins``); inline plugins are removed afterwards."""
    from litecoder.plugins import get_plugins

    host = get_plugins()
    added: list[str] = []
    original_register = host.register

    def register(plugin: object, name: str | None = None) -> str:
        registered = original_register(plugin, name)
        added.append(registered)
        return registered

    host.register = register  # type: ignore[method-assign]
    try:
        yield host
    finally:
        host.register = original_register  # type: ignore[method-assign]
        for name in added:
            if host.pm.get_plugin(name) is not None:
                host.unregister(name)


@pytest.fixture
def litecoder_compose() -> Callable[..., DictConfig]:
    """``compose(*overrides)``: litecoder's config with the loaded plugins, as the CLI composes it."""
    from hydra import compose, initialize_config_dir

    from litecoder.cli import setup

    conf_dir = setup()

    def _compose(*overrides: str):
        with initialize_config_dir(config_dir=conf_dir, version_base=None):
            return compose(config_name="config", overrides=list(overrides))

    return _compose


@pytest.fixture
def litecoder_cli(tmp_path: Path) -> Callable[..., subprocess.CompletedProcess]:
    """``cli(*args, env=None, timeout=600)``: the CLI in a subprocess (cwd ``tmp_path``), run
    directories under ``cli.outputs``."""
    outputs = tmp_path / "outputs"

    def _cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
        return run_cli(*_with_run_root(list(args), outputs), cwd=tmp_path, env=env, timeout=timeout)

    _cli.outputs = outputs  # type: ignore[attr-defined]
    return _cli


@pytest.fixture
def litecoder_stub_model() -> Iterator[StubServer]:
    """A scripted OpenAI-compatible server; pass ``backend.url=<server.url>`` to litecoder."""
    with StubServer() as server:
        yield server
