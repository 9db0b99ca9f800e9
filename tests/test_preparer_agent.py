"""The environment preparer on the shared turn loop, against a scripted model and a fake
session (deterministic units); the real container is in test_environment_stage.py."""

from __future__ import annotations

import asyncio
import json

from litecoder.agents import base
from litecoder.agents.preparer import PreparerAgent
from litecoder.backends.base import Choice, Completion
from litecoder.errors import RequestError
from litecoder.sandboxes.base import ExecResult
from litecoder.sandboxes.terminals import CommandTerminal, open_terminal
from litecoder.stages.environment import unprepared_reason


class FakeSession:
    """Runs nothing; answers each command with its text and exit code 0 (``false``: 1)."""

    def __init__(self):
        self.commands = []

    def exec(self, command, *, timeout, max_output_bytes=None):
        self.commands.append((command, timeout))
        return ExecResult(1 if command == "false" else 0, f"ran {command}", 0, False, 0.01)


def step(commands=(), *, ready=False, verifier="", solution=None, give_up=False, analysis="working", outputs=(),
         system_state=None):
    solution = ("touch /root/x" if ready else "") if solution is None else solution
    return json.dumps({"analysis": analysis, "commands": list(commands), "verifier": verifier, "solution": solution,
                       "outputs": list(outputs), "system_state": not outputs if system_state is None else system_state,
                       "ready": ready, "give_up": give_up})


def play(compose_cfg, replies, *overrides):
    config = compose_cfg(*overrides).environment.agent
    agent = PreparerAgent(config)
    requests = []

    async def chat(messages, max_tokens=None):
        requests.append([dict(m) for m in messages])
        reply = replies.pop(0) if replies else step(["echo again"])
        if isinstance(reply, Exception):
            raise reply
        return Completion([Choice(reply, "stop", 7)], "m", 50, 7, 0.01)

    session = FakeSession()
    terminal = open_terminal(agent, session)
    episode = asyncio.run(agent.run("Make a repo.", terminal, chat, network="registries"))
    return episode, agent, requests, terminal, session


def test_the_preparer_runs_commands_with_exit_codes_and_hands_over_its_verifier(compose_cfg):
    episode, agent, requests, terminal, session = play(
        compose_cfg, [step(["mkdir /srv/repo", "false"]),
                      step(["git init /srv/repo"], ready=True, verifier="test -d x", outputs=["/srv/repo/"])],
        "environment.agent.command_timeout=7")
    assert isinstance(terminal, CommandTerminal)
    assert episode.stop_reason == base.COMPLETED
    assert episode.result == {"verifier": "test -d x", "solution": "touch /root/x", "outputs": ["/srv/repo/"],
                              "verification": "separate"}
    assert [c for c, _ in session.commands] == ["mkdir /srv/repo", "false", "git init /srv/repo"]
    assert {t for _, t in session.commands} == {7.0}
    assert [(r.command, r.exit_code) for r in terminal.runs] == [("mkdir /srv/repo", 0), ("false", 1), ("git init /srv/repo", 0)]
    first = requests[0]
    assert first[0]["role"] == "system" and "package registries" in first[0]["content"]  # network=registries
    assert "7.0 seconds" in first[0]["content"] and "Make a repo." in first[1]["content"]
    assert "$ false\nran false\n[exit code 1]" in requests[1][-1]["content"]


def test_a_ready_reply_without_a_verifier_or_a_solution_is_asked_again(compose_cfg):
    episode, *_ = play(compose_cfg, [step(ready=True), step(ready=True, verifier="exit 1", solution=""),
                                     step(ready=True, verifier="exit 1")])
    assert episode.stop_reason == base.COMPLETED and len(episode.turns) == 3
    assert '"verifier" is empty' in episode.turns[0].observation
    assert '"solution" is empty' in episode.turns[1].observation


def test_outputs_are_declared_or_the_task_says_it_is_about_the_system(compose_cfg):
    """No outputs and no system state, a relative path, a whole system directory: asked again."""
    episode, *_ = play(compose_cfg, [step(ready=True, verifier="exit 1", system_state=False),
                                     step(ready=True, verifier="exit 1", outputs=["out.txt"]),
                                     step(ready=True, verifier="exit 1", outputs=["/usr/bin"]),
                                     step(ready=True, verifier="exit 1", system_state=True)])
    assert episode.stop_reason == base.COMPLETED and len(episode.turns) == 4
    notes = [t.observation for t in episode.turns[:3]]
    assert 'no outputs: name them, or say "system_state": true' in notes[0]
    assert "'out.txt' is not an absolute path" in notes[1] and "'/usr/bin' is too wide" in notes[2]
    assert episode.result["verification"] == "shared" and episode.result["outputs"] == []


def test_the_repair_message_lists_the_findings(compose_cfg):
    agent = PreparerAgent(compose_cfg().environment.agent)
    message = agent.repair_message(["oracle: the verifier fails after the reference solution", "stable: flaky"])
    assert "- oracle: the verifier fails after the reference solution\n- stable: flaky" in message


def test_each_way_an_episode_ends_is_a_reason_in_the_record(compose_cfg):
    cases = [
        ([step(give_up=True, analysis="needs a GPU")], (), base.GAVE_UP, "the agent gave up: needs a GPU"),
        (["{not json"] * 3, ("environment.agent.max_turns=3",), base.MAX_TURNS, "step limit of 3 reached"),
        ([RequestError("HTTP 503: down")], (), base.REQUEST_ERROR, "request failed: HTTP 503: down"),
        ([step(["ls"])] * 9, (), base.LOOPING, "the agent stopped (looping): the same commands 7 times"),
    ]
    for replies, overrides, stop, reason in cases:
        episode, agent, *_ = play(compose_cfg, list(replies), *overrides)
        assert episode.stop_reason == stop, (stop, episode.detail)
        assert unprepared_reason(episode, agent).startswith(reason)
    episode, *_ = play(compose_cfg, ["{not json"] * 3, "environment.agent.max_turns=3")
    assert episode.malformed_turns == 3  # unusable replies cost a turn each, and no more
