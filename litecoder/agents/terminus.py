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
from datetime import datetime, timezone
from typing import Any, Optional

import jinja2
from omegaconf import MISSING

from .. import hookimpl
from ..errors import RequestError, TerminalClosed
from ..replies import ReplyError, parse_reply
from ..sandboxes.base import clip
from .base import (COMPLETED, CONTEXT, LOOPING, MALFORMED, MAX_TURNS, REQUEST_ERROR, TERMINAL_CLOSED, WALL_TIME, Chat,
                   Command, Episode, Terminal, Turn, repeats)

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
class TerminusAgentConfig:
    type: str = "terminus"
    #: Jinja template of the first user message; sees ``task``, ``screen`` and the limits
    prompt: str = MISSING
    #: Jinja template of each later user message; sees ``output``
    observation: str = MISSING
    #: sent after the first ``task_complete``; sees ``output``
    confirm: str = MISSING
    #: sent after a reply that is not usable; sees ``error``
    malformed: str = MISSING
    max_turns: int = 50
    #: seconds for one whole episode
    max_wall_time: float = 1800.0
    #: cap on the wait a model may ask for after one command
    max_command_duration: float = 60.0
    #: wait after a command that names no duration
    default_duration: float = 1.0
    max_commands_per_turn: int = 30
    #: terminal output sent back per turn, keeping head and tail
    output_bytes: int = 10_000
    #: prompt + reply tokens one request may use (also capped by the backend's max_model_len)
    max_context_tokens: int = 32_768
    #: unusable replies in a row that end the episode
    max_malformed_in_row: int = 3
    #: end the episode once the same commands or the same output repeat more often than
    #: this in a row (null: never); the trajectory loop filter decides what is kept
    loop_limit: Optional[int] = 6
    temperature: float = 0.7
    #: reply tokens per turn (fewer when the context is nearly full)
    max_tokens: int = 4096
    #: the episode ends when fewer reply tokens than this fit in the context
    min_reply_tokens: int = 256
    #: ``auto``: JSON-schema constrained decoding where the backend has it; ``off``
    structured_output: str = "auto"
    max_reply_chars: int = 60_000
    terminal_width: int = 160
    terminal_height: int = 40


class TerminusAgent:
    """Plays one episode: prompt, turns, stop reason. Knows nothing of containers or files."""

    name = "terminus"
    reply_schema = REPLY_SCHEMA

    def __init__(self, config: Any) -> None:
        self.config = config
        self._templates = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)

    def render(self, which: str, **context: Any) -> str:
        return self._templates.from_string(getattr(self.config, which)).render(**context)

    def first_prompt(self, task: str, screen: str) -> str:
        c = self.config
        return self.render("prompt", task=task.strip(), screen=screen, max_turns=c.max_turns,
                           max_command_duration=c.max_command_duration, output_bytes=c.output_bytes)

    async def run(self, task: str, terminal: Terminal, chat: Chat, *, context_limit: int | None = None) -> Episode:
        c = self.config
        started = time.monotonic()
        episode = Episode(prompt=self.first_prompt(task, await terminal.start()))
        messages: list[dict] = [{"role": "user", "content": episode.prompt}]
        limit = min(int(c.max_context_tokens), context_limit or int(c.max_context_tokens))
        used_tokens: int | None = None  # prompt + reply tokens of the last request, as counted by the server
        unusable_in_row, awaiting_confirmation = 0, False
        try:
            for index in range(1, int(c.max_turns) + 1):
                if time.monotonic() - started > c.max_wall_time:
                    episode.stop_reason, episode.detail = WALL_TIME, f"agent.max_wall_time={c.max_wall_time:.0f}s reached"
                    break
                room, short = self._room(messages, used_tokens, limit)
                if short:
                    episode.stop_reason, episode.detail = CONTEXT, short
                    break
                turn = Turn(index=index, reply="", started_at=datetime.now(timezone.utc).isoformat())
                try:
                    result = await chat(messages, max_tokens=room)
                except RequestError as exc:
                    text = str(exc)
                    context_error = "context length" in text.lower() or "maximum context" in text.lower()
                    episode.stop_reason, episode.detail = (CONTEXT if context_error else REQUEST_ERROR), text[:500]
                    break
                used_tokens = _take_result(turn, result) or used_tokens
                episode.turns.append(turn)
                messages.append({"role": "assistant", "content": turn.reply})
                try:
                    reply = parse_reply(turn.reply, REPLY_SCHEMA, max_chars=int(c.max_reply_chars))
                except ReplyError as exc:
                    turn.malformed, turn.error = True, str(exc)
                    unusable_in_row += 1
                    awaiting_confirmation = False
                    if unusable_in_row >= int(c.max_malformed_in_row):
                        episode.stop_reason, episode.detail = MALFORMED, f"{unusable_in_row} unusable replies in a row; last: {exc}"
                        break
                    turn.observation = self.render("malformed", error=str(exc))
                    messages.append({"role": "user", "content": turn.observation})
                    continue
                unusable_in_row = 0
                output = await self._act(terminal, turn, reply, started)
                if turn.task_complete and awaiting_confirmation:
                    episode.stop_reason = COMPLETED
                    break
                awaiting_confirmation = turn.task_complete
                turn.observation = self.render("confirm" if turn.task_complete else "observation", output=output)
                messages.append({"role": "user", "content": turn.observation})
                looping = self._looping(episode)
                if looping:
                    episode.stop_reason, episode.detail = LOOPING, looping
                    break
            else:
                episode.stop_reason, episode.detail = MAX_TURNS, f"agent.max_turns={c.max_turns} reached"
        except TerminalClosed as exc:  # the agent's own keystrokes ended its terminal, and so its episode
            episode.stop_reason, episode.detail = TERMINAL_CLOSED, str(exc)[:500]
        finally:
            episode.wall_s = round(time.monotonic() - started, 2)
        return episode


    def _room(self, messages: list[dict], used_tokens: int | None, limit: int) -> tuple[int, str | None]:
        """Tokens the next reply may take, and why that is too few, if it is."""
        c = self.config
        estimate = _estimate_tokens(messages, used_tokens)
        room = min(int(c.max_tokens), limit - estimate)
        if room >= int(c.min_reply_tokens):
            return room, None
        return room, (f"about {estimate} prompt tokens leave {limit - estimate} of the context limit {limit}, "
                      f"less than agent.min_reply_tokens={c.min_reply_tokens}")

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

    def _looping(self, episode: Episode) -> str | None:
        """Why the episode is stuck in a loop (``agent.loop_limit``), if it is."""
        limit = self.config.loop_limit
        if limit is None:
            return None
        same_commands, same_output = repeats(episode.turns)
        if max(same_commands, same_output) <= int(limit):
            return None
        what = "commands" if same_commands >= same_output else "output"
        return f"the same {what} {max(same_commands, same_output)} times in a row (agent.loop_limit={limit})"


def _take_result(turn: Turn, result: Any) -> int | None:
    """Put a reply and its token counts on the turn; the tokens the conversation now holds."""
    turn.reply = result.choices[0].text if result.choices else ""
    turn.prompt_tokens, turn.completion_tokens = result.prompt_tokens, result.completion_tokens
    turn.cached_tokens = getattr(result, "cached_tokens", None)
    turn.latency_s = round(result.latency_s, 3)
    if result.prompt_tokens is not None and result.completion_tokens is not None:
        return result.prompt_tokens + result.completion_tokens
    return None


def _estimate_tokens(messages: list[dict], used_tokens: int | None) -> int:
    """Prompt tokens of the next request: the server's count so far plus ~3 characters per
    token for the message added since (all messages when the server reports no usage)."""
    if used_tokens is None:
        return sum(len(m["content"]) for m in messages) // 3
    return used_tokens + len(messages[-1]["content"]) // 3


@hookimpl
def litecoder_register_agents(register):
    register("terminus", TerminusAgent, config=TerminusAgentConfig)
