"""docs/plugins.md's worked examples, run as the plugin module they describe: a backend, a
stage, an agent and a sandbox, each through the config a user would write."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import types

import polars as pl
import pytest

from litecoder.agents.base import COMPLETED
from litecoder.backends.base import Choice, Completion
from litecoder.run import execute
from litecoder.sandboxes.names import run_id
from litecoder.sandboxes.terminals import CommandTerminal, open_terminal

from .conftest import REPO
from .test_preparer_agent import FakeSession


def guide_module() -> types.ModuleType:
    """Every ``python`` block of the guide that starts with ``# example:``, as one module."""
    text = (REPO / "docs" / "plugins.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if b.startswith("# example:")]
    assert [b.split("\n", 1)[0] for b in blocks] == [f"# example: {k}" for k in ("backend", "stage", "agent", "sandbox", "exporter")]
    module = types.ModuleType("litecoder_guide_examples")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile("\n".join(blocks), "docs/plugins.md", "exec"), module.__dict__)
    return module


@pytest.fixture
def guide(plugins):
    plugins.register(guide_module(), "guide-examples")
    yield
    sys.modules.pop("litecoder_guide_examples", None)


def test_the_replay_backend_samples_and_the_lengths_stage_counts(guide, compose_cfg, tmp_path):
    answers = tmp_path / "answers.jsonl"
    texts = ["Rotate the nginx logs daily and keep a week of them compressed.", "Fix DNS."]
    answers.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    cfg = compose_cfg("stage=sample", "backend=replay", f"backend.path={answers}", "sample.num_tasks=4", "sample.n=1",
                      "sample.template.prefix='{system}'")
    execute(cfg, tmp_path / "run")
    tasks = pl.read_parquet(tmp_path / "run" / "tasks.parquet")
    assert sorted(tasks["text"]) == sorted(texts * 2)
    summaries = execute(compose_cfg("stage=lengths", "lengths.min_words=3"), tmp_path / "run")
    assert summaries["lengths"] == {"tasks": 4, "short": 2}
    assert sorted(pl.read_parquet(tmp_path / "run" / "lengths.parquet")["words"]) == [2, 2, 12, 12]
    with pytest.raises(Exception, match="min_word"):
        compose_cfg("stage=lengths", "lengths.min_word=3")


def test_the_oneshot_agent_runs_its_script_and_is_corrected_once(guide, compose_cfg, plugins):
    cfg = compose_cfg("agent=oneshot", "agent.command_timeout=9")
    agent = plugins.registry("agent").get(cfg.agent.type)(cfg.agent)
    replies = ["no json here", json.dumps({"script": "mkdir -p /srv/out && echo done"})]
    asked = []

    async def chat(messages, max_tokens=None):
        asked.append([dict(m) for m in messages])
        return Completion([Choice(replies.pop(0), "stop", 5)], "m", 20, 5, 0.01)

    session = FakeSession()
    terminal = open_terminal(agent, session)
    assert isinstance(terminal, CommandTerminal)
    episode = asyncio.run(agent.run("Make /srv/out.", terminal, chat))
    assert episode.stop_reason == COMPLETED and len(episode.turns) == 2
    assert session.commands == [("mkdir -p /srv/out && echo done", 9.0)]
    assert "That reply was not usable" in asked[1][-1]["content"]


@pytest.mark.docker
def test_the_audited_sandbox_logs_each_command_it_runs(guide, compose_cfg, plugins, tmp_path):
    cfg = compose_cfg("sandbox=audited", f"sandbox.audit_log={tmp_path / 'audit.log'}")
    sandbox = plugins.registry("sandbox").get("audited")(cfg.sandbox, run_id(tmp_path / "audited"))
    try:
        image = sandbox.ensure_image(plugins.registry("image_builder"))
        session = sandbox.open("audit", image)
        assert session.exec("echo hello", timeout=30).output.strip() == "hello"
        assert not session.exec("false", timeout=30).ok
        session.remove()
    finally:
        sandbox.close()
    assert (tmp_path / "audit.log").read_text() == "0\techo hello\n1\tfalse\n"
