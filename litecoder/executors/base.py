"""What an executor gives a run: model clients and a sandbox, wherever the work happens.

Stages never talk to an executor directly. ``Run.client(stage)`` and ``Run.sandbox()`` ask
it, so the same stage code drives requests and containers in this process or on a cluster,
while the run store, budgets and resume stay in the driver: every result is written there,
once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from omegaconf import MISSING, DictConfig

from ..backends.base import Backend, LLMClient
from ..registry import Registry
from ..sandboxes.base import Sandbox


@dataclass
class ExecutorConfig:
    #: registered executor name; selects the implementation
    type: str = MISSING


class Executor(Protocol):
    def client(self, backend: Backend) -> LLMClient:
        """An async LLM client (``complete``/``chat``/``aclose``) for a started backend."""

    def sandbox(self, factory: Callable[..., Sandbox], config: DictConfig, run_id: str, builders: Registry,
                toolchain: dict | None = None) -> Sandbox:
        """A sandbox (``open``/``has_image``/``remove_image``/``cleanup``/``close``) with its image ready
        (the base image, with ``toolchain`` on it); ``run_id`` (``sandboxes.names.run_id``)
        labels what it makes, unique per run directory."""

    def close(self) -> None: ...
