"""The turn loop every agent runs: ask the model, check the reply, act, send back what happened.

The loop owns what all agents share: the turn and wall-time limits, the room left in the
context, request errors, unusable replies (answered with a correction, ended after too many
in a row) and loop detection. An agent says what is its own: its first messages, its reply
schema, and ``step`` (what one usable reply does and whether the episode ends there). The
teacher (``terminus``) and the environment preparer (``preparer``) both run on it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Optional


from ..errors import RequestError, TerminalClosed
from ..replies import ReplyError, json_schema_format, parse_reply
from ..templates import render
from .base import CONTEXT, LOOPING, MALFORMED, MAX_TURNS, REQUEST_ERROR, TERMINAL_CLOSED, WALL_TIME, Chat, Episode, Terminal, Turn, repeats

if TYPE_CHECKING:
    from omegaconf import DictConfig
    from ..backends.base import Backend, Completion, LLMClient


@dataclass
class AgentLoopConfig:
    """The limits every agent's loop has; an agent's schema extends it with its texts."""

    type: str = "?"
    max_turns: int = 50
    #: seconds for one whole episode
    max_wall_time: float = 1800.0
    max_commands_per_turn: int = 30
    #: terminal output sent back per turn, keeping head and tail
    output_bytes: int = 10_000
    #: prompt + reply tokens one request may use (also capped by the backend's max_model_len)
    max_context_tokens: int = 32_768
    #: unusable replies in a row that end the episode (null: only ``max_turns`` ends it)
    max_malformed_in_row: Optional[int] = 3
    #: end the episode once the same commands or the same output repeat more often than
    #: this in a row (null: never)
    loop_limit: Optional[int] = 6
    temperature: float = 0.7
    #: reply tokens per turn (fewer when the context is nearly full)
    max_tokens: int = 4096
    #: the episode ends when fewer reply tokens than this fit in the context
    min_reply_tokens: int = 256
    #: ``auto``: JSON-schema constrained decoding where the backend has it; ``off``
    structured_output: str = "auto"
    max_reply_chars: int = 60_000


@dataclass
class Stop:
    """Why an episode ends after a turn: a stop reason and its detail."""

    reason: str
    detail: Optional[str] = None


class TurnAgent:
    """Plays one episode on a ``Terminal``; knows nothing of containers or files.

    Subclasses set ``name``, ``reply_schema`` and ``terminal`` (``tmux``: keystrokes into a
    pane; ``exec``: each command run to its end, with its exit code) and implement
    ``first_messages`` and ``step``.
    """

    name = "?"
    reply_schema: dict = {}
    terminal = "tmux"

    def __init__(self, config: DictConfig) -> None:
        self.config = config

    def repair_message(self, findings: list[str]) -> str:
        """The message that gives certification's findings back, to go on from an episode that
        prepared a task (the environment stage's repair rounds): the config's ``repair``
        template where the agent has one, else the findings as a list."""
        if "repair" in self.config:
            return self.render("repair", findings=findings)
        lines = "\n".join(f"- {finding}" for finding in findings)
        return f"Checking the task found these problems; fix them, then finish again:\n{lines}"

    def render(self, which: str, **context: Any) -> str:
        return render(self.config[which], **context)

    def first_messages(self, task: str, screen: str, **context: object) -> list[dict]:
        """The conversation's opening; the last message is the episode's prompt."""
        raise NotImplementedError

    async def step(self, terminal: Terminal, episode: Episode, reply: dict, started: float) -> tuple[Stop | None, str]:
        """Carry out one usable reply (on ``episode.turns[-1]``); returns whether the episode
        ends, and the message to send back otherwise."""
        raise NotImplementedError

    def correction(self, error: str) -> str:
        """The message that answers an unusable reply."""
        return self.render("malformed", error=error)

    def parse(self, turn: Turn) -> dict:
        """The usable content of the turn's reply; raises ``ReplyError`` when there is none."""
        return parse_reply(turn.reply, self.reply_schema, max_chars=int(self.config.max_reply_chars))

    def assistant_message(self, turn: Turn) -> dict:
        """The turn's reply as it goes into the conversation."""
        return {"role": "assistant", "content": turn.reply}

    def answer_messages(self, turn: Turn, text: str) -> list[dict]:
        """What goes back to the model after a turn: ``text`` is the observation or the correction."""
        return [{"role": "user", "content": text}]

    def request_params(self) -> dict:
        """Request fields of the agent's own (the ``tools`` of a tool-calling agent)."""
        return {}

    async def run(self, task: str, terminal: Terminal, chat: Chat, *, context_limit: int | None = None,
                  messages: list[dict] | None = None, **context: object) -> Episode:
        """One episode: ``context`` goes to the first messages' templates. With ``messages``
        (an earlier episode's, and a new user message) the conversation goes on from there."""
        c = self.config
        started = time.monotonic()
        screen = await terminal.start()
        messages = list(messages) if messages else self.first_messages(task, screen, **context)
        episode = Episode(prompt=messages[-1]["content"], messages=messages)
        limit = min(int(c.max_context_tokens), context_limit or int(c.max_context_tokens))
        used_tokens: int | None = None  # prompt + reply tokens of the last request, as counted by the server
        stop: Stop | None = None
        try:
            for index in range(1, int(c.max_turns) + 1):
                room = self._room(messages, used_tokens, limit, started)
                if isinstance(room, Stop):
                    stop = room
                    break
                turn = Turn(index=index, reply="", started_at=datetime.now(timezone.utc).isoformat())
                try:
                    result = await chat(messages, max_tokens=room)
                except RequestError as exc:
                    stop = _request_stop(str(exc))
                    break
                used_tokens = _take_result(turn, result) or used_tokens
                episode.turns.append(turn)
                messages.append(self.assistant_message(turn))
                stop, observation = await self._turn(terminal, episode, started)
                if stop is not None:
                    break
                messages.extend(self.answer_messages(turn, observation))
            else:
                stop = Stop(MAX_TURNS, f"agent.max_turns={c.max_turns} reached")
        except TerminalClosed as exc:  # the agent's own keystrokes ended its terminal, and so its episode
            stop = Stop(TERMINAL_CLOSED, str(exc)[:500])
        finally:
            episode.wall_s = round(time.monotonic() - started, 2)
        episode.stop_reason, episode.detail = stop.reason, stop.detail
        return episode

    def _room(self, messages: list[dict], used_tokens: int | None, limit: int, started: float) -> Stop | int:
        """Why no further turn may start, or the reply tokens it may use."""
        c = self.config
        if time.monotonic() - started > c.max_wall_time:
            return Stop(WALL_TIME, f"agent.max_wall_time={c.max_wall_time:.0f}s reached")
        estimate = _estimate_tokens(messages, used_tokens)
        room = min(int(c.max_tokens), limit - estimate)
        if room >= int(c.min_reply_tokens):
            return room
        return Stop(CONTEXT, f"about {estimate} prompt tokens leave {limit - estimate} of the context limit {limit}, "
                             f"less than agent.min_reply_tokens={c.min_reply_tokens}")

    async def _turn(self, terminal: Terminal, episode: Episode, started: float) -> tuple[Stop | None, str]:
        """Parse the last reply and act on it, or answer it with a correction."""
        c, turn = self.config, episode.turns[-1]
        try:
            reply = self.parse(turn)
        except ReplyError as exc:
            turn.malformed, turn.error = True, str(exc)
            in_row = _malformed_in_row(episode.turns)
            if c.max_malformed_in_row is not None and in_row >= int(c.max_malformed_in_row):
                return Stop(MALFORMED, f"{in_row} unusable replies in a row; last: {exc}"), ""
            turn.observation = self.correction(str(exc))
            return None, turn.observation
        stop, observation = await self.step(terminal, episode, reply, started)
        if stop is None:
            turn.observation = observation
            looping = self._looping(episode)
            if looping:
                stop = Stop(LOOPING, looping)
        return stop, observation

    def _looping(self, episode: Episode) -> str | None:
        """Why the episode is stuck in a loop (``loop_limit``), if it is."""
        limit = self.config.loop_limit
        if limit is None:
            return None
        same_commands, same_output = repeats(episode.turns)
        if max(same_commands, same_output) <= int(limit):
            return None
        what = "commands" if same_commands >= same_output else "output"
        return f"the same {what} {max(same_commands, same_output)} times in a row (agent.loop_limit={limit})"


def chat_params(agent: TurnAgent, backend: Backend) -> dict:
    """The request parameters an agent's turns share: its temperature, and its reply schema
    as constrained decoding where the backend has it and the agent's config allows."""
    config = agent.config
    params: dict = {"temperature": config.get("temperature"), **agent.request_params()}
    if agent.reply_schema and config.get("structured_output", "auto") == "auto" and backend.supports_structured_output:
        params["response_format"] = json_schema_format(f"{agent.name}_turn", agent.reply_schema)
    return params


def bind_chat(client: LLMClient, agent: TurnAgent, params: dict) -> Chat:
    """``chat(messages, max_tokens)`` for one episode on ``client``."""

    async def chat(messages: list[dict], max_tokens: int | None = None) -> Completion:
        return await client.chat(messages, n=1, max_tokens=max_tokens or agent.config.get("max_tokens"), **params)

    return chat


def _request_stop(text: str) -> Stop:
    context_error = "context length" in text.lower() or "maximum context" in text.lower()
    return Stop(CONTEXT if context_error else REQUEST_ERROR, text[:500])


def _malformed_in_row(turns: list[Turn]) -> int:
    count = 0
    for turn in reversed(turns):
        if not turn.malformed:
            break
        count += 1
    return count


def _take_result(turn: Turn, result: Completion) -> int | None:
    """Put a reply and its token counts on the turn; the tokens the conversation now holds."""
    turn.reply = result.choices[0].text if result.choices else ""
    turn.tool_calls = list(result.choices[0].tool_calls) if result.choices else []
    turn.prompt_tokens, turn.completion_tokens = result.prompt_tokens, result.completion_tokens
    turn.cached_tokens = result.cached_tokens
    turn.latency_s = round(result.latency_s, 3)
    if result.prompt_tokens is not None and result.completion_tokens is not None:
        return result.prompt_tokens + result.completion_tokens
    return None


def _estimate_tokens(messages: list[dict], used_tokens: int | None) -> int:
    """Prompt tokens of the next request: the server's count so far plus ~3 characters per
    token for the message added since (all messages when the server reports no usage)."""
    if used_tokens is None:
        return sum(_chars(m) for m in messages) // 3
    added = 0
    for message in reversed(messages):
        if message["role"] == "assistant":
            break
        added += _chars(message)
    return used_tokens + added // 3


def _chars(message: dict) -> int:
    """Characters a message puts in the prompt: its text and its tool calls' arguments."""
    calls = message.get("tool_calls") or []
    return len(message.get("content") or "") + sum(len(c["function"]["arguments"]) + 20 for c in calls)
