"""The Terminus agent loop against a scripted model and a fake terminal (deterministic units);
the real tmux pane and real models are in test_trajectory_stage.py and test_vllm.py."""

from __future__ import annotations

import asyncio
import json
import tomllib

import jsonschema
import pytest
from omegaconf import OmegaConf

from litecoder import atif
from litecoder.agents import base
from litecoder.agents.terminus import TerminusAgent
from litecoder.backends.base import Choice, Completion
from litecoder.errors import RequestError, TerminalClosed
from litecoder.stages.trajectory import TrajectoryFilters, drop_reasons
from litecoder.exporters.harbor import solve_script, task_toml, top_level
from litecoder.agents.base import is_key


class FakeTerminal:
    def __init__(self, outputs=None):
        self.sent: list[str] = []
        self.outputs = list(outputs or [])

    async def start(self) -> str:
        return "root@sandbox:~#"

    async def send(self, keystrokes: str) -> None:
        self.sent.append(keystrokes)

    async def read_new(self) -> str:
        return self.outputs.pop(0) if self.outputs else f"root@sandbox:~# {self.sent[-1].strip() if self.sent else ''}"


def turn(*commands, complete=False, duration=0.0):
    return json.dumps({"analysis": "looking", "plan": "do it",
                       "commands": [{"keystrokes": c, "duration": duration} for c in commands], "task_complete": complete})


class Model:
    def __init__(self, replies, prompt_tokens=100):
        self.replies = list(replies)
        self.requests: list[list[dict]] = []
        self.max_tokens: list[int | None] = []
        self.prompt_tokens = prompt_tokens

    async def __call__(self, messages, max_tokens=None):
        self.requests.append([dict(m) for m in messages])
        self.max_tokens.append(max_tokens)
        reply = self.replies.pop(0) if self.replies else turn("echo again\n")
        if isinstance(reply, Exception):
            raise reply
        tokens = self.prompt_tokens if isinstance(self.prompt_tokens, int) else self.prompt_tokens[len(self.requests) - 1]
        return Completion([Choice(reply, "stop", 10)], "m", tokens, 10, 0.01)


@pytest.fixture
def agent_config(compose_cfg):
    def make(*overrides):
        return compose_cfg(*overrides).agent

    return make


def play(config, replies, terminal=None, **kwargs):
    model = Model(replies, **{k: kwargs.pop(k) for k in list(kwargs) if k == "prompt_tokens"})
    terminal = terminal or FakeTerminal()
    episode = asyncio.run(TerminusAgent(config).run("Create /root/a.txt", terminal, model, **kwargs))
    return episode, model, terminal


def test_completion_needs_two_task_complete_replies_in_a_row(agent_config):
    replies = [turn("touch a.txt\n"), turn(complete=True), turn("ls\n"), turn(complete=True), turn(complete=True)]
    episode, model, terminal = play(agent_config(), replies)
    assert episode.stop_reason == base.COMPLETED
    assert len(episode.turns) == 5 and terminal.sent == ["touch a.txt\n", "ls\n"]
    assert "Create /root/a.txt" in episode.prompt and "root@sandbox:~#" in episode.prompt
    # The first task_complete is answered with a request to confirm; the final turn gets no reply.
    assert "marked the task as complete" in model.requests[2][-1]["content"]
    assert "marked the task as complete" not in model.requests[3][-1]["content"]
    assert episode.turns[-1].observation is None
    assert [m["role"] for m in model.requests[-1]] == ["user"] + ["assistant", "user"] * 4


def test_malformed_replies_are_answered_then_end_the_episode(agent_config):
    episode, model, _ = play(agent_config(), ["not json at all", turn("ls\n"), "{}", "{", "```json\n[1]\n```"])
    assert episode.stop_reason == base.MALFORMED
    assert [t.malformed for t in episode.turns] == [True, False, True, True, True]
    assert "could not be used" in model.requests[1][-1]["content"]
    assert "no JSON object" in episode.turns[0].error and "required property" in episode.turns[2].error


def test_loops_stop_the_episode_and_durations_are_capped(agent_config):
    episode, _, terminal = play(agent_config("agent.loop_limit=3", "agent.max_command_duration=0.01"),
                                [turn("cat missing\n", duration=500)] * 10)
    assert episode.stop_reason == base.LOOPING and len(episode.turns) == 4
    assert "same commands 4 times" in episode.detail
    assert {c.duration for t in episode.turns for c in t.commands} == {0.01}
    assert base.repeats(episode.turns) == (4, 4)


def test_waiting_is_not_a_loop():
    turns = [base.Turn(index=i, reply="", observation="" if i < 5 else "done") for i in range(6)]
    assert base.repeats(turns) == (0, 1)


def test_limits_turns_context_and_request_errors(agent_config):
    episode, _, _ = play(agent_config("agent.max_turns=3"), [turn("echo 1\n"), turn("echo 2\n"), turn("echo 3\n")])
    assert episode.stop_reason == base.MAX_TURNS and len(episode.turns) == 3
    episode, model, _ = play(agent_config("agent.max_tokens=1000"), [turn(f"echo {i}\n") for i in range(5)],
                             prompt_tokens=[3300, 3700, 3900], context_limit=4096)
    assert episode.stop_reason == base.CONTEXT and len(episode.turns) == 3 and "4096" in episode.detail
    # The first prompt is short; then the reply budget shrinks to what is left of the context.
    assert model.max_tokens[0] == 1000 and 256 <= model.max_tokens[2] < model.max_tokens[1] < 1000
    episode, _, _ = play(agent_config(), [RequestError("HTTP 400: maximum context length is 4096 tokens")])
    assert episode.stop_reason == base.CONTEXT and episode.turns == []
    episode, _, _ = play(agent_config(), [turn("ls\n"), RequestError("HTTP 503: overloaded")])
    assert episode.stop_reason == base.REQUEST_ERROR and "503" in episode.detail
    episode, _, _ = play(agent_config("agent.max_wall_time=0"), [turn("ls\n")])
    assert episode.stop_reason == base.WALL_TIME


class ClosingTerminal(FakeTerminal):
    """A terminal that ``tmux kill-server`` destroys, as TmuxTerminal reports it."""

    async def send(self, keystrokes: str) -> None:
        if self.sent and self.sent[-1] == "tmux kill-server\n":
            raise TerminalClosed("the terminal's tmux session is gone")
        await super().send(keystrokes)

    async def read_new(self) -> str:
        if self.sent and self.sent[-1] == "tmux kill-server\n":
            raise TerminalClosed("the terminal's tmux session is gone")
        return await super().read_new()


def test_a_terminal_the_agent_closes_ends_the_episode(agent_config):
    episode, model, terminal = play(agent_config(), [turn("ls\n"), turn("tmux kill-server\n", "ls\n"), turn("ls\n")],
                                    terminal=ClosingTerminal())
    assert episode.stop_reason == base.TERMINAL_CLOSED and "gone" in episode.detail
    assert len(episode.turns) == 2 and len(model.requests) == 2 and terminal.sent == ["ls\n", "tmux kill-server\n"]
    assert episode.turns[-1].observation is None
    # Like any other stop reason, it is the verifier and the filters that decide what is kept.
    filters = OmegaConf.structured(TrajectoryFilters)
    assert drop_reasons(record(stop_reason=base.TERMINAL_CLOSED), filters) == []


def test_keys_versus_text():
    assert is_key("C-c") and is_key("Escape") and is_key("C-x ") and is_key("F5")
    assert not is_key("ls\n") and not is_key("q") and not is_key("echo C-c\n") and not is_key("C-c\nls")


def record(**fields):
    base_record = {"turns": 5, "reward": 1, "verifier_exit_code": 0, "repeated_commands": 1, "repeated_output": 1,
                   "malformed_turns": 0, "conversation_tokens": 2000, "stop_reason": "completed"}
    return {**base_record, **fields}


def test_filters_record_why_a_rollout_is_dropped():
    filters = OmegaConf.structured(TrajectoryFilters)
    assert drop_reasons(record(), filters) == []
    assert drop_reasons(record(reward=0, verifier_exit_code=1), filters) == ["unsuccessful: the verifier exited 1 (reward 0)"]
    (looping,) = drop_reasons(record(repeated_commands=5), filters)
    assert looping.startswith("looping: the same commands 5 times") and "max_repeats=3" in looping
    assert drop_reasons(record(stop_reason="looping"), filters)[0].startswith("looping")
    assert drop_reasons(record(turns=301), filters) == ["too long: 301 turns (trajectory.filters.max_turns=300)"]
    assert drop_reasons(record(conversation_tokens=70000), filters)[0].startswith("too long: 70000 tokens")
    assert drop_reasons(record(malformed_turns=1), filters)[0].startswith("malformed: 1 unusable")
    assert drop_reasons(record(turns=0), filters) == ["empty: the agent made no turn"]
    relaxed = OmegaConf.merge(filters, {"unsuccessful": False, "max_repeats": None, "max_malformed_turns": None})
    assert drop_reasons(record(reward=0, repeated_output=9, malformed_turns=4), relaxed) == []


def test_atif_round_trip_and_strictness(agent_config):
    episode, _, _ = play(agent_config(), [turn("printf 'x' > a.txt\n", "C-c"), turn(complete=True), turn(complete=True)])
    trajectory = atif.from_episode(episode, session_id="run/t-r0", agent_name="litecoder-terminus", model="m",
                                   started_at="2026-01-01T00:00:00+00:00", extra={"task_id": "t", "rollout": 0})
    atif.validate(trajectory)
    steps = trajectory["steps"]
    assert [s["source"] for s in steps] == ["user", "agent", "agent", "agent"]
    assert steps[1]["tool_calls"][0]["arguments"] == {"keystrokes": "printf 'x' > a.txt\n", "duration": 0.0}
    assert steps[1]["observation"]["results"][0]["source_call_id"] == "call_1_2"
    assert steps[1]["metrics"]["prompt_tokens"] == 100 and trajectory["final_metrics"]["total_completion_tokens"] == 30
    pairs = atif.conversation(trajectory)
    assert [r for r, _ in pairs] == ["user", "assistant", "user", "assistant", "user", "assistant"]
    assert pairs[1][1] == episode.turns[0].reply
    assert solve_script(trajectory).endswith("cd /root\nprintf 'x' > a.txt\n")
    broken = json.loads(json.dumps(trajectory))
    broken["steps"][1]["tool"] = "x"
    with pytest.raises(jsonschema.ValidationError):
        atif.validate(broken)
    broken = json.loads(json.dumps(trajectory))
    broken["steps"][2]["step_id"] = 7
    with pytest.raises(jsonschema.ValidationError):
        atif.validate(broken)


def test_harbor_helpers():
    assert top_level(["/srv/repo/a", "/srv/repo", "/srv/repo2", "/root/.gitconfig"]) == ["/root/.gitconfig", "/srv/repo", "/srv/repo2"]
    text = task_toml({"metadata": {"tags": ["a", 'q"uote'], "difficulty": "unknown"},
                      "environment": {"cpus": 1, "network_mode": "no-network"}})
    parsed = tomllib.loads(text)
    assert parsed["schema_version"] == "1.4" and parsed["metadata"]["tags"] == ["a", 'q"uote']
    assert parsed["environment"] == {"cpus": 1, "network_mode": "no-network"}
