"""What an agent loop produces and what it acts on.

An agent turns model replies into commands on a ``Terminal`` and records every turn in an
``Episode``. The stage around it owns the container, the verifier and the files; the agent
only talks to the model and the terminal, so another agent (a different reply format, tool
calls) plugs in through ``litecoder_register_agents`` without touching the stage. The loop
they share is ``agents/loop.py``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Awaitable, Callable, Hashable, Optional, Protocol, Sequence

if TYPE_CHECKING:
    from ..backends.base import Completion

#: why an episode ended
COMPLETED = "completed"
MAX_TURNS = "max_turns"
WALL_TIME = "wall_time"
CONTEXT = "context"
LOOPING = "looping"
MALFORMED = "malformed"
REQUEST_ERROR = "request_error"
#: the agent ended its own terminal (``tmux kill-server``); the verifier still runs
TERMINAL_CLOSED = "terminal_closed"
#: the agent said the task cannot be done here
GAVE_UP = "gave_up"
STOP_REASONS = (COMPLETED, MAX_TURNS, WALL_TIME, CONTEXT, LOOPING, MALFORMED, REQUEST_ERROR, TERMINAL_CLOSED, GAVE_UP)


#: a keystroke string that is one key name (tmux's spelling) rather than text to type
_KEY = re.compile(
    r"^(?:(?:[CMS]-)+\S|Enter|Escape|Tab|BTab|BSpace|Space|Up|Down|Left|Right|Home|End|"
    r"PageUp|PageDown|PgUp|PgDn|PPage|NPage|IC|DC|F(?:[1-9]|1[0-2]))$"
)


def is_key(keystrokes: str) -> bool:
    """Whether an agent's keystrokes are one key press (``C-c``, ``Escape``), not text."""
    return bool(_KEY.match(keystrokes.strip())) and "\n" not in keystrokes.strip()


class Terminal(Protocol):
    """A live shell the agent types into (a tmux pane in a container).

    Once started, ``send`` and ``read_new`` raise ``litecoder.errors.TerminalClosed`` when the
    agent's own keystrokes destroyed the terminal, so the agent can end its episode there.
    """

    #: the commands a terminal ran one by one to their end (``CommandRun``), for the record;
    #: a live shell, where commands are keystrokes, has none
    runs: list

    async def start(self) -> str:
        """Open the shell; returns the first screen."""

    async def send(self, keystrokes: str) -> None:
        """Type ``keystrokes`` (a trailing newline presses Enter; ``C-c`` style keys allowed)."""

    async def read_new(self) -> str:
        """The pane's output since the last read (the current screen if it was redrawn)."""


@dataclass
class Command:
    keystrokes: str
    duration: float


@dataclass
class Turn:
    """One model reply and what it caused."""

    index: int
    #: the reply text exactly as the model wrote it (what SFT trains on)
    reply: str
    #: the reply's native tool calls (``{"id", "name", "arguments"}``, arguments as written)
    tool_calls: list[dict] = field(default_factory=list)
    #: what each tool call returned, in the order of ``tool_calls``
    tool_results: list[str] = field(default_factory=list)
    #: the message the agent sent back (terminal output or a correction); None after the last turn
    observation: Optional[str] = None
    commands: list[Command] = field(default_factory=list)
    analysis: str = ""
    plan: str = ""
    task_complete: bool = False
    #: the reply did not parse or fit the schema; ``error`` says why
    malformed: bool = False
    error: Optional[str] = None
    prompt_tokens: Optional[int] = None
    completion_tokens: Optional[int] = None
    cached_tokens: Optional[int] = None
    cost_usd: float = 0.0
    latency_s: float = 0.0
    started_at: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Episode:
    """A whole rollout: the first prompt, every turn, and why it ended."""

    prompt: str
    turns: list[Turn] = field(default_factory=list)
    stop_reason: Optional[str] = None
    #: free-text detail on the stop (the request error, the loop that was seen)
    detail: Optional[str] = None
    wall_s: float = 0.0
    #: what the agent hands over besides its work (the preparer's ``verifier`` and ``solution``)
    result: dict = field(default_factory=dict)
    #: the whole conversation, to go on from (the environment stage's repair rounds)
    messages: list[dict] = field(default_factory=list)

    @property
    def malformed_turns(self) -> int:
        return sum(1 for t in self.turns if t.malformed)


#: ``await chat(messages, max_tokens=n) -> Completion``, bound to the stage's backend and parameters
Chat = Callable[..., Awaitable["Completion"]]


def longest_run(values: Sequence[Hashable | None]) -> int:
    """Length of the longest stretch of equal consecutive values (``None`` breaks a stretch)."""
    best = current = 0
    previous: object = object()
    for value in values:
        if value is None:
            current, previous = 0, object()
            continue
        current = current + 1 if value == previous else 1
        previous = value
        best = max(best, current)
    return best


def repeats(turns: list[Turn]) -> tuple[int, int]:
    """The most times in a row the same commands were sent, and the same output came back.

    Turns that sent nothing, malformed turns and empty output do not count: waiting for a
    slow command is not a loop.
    """
    commands = [tuple(c.keystrokes.strip() for c in t.commands) if t.commands and not t.malformed else None for t in turns]
    screens = [t.observation.strip() if t.observation and t.observation.strip() and not t.malformed else None for t in turns]
    return longest_run(commands), longest_run(screens)
