"""Docker sandbox settings. The sandbox itself is not built yet; its config is real so
that ``sandbox=docker`` composes and is validated today."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import hookimpl
from ..errors import StageNotBuilt


@dataclass
class DockerSandboxConfig:
    type: str = "docker"
    #: base image; built by ``builder`` when missing locally
    image: str = "litecoder-base:bookworm"
    #: ``debootstrap``, ``pull`` or ``dockerfile``
    builder: str = "debootstrap"
    #: containers get no network unless this is true
    network: bool = False
    cpus: float = 1.0
    memory: str = "2g"
    pids_limit: int = 512
    #: containers running at once
    max_containers: int = 4


class DockerSandbox:
    def __init__(self, config: Any, run: Any = None) -> None:
        raise StageNotBuilt("the Docker sandbox is not built yet (planned: environment stage)")


@hookimpl
def litecoder_register_sandboxes(register):
    register("docker", DockerSandbox, config=DockerSandboxConfig)
