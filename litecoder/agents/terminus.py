"""A Terminus-2-style terminal agent.

Every reply is one JSON object ``{analysis, plan, commands: [{keystrokes, duration}],
task_complete}``. Keystrokes go to a tmux pane; after each command's duration (capped) the
pane's new output is read and sent back, head and tail kept within a byte budget. The task
counts as finished only when ``task_complete`` is true in two replies in a row: the first
one is answered with the terminal and a request to confirm. The wording of every message
is config (``conf/agent/terminus.yaml``).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from omegaconf import MISSING

from .. import hookimpl
from ..sandboxes.base import clip
from .base import COMPLETED, Command, Episode, Terminal, Turn
from .loop import AgentLoopConfig, Stop, TurnAgent

REPLY_SCHEMA = {
    "type": "object",
    "properties": {
        "analysis": {"type": "string", "maxLength": 6000},
        "plan": {"type": "string", "maxLength": 6000},
        "commands": {
            "type": "array",
            "maxItems": 30,
            "items": {
                "type": "object",
                "properties": {
                    "keystrokes": {"type": "string", "maxLength": 20000},
                    "duration": {"type": "number", "minimum": 0},
                },
                "required": ["keystrokes"],
                "additionalProperties": False,
            },
        },
        "task_complete": {"type": "boolean"},
    },
    "required": ["analysis", "plan", "commands"],
    "additionalProperties": False,
}


@dataclass
class TerminusAgentConfig(AgentLoopConfig):
    type: str = "terminus"
    #: Jinja template of the first user message; sees ``task``, ``screen`` and the limits
    prompt: str = MISSING
    #: Jinja template of each later user message; sees ``output``
    observation: str = MISSING
    #: sent after the first ``task_complete``; sees ``output``
    confirm: str = MISSING
    #: sent after a reply that is not usable; sees ``error``
    malformed: str = MISSING
    #: cap on the wait a model may ask for after one command
    max_command_duration: float = 60.0
    #: wait after a command that names no duration
    default_duration: float = 1.0
    terminal_width: int = 160
    terminal_height: int = 40


class TerminusAgent(TurnAgent):
    """Keystrokes into tmux; done after ``task_complete`` in two replies in a row."""

    name = "terminus"
    reply_schema = REPLY_SCHEMA
    terminal = "tmux"

    def first_prompt(self, task: str, screen: str) -> str:
        c = self.config
        return self.render("prompt", task=task.strip(), screen=screen, max_turns=c.max_turns,
                           max_command_duration=c.max_command_duration, output_bytes=c.output_bytes)

    def first_messages(self, task: str, screen: str, **context: object) -> list[dict]:
        return [{"role": "user", "content": self.first_prompt(task, screen)}]

    async def step(self, terminal: Terminal, episode: Episode, reply: dict, started: float) -> tuple[Stop | None, str]:
        turn = episode.turns[-1]
        previous = episode.turns[-2] if len(episode.turns) > 1 else None
        output = await self._act(terminal, turn, reply, started)
        if turn.task_complete and previous is not None and previous.task_complete and not previous.malformed:
            return Stop(COMPLETED), ""
        return None, self.render("confirm" if turn.task_complete else "observation", output=output)

    async def _act(self, terminal: Terminal, turn: Turn, reply: dict, started: float) -> str:
        """Type the reply's commands, each followed by its wait; the new output, clipped."""
        c = self.config
        turn.analysis, turn.plan = reply["analysis"], reply["plan"]
        turn.task_complete = bool(reply.get("task_complete", False))
        for raw in reply["commands"][: int(c.max_commands_per_turn)]:
            duration = float(raw.get("duration", c.default_duration))
            command = Command(raw["keystrokes"], min(max(duration, 0.0), float(c.max_command_duration)))
            turn.commands.append(command)
            await terminal.send(command.keystrokes)
            remaining = c.max_wall_time - (time.monotonic() - started)
            await asyncio.sleep(max(0.0, min(command.duration, remaining)))
        output, _ = clip(await terminal.read_new(), int(c.output_bytes))
        return output


@hookimpl
def litecoder_register_agents(register):
    register("terminus", TerminusAgent, config=TerminusAgentConfig)
