"""The terminals an agent can act on, chosen by what the agent declares (``agent.terminal``).

``tmux``: keystrokes into a pane, the screen read back (``TmuxTerminal``). ``exec``: each
command run to its end in a fresh shell, its output and exit code read back
(``CommandTerminal``); what it ran is recorded in ``runs``.
"""

from __future__ import annotations

import asyncio
import shlex
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..records import CommandRun
from .tmux import TmuxTerminal

if TYPE_CHECKING:
    from ..agents.base import Terminal
    from ..agents.loop import TurnAgent
    from ..sandboxes.base import Session


class CommandTerminal:
    """Runs each sent text as one bash command with a time limit (``session.exec``)."""

    def __init__(self, session: Session, *, timeout: float, workdir: str | None = None) -> None:
        self.session = session
        self.timeout = timeout
        #: where each command starts (an imported task's WORKDIR; default: the session's, /root)
        self.workdir = workdir
        #: every command run, in order
        self.runs: list[CommandRun] = []
        self._pending: list[str] = []

    async def start(self) -> str:
        return ""

    async def send(self, command: str) -> None:
        shell = f"cd {shlex.quote(self.workdir)} || exit 1\n{command}" if self.workdir else command
        outcome = await asyncio.to_thread(self.session.exec, shell, timeout=self.timeout)
        self.runs.append(CommandRun(command, outcome.exit_code, outcome.timed_out, round(outcome.duration_s, 2)))
        self._pending.append(f"$ {command}\n{outcome.output}\n[exit code {outcome.exit_code}]")

    async def read_new(self) -> str:
        text, self._pending = "\n\n".join(self._pending) or "(no commands)", []
        return text


def open_terminal(agent: TurnAgent, session: Session, workdir: str | None = None) -> Terminal:
    """The terminal ``agent`` declares, on ``session``, sized by the agent's config, starting in
    ``workdir`` (default: the session's own, /root)."""
    config = agent.config
    if agent.terminal == "tmux":
        return TmuxTerminal(session, width=int(config.get("terminal_width", 160)),
                            height=int(config.get("terminal_height", 40)),
                            output_bytes=int(config.get("output_bytes", 10_000)), workdir=workdir)
    if agent.terminal == "exec":
        return CommandTerminal(session, timeout=float(config.get("command_timeout", 60.0)), workdir=workdir)
    raise ConfigError(f"agent {agent.name!r} asks for terminal {agent.terminal!r}; litecoder has 'tmux' and 'exec'")
