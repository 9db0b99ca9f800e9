"""A tmux pane inside a sandbox session: the terminal a Terminus-style agent types into.

Keystrokes go to the pane verbatim (``send-keys -l``), except tmux key names such as ``C-c``
or ``Escape`` sent on their own. Reading returns only what is new since the last read:
the pane's absolute cursor line (scrollback size + cursor row) is remembered, and the next
capture starts there, so a long session never re-reads its whole history.

An agent can end its own terminal (``tmux kill-server``, killing the shell loop). A tmux
command that fails is followed by ``tmux has-session``; when the session is gone the failure
is ``TerminalClosed``, which ends the agent's episode rather than the item.
"""

from __future__ import annotations

import asyncio
import shlex
from typing import TYPE_CHECKING

from ..agents.base import is_key
from ..errors import SandboxError, TerminalClosed

if TYPE_CHECKING:
    from ..sandboxes.base import Session

SESSION = "agent"
_POSITION = "#{history_size} #{cursor_y} #{history_limit}"


class TmuxTerminal:
    """One tmux session in a container; blocking Docker calls run in worker threads."""

    def __init__(self, session: Session, *, width: int = 160, height: int = 40, history: int = 100_000,
                 output_bytes: int = 10_000, workdir: str | None = None) -> None:
        self.session = session
        #: where the shell starts (an imported task's WORKDIR; default: the session's, /root)
        self.workdir = workdir
        self.width, self.height, self.history = width, height, history
        self.output_bytes = output_bytes
        #: a live shell runs keystrokes, not recorded commands (``Terminal.runs``)
        self.runs: list = []
        self._position = 0

    def _run(self, command: str, *, max_output_bytes: int | None = None) -> str:
        result = self.session.exec(command, timeout=30, max_output_bytes=max_output_bytes)
        if result.ok:
            return result.output
        gone = self._why_gone()
        if gone:
            raise TerminalClosed(f"the terminal's tmux session is gone: {gone}")
        raise SandboxError(f"tmux command failed (exit {result.exit_code}): {result.output.strip()[:300]}")

    def _why_gone(self) -> str | None:
        """What tmux says when the session no longer exists; None while it does, or when that
        cannot be told (a timeout, no tmux): only exit 1 of has-session means "gone"."""
        probe = self.session.exec(f"tmux has-session -t {SESSION}", timeout=30)
        if probe.exit_code != 1 or probe.timed_out:
            return None
        return probe.output.strip()[:200] or "tmux has-session exited 1"

    async def start(self) -> str:
        # The shell is restarted when it exits, so an agent that types ``exit`` (or C-d) gets a
        # fresh prompt instead of a dead session. The loop has job control (``set -m``) so it
        # takes the terminal back even from a shell killed with ``kill -9 $$``; without it the
        # next shell starts in the background, cannot read, and the loop spins.
        start = (f"tmux start-server \\; set-option -g history-limit {self.history} \\; "
                 f"new-session -d -s {SESSION} -x {self.width} -y {self.height}"
                 f"{' -c ' + shlex.quote(self.workdir) if self.workdir else ''} 'set -m; while :; do bash -l; done'")
        await asyncio.to_thread(self._run, start)
        screen = ""
        for _ in range(50):  # the shell prints its prompt shortly after the session starts
            await asyncio.sleep(0.1)
            screen = await asyncio.to_thread(self._run, f"tmux capture-pane -p -t {SESSION}")
            if screen.strip():
                break
        await self.read_new()
        return screen.rstrip()

    async def send(self, keystrokes: str) -> None:
        if not keystrokes:
            return
        if is_key(keystrokes):
            command = f"tmux send-keys -t {SESSION} {shlex.quote(keystrokes.strip())}"
        else:
            command = f"tmux send-keys -t {SESSION} -l -- {shlex.quote(keystrokes)}"
        await asyncio.to_thread(self._run, command)

    async def read_new(self) -> str:
        script = (
            f"read h y limit < <(tmux display-message -p -t {SESSION} '{_POSITION}'); "
            f"echo \"$h $y $limit\"; start=$(( {self._position} - h )); "
            f"[ \"$start\" -lt \"-$h\" ] && start=-$h; "
            f"tmux capture-pane -p -J -t {SESSION} -S \"$start\" -E -"
        )
        output = await asyncio.to_thread(self._run, script, max_output_bytes=self.output_bytes + 256)
        header, _, text = output.partition("\n")
        try:
            history, row, _ = (int(v) for v in header.split())
        except ValueError as exc:
            raise SandboxError(f"unexpected tmux output: {header[:200]!r}") from exc
        self._position = history + row
        return text.rstrip()
