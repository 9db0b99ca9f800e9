"""The default executor: requests and containers from this process (asyncio and threads)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from .. import hookimpl
from .base import ExecutorConfig

if TYPE_CHECKING:
    from omegaconf import DictConfig
    from ..backends.base import Backend, LLMClient
    from ..registry import Registry
    from ..sandboxes.base import Sandbox


@dataclass
class LocalExecutorConfig(ExecutorConfig):
    type: str = "local"


class LocalExecutor:
    def __init__(self, config: DictConfig) -> None:
        self.config = config

    def client(self, backend: Backend) -> LLMClient:
        return backend.client()

    def sandbox(self, factory: Callable[..., Sandbox], config: DictConfig, run_id: str, builders: Registry,
                toolchain: dict | None = None) -> Sandbox:
        sandbox = factory(config, run_id)
        try:
            sandbox.ensure_image(builders, toolchain)
        except BaseException:
            sandbox.close()
            raise
        return sandbox

    def close(self) -> None:
        pass


@hookimpl
def litecoder_register_executors(register):
    register("local", LocalExecutor, config=LocalExecutorConfig)
