"""Terminus-2-style agent settings. The agent loop is not built yet; its config is real so
that ``agent=terminus`` composes and is validated today."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import hookimpl
from ..errors import StageNotBuilt


@dataclass
class TerminusAgentConfig:
    type: str = "terminus"
    max_turns: int = 50
    #: seconds for one whole episode
    max_wall_time: float = 1800.0
    #: cap on the wait a model may ask for after one command
    max_command_duration: float = 60.0
    #: terminal output sent back per turn, keeping head and tail
    output_bytes: int = 10_000


class TerminusAgent:
    def __init__(self, config: Any, run: Any = None) -> None:
        raise StageNotBuilt("the Terminus agent is not built yet (planned: trajectory stage)")


@hookimpl
def litecoder_register_agents(register):
    register("terminus", TerminusAgent, config=TerminusAgentConfig)
