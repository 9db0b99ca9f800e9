"""The tmux terminal in a real container: incremental reads, keys, clipping, redraws."""

from __future__ import annotations

import asyncio

import pytest
from omegaconf import OmegaConf

from litecoder.errors import TerminalClosed
from litecoder.sandboxes.docker import DockerSandbox, DockerSandboxConfig
from litecoder.sandboxes.tmux import TmuxTerminal

pytestmark = pytest.mark.docker


@pytest.fixture
def session():
    sandbox = DockerSandbox(OmegaConf.structured(DockerSandboxConfig), "test-tmux")
    session = sandbox.open("tmux")
    yield session
    sandbox.close()


async def type_and_read(terminal, keystrokes, wait=0.5):
    await terminal.send(keystrokes)
    await asyncio.sleep(wait)
    return await terminal.read_new()


def test_reads_only_what_is_new_and_handles_keys_clipping_and_redraws(session):
    async def scenario():
        terminal = TmuxTerminal(session, output_bytes=2000)
        screen = await terminal.start()
        assert screen.endswith("#")
        first = await type_and_read(terminal, "echo hel''lo\n")
        assert "echo hel''lo" in first and "\nhello\n" in first + "\n"
        second = await type_and_read(terminal, "seq 1 3\n")
        assert "hello" not in second and "1\n2\n3" in second
        # A running command is interrupted with a key press.
        running = await type_and_read(terminal, "sleep 100\n")
        assert "sleep 100" in running
        interrupted = await type_and_read(terminal, "C-c")
        assert "^C" in interrupted and interrupted.rstrip().endswith("#")
        # Long output keeps its head and tail within the byte budget.
        flood = await type_and_read(terminal, "seq 1 50000\n", wait=2)
        assert "bytes of output cut" in flood and "seq 1 50000" in flood and "50000\n" in flood + "\n"
        assert len(flood.encode()) < 2600
        # After the screen is cleared, reading goes on with what is new.
        await type_and_read(terminal, "clear\n")
        after = await type_and_read(terminal, "echo after-clear\n")
        assert "after-clear" in after and "50000" not in after
        # A shell that exits is replaced by a fresh one.
        await type_and_read(terminal, "exit\n")
        assert "still-here" in await type_and_read(terminal, "echo still-here\n")
        # Multi-line keystrokes (a heredoc) are typed verbatim.
        await type_and_read(terminal, "cat > /tmp/f.txt <<'EOF'\nline $HOME\nEOF\n")
        assert session.exec("cat /tmp/f.txt", timeout=10).output.strip() == "line $HOME"

    asyncio.run(scenario())


def test_a_killed_shell_comes_back_and_a_killed_server_closes_the_terminal(session):
    async def scenario():
        terminal = TmuxTerminal(session)
        await terminal.start()
        # SIGKILL leaves the terminal to a dead process group; the loop takes it back.
        await type_and_read(terminal, "kill -9 $$\n")
        assert "still-2" in await type_and_read(terminal, "echo still-$((1 + 1))\n")
        await terminal.send("tmux kill-server\n")
        await asyncio.sleep(0.5)
        with pytest.raises(TerminalClosed, match="session is gone: no server running"):
            await terminal.read_new()
        with pytest.raises(TerminalClosed):
            await terminal.send("ls\n")
        # The container is fine: only the terminal went away.
        assert session.exec("echo alive", timeout=10).output.strip() == "alive"

    asyncio.run(scenario())
