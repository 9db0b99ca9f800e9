"""The environment preparer: builds a task's starting state and writes its verifier.

Every reply is one JSON object ``{analysis, commands: [bash command], verifier, solution,
outputs: [path], system_state, ready, give_up}``. Each command runs to its end (an ``exec``
terminal), and its output and exit code come back. The episode is done when a reply is
``ready`` with a verifier, a reference solution and the task's outputs (the paths whose final
content decides it; a task about the system itself says ``system_state`` instead); they are
the episode's ``result``, and decide how its episodes are verified (``verification.py``). The wording of every message is config (``conf/agent/preparer.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from omegaconf import MISSING

from .. import hookimpl
from ..sandboxes.base import clip
from ..verification import SEPARATE, SHARED, check_outputs
from .base import COMPLETED, GAVE_UP, Command, Episode, Terminal
from .loop import AgentLoopConfig, Stop, TurnAgent

REPLY_SCHEMA = {
    "type": "object",
    "properties": {
        "analysis": {"type": "string", "maxLength": 2000},
        "commands": {"type": "array", "items": {"type": "string", "maxLength": 8000}, "maxItems": 20},
        "verifier": {"type": "string", "maxLength": 12000},
        "solution": {"type": "string", "maxLength": 12000},
        "outputs": {"type": "array", "items": {"type": "string", "maxLength": 500}, "maxItems": 50},
        "system_state": {"type": "boolean"},
        "ready": {"type": "boolean"},
        "give_up": {"type": "boolean"},
    },
    "required": ["analysis", "commands", "verifier", "solution", "outputs", "system_state", "ready", "give_up"],
    "additionalProperties": False,
}


@dataclass
class PreparerAgentConfig(AgentLoopConfig):
    type: str = "preparer"
    #: Jinja template of the system message; sees ``max_turns``, ``command_timeout``, ``network``
    system_prompt: str = MISSING
    #: Jinja template of the first user message; sees ``task``
    instruction: str = MISSING
    #: sent after a reply that is not usable; sees ``error``
    malformed: str = MISSING
    #: sent after a ``ready`` reply without a verifier or a solution; sees ``output`` and
    #: ``missing`` (the names of the empty keys)
    incomplete: str = MISSING
    #: sent after a ``ready`` reply whose ``outputs`` are unusable; sees ``output`` and ``error``
    bad_outputs: str = MISSING
    #: sent when certification found problems and the agent may mend the task; sees
    #: ``findings`` (a list of sentences)
    repair: str = MISSING
    max_turns: int = 20
    #: seconds per command
    command_timeout: float = 60.0
    max_wall_time: float = 900.0
    max_commands_per_turn: int = 10
    output_bytes: int = 8_000
    #: unusable replies cost a turn each; only ``max_turns`` ends them
    max_malformed_in_row: Optional[int] = None
    temperature: float = 0.2
    max_tokens: int = 2048
    min_reply_tokens: int = 128
    max_reply_chars: int = 40_000


class PreparerAgent(TurnAgent):
    """Commands with exit codes; done when ready with a verifier and a solution, or when it gives up."""

    name = "preparer"
    reply_schema = REPLY_SCHEMA
    terminal = "exec"

    def first_messages(self, task: str, screen: str, **context: object) -> list[dict]:
        c = self.config
        system = self.render("system_prompt", max_turns=c.max_turns, command_timeout=c.command_timeout,
                             network=context.get("network", "none"))
        return [{"role": "system", "content": system},
                {"role": "user", "content": self.render("instruction", task=task.strip())}]

    async def step(self, terminal: Terminal, episode: Episode, reply: dict, started: float) -> tuple[Stop | None, str]:
        c, turn = self.config, episode.turns[-1]
        turn.analysis, turn.task_complete = reply["analysis"], bool(reply["ready"])
        if reply["give_up"]:
            return Stop(GAVE_UP, reply["analysis"][:300]), ""
        for command in reply["commands"][: int(c.max_commands_per_turn)]:
            turn.commands.append(Command(command, 0.0))
            await terminal.send(command)
        output, _ = clip(await terminal.read_new(), int(c.output_bytes))
        if not reply["ready"]:
            return None, output
        missing = [key for key in ("verifier", "solution") if not reply[key].strip()]
        if missing:
            return None, self.render("incomplete", output=output, missing=missing)
        outputs, system_state = [p.strip() for p in reply["outputs"] if p.strip()], bool(reply["system_state"])
        error = check_outputs(outputs) or (None if outputs or system_state else
                                           'no outputs: name them, or say "system_state": true')
        if error:
            return None, self.render("bad_outputs", output=output, error=error)
        episode.result = {"verifier": reply["verifier"], "solution": reply["solution"], "outputs": outputs,
                          "verification": SHARED if system_state else SEPARATE}
        return Stop(COMPLETED), ""


@hookimpl
def litecoder_register_agents(register):
    register("preparer", PreparerAgent, config=PreparerAgentConfig)
