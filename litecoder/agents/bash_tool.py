"""A native tool-calling agent in the style of mini-swe-agent and OpenHands.

The model gets one ``bash`` tool through the OpenAI ``tools`` API. Each call runs to its end
in the container (an ``exec`` terminal: a fresh shell per command, so ``cd`` does not carry
over) and its output and exit code come back as a ``tool`` message. A reply without tool
calls ends the episode: the model says it is done by not asking for more. Unusable calls
(an unknown tool, arguments that are not a JSON object with a ``command``) are answered with
a correction in each call's ``tool`` message. The wording is config
(``conf/agent/bash_tool.yaml``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from omegaconf import MISSING, DictConfig

from .. import hookimpl
from ..errors import ConfigError
from ..replies import ReplyError
from ..sandboxes.base import clip
from .base import COMPLETED, Command, Episode, Terminal, Turn
from .loop import AgentLoopConfig, Stop, TurnAgent

TOOL_NAME = "bash"
TOOL_CHOICES = ("auto", "required")


@dataclass
class BashToolAgentConfig(AgentLoopConfig):
    type: str = "bash_tool"
    #: Jinja template of the first user message; sees ``task``, ``max_turns``, ``command_timeout``,
    #: ``workdir`` (where each command starts)
    prompt: str = MISSING
    #: the ``bash`` tool's description, as the model reads it in the tool list
    tool_description: str = MISSING
    #: sent in each tool message of a reply whose calls were not usable; sees ``error``
    malformed: str = MISSING
    #: seconds per command
    command_timeout: float = 120.0
    max_commands_per_turn: int = 10
    #: tool output sent back per call, keeping head and tail
    output_bytes: int = 10_000
    #: ``auto``: the model may reply without calls, which ends the episode; ``required``: every
    #: reply is a call, so the episode ends at ``max_turns`` (vLLM constrains the reply by
    #: structured output, so any model makes calls)
    tool_choice: str = "auto"


class BashToolAgent(TurnAgent):
    """``bash`` tool calls, each answered by a ``tool`` message; done at a reply without calls."""

    name = "bash_tool"
    terminal = "exec"

    def __init__(self, config: DictConfig) -> None:
        super().__init__(config)
        if config.tool_choice not in TOOL_CHOICES:
            raise ConfigError(f"agent.tool_choice is {config.tool_choice!r}; choose {' or '.join(TOOL_CHOICES)}")

    def tools(self) -> list[dict]:
        """The tool list sent with every request (and written with the SFT rows). ``strict``
        asks servers that constrain calls (OpenAI, vLLM) to hold the arguments to the schema."""
        command = {"type": "string", "description": "The bash command to run."}
        return [{"type": "function", "function": {
            "name": TOOL_NAME, "description": self.config.tool_description.strip(), "strict": True,
            "parameters": {"type": "object", "properties": {"command": command}, "required": ["command"],
                           "additionalProperties": False}}}]

    def request_params(self) -> dict:
        return {"tools": self.tools(), "tool_choice": self.config.tool_choice}

    def first_messages(self, task: str, screen: str, **context: object) -> list[dict]:
        c = self.config
        prompt = self.render("prompt", task=task.strip(), max_turns=c.max_turns, command_timeout=c.command_timeout,
                             workdir=context.get("workdir", "/root"))
        return [{"role": "user", "content": prompt}]

    def parse(self, turn: Turn) -> dict:
        """The commands of the reply's tool calls; none when the model is done (with
        ``tool_choice=required`` a reply without calls is unusable: the server failed to make one)."""
        if len(turn.reply) > int(self.config.max_reply_chars):
            raise ReplyError(f"reply of {len(turn.reply)} characters is longer than the limit of {self.config.max_reply_chars}")
        if not turn.tool_calls and self.config.tool_choice == "required":
            raise ReplyError(f"the reply calls no tool (cut at the token limit, or not a call); call {TOOL_NAME!r} "
                             f"with a JSON object {{\"command\": ...}}")
        return {"commands": [_command(index, call) for index, call in enumerate(turn.tool_calls, 1)]}

    def assistant_message(self, turn: Turn) -> dict:
        if not turn.tool_calls:
            return {"role": "assistant", "content": turn.reply}
        calls = [{"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                 for c in turn.tool_calls]
        return {"role": "assistant", "content": turn.reply or None, "tool_calls": calls}

    def answer_messages(self, turn: Turn, text: str) -> list[dict]:
        if not turn.tool_calls:
            return [{"role": "user", "content": text}]
        results = turn.tool_results or [text] * len(turn.tool_calls)
        return [{"role": "tool", "tool_call_id": call["id"], "content": result}
                for call, result in zip(turn.tool_calls, results)]

    async def step(self, terminal: Terminal, episode: Episode, reply: dict, started: float) -> tuple[Stop | None, str]:
        c, turn = self.config, episode.turns[-1]
        if not reply["commands"]:
            turn.task_complete = True
            return Stop(COMPLETED), ""
        limit = int(c.max_commands_per_turn)
        for index, command in enumerate(reply["commands"]):
            if index >= limit:
                turn.tool_results.append(f"not run: at most {limit} commands per reply (agent.max_commands_per_turn)")
                continue
            turn.commands.append(Command(command, 0.0))
            await terminal.send(command)
            output, _ = clip(await terminal.read_new(), int(c.output_bytes))
            turn.tool_results.append(output)
        return None, "\n\n".join(turn.tool_results)


def _command(index: int, call: dict) -> str:
    """The command of one tool call; ``ReplyError`` says what is wrong with it."""
    if call["name"] != TOOL_NAME:
        raise ReplyError(f"tool call {index} asks for tool {call['name']!r}; the only tool is {TOOL_NAME!r}")
    try:
        arguments = json.loads(call["arguments"] or "{}")
    except json.JSONDecodeError as exc:
        raise ReplyError(f"tool call {index}: the arguments are not JSON ({exc.msg})") from exc
    command = arguments.get("command") if isinstance(arguments, dict) else None
    if not isinstance(command, str) or not command.strip():
        raise ReplyError(f"tool call {index}: the arguments need a non-empty string \"command\"")
    return command


@hookimpl
def litecoder_register_agents(register):
    register("bash_tool", BashToolAgent, config=BashToolAgentConfig)
