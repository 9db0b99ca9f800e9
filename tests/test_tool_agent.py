"""The native tool-calling agent (agent=bash_tool): units on a fake terminal, then the merge
conflict solved in a real container by a scripted model that answers with ``tool_calls``, with
its SFT rows read by ``datasets`` and its ATIF file checked by our schema and by Harbor's."""

from __future__ import annotations

import asyncio
import json

import datasets
import polars as pl
import pytest

from litecoder import atif
from litecoder.agents.bash_tool import BashToolAgent
from litecoder.backends.base import Choice, Completion
from litecoder.errors import ConfigError
from litecoder.exporters.harbor import solve_script
from litecoder.testing.stub_openai import tool_call

from .test_trajectory_stage import Pipeline, check_harbor_task, remove_images, run_pipeline


class FakeTerminal:
    def __init__(self):
        self.sent: list[str] = []

    async def start(self) -> str:
        return ""

    async def send(self, command: str) -> None:
        self.sent.append(command)

    async def read_new(self) -> str:
        return f"$ {self.sent[-1]}\nok\n[exit code 0]"


def calls(*commands, raw=None):
    """A reply's native tool calls, as the backend hands them over."""
    made = [{"id": f"c{i}", "name": "bash", "arguments": json.dumps({"command": c})} for i, c in enumerate(commands)]
    return made + ([raw] if raw else [])


class Model:
    def __init__(self, replies):
        self.replies = list(replies)
        self.requests: list[list[dict]] = []
        self.params: list[dict] = []

    async def __call__(self, messages, max_tokens=None):
        self.requests.append(json.loads(json.dumps(messages)))
        text, tool_calls = self.replies.pop(0)
        return Completion([Choice(text, "stop", 10, tool_calls=tool_calls)], "m", 100, 10, 0.01)


def play(config, replies):
    model, terminal = Model(replies), FakeTerminal()
    episode = asyncio.run(BashToolAgent(config).run("Create /root/a.txt", terminal, model))
    return episode, model, terminal


def test_tool_calls_run_in_order_and_a_reply_without_calls_ends_the_episode(compose_cfg):
    config = compose_cfg("agent=bash_tool").agent
    episode, model, terminal = play(config, [("", calls("touch /root/a.txt", "ls /root")), ("Done: a.txt exists.", [])])
    assert terminal.sent == ["touch /root/a.txt", "ls /root"]
    assert episode.stop_reason == "completed" and len(episode.turns) == 2
    second = model.requests[1]
    assert second[1]["role"] == "assistant" and second[1]["content"] is None
    assert [c["function"]["name"] for c in second[1]["tool_calls"]] == ["bash", "bash"]
    assert [(m["role"], m["tool_call_id"]) for m in second[2:]] == [("tool", "c0"), ("tool", "c1")]
    assert "[exit code 0]" in second[2]["content"]
    params = BashToolAgent(config).request_params()
    assert params["tools"][0]["function"]["parameters"]["required"] == ["command"] and params["tool_choice"] == "auto"
    assert BashToolAgent(compose_cfg("agent=bash_tool", "agent.tool_choice=required").agent).request_params()[
        "tool_choice"] == "required"
    with pytest.raises(ConfigError, match="agent.tool_choice is 'any'; choose auto or required"):
        BashToolAgent(compose_cfg("agent=bash_tool", "agent.tool_choice=any").agent)
    assert params["tools"][0]["function"]["strict"] is True


def test_with_tool_choice_required_a_reply_without_calls_is_unusable_not_the_end(compose_cfg):
    config = compose_cfg("agent=bash_tool", "agent.tool_choice=required", "agent.max_turns=2").agent
    episode, model, terminal = play(config, [("<tool_call>{\"name\": \"bash\", \"argu", []), ("", calls("ls"))])
    assert episode.malformed_turns == 1 and terminal.sent == ["ls"] and not episode.turns[0].task_complete
    assert "calls no tool" in model.requests[1][-1]["content"] and model.requests[1][-1]["role"] == "user"


def test_unusable_calls_are_answered_in_each_tool_message_and_run_nothing(compose_cfg):
    config = compose_cfg("agent=bash_tool").agent
    bad = [("", [{"id": "x", "name": "python", "arguments": "{}"}]),
           ("", [{"id": "y", "name": "bash", "arguments": "{not json"}]),
           ("", calls("echo ok")),
           ("", calls("echo fine", raw={"id": "z", "name": "bash", "arguments": json.dumps({"cmd": "ls"})})),
           ("finished", [])]
    episode, model, terminal = play(config, bad)
    assert terminal.sent == ["echo ok"] and episode.stop_reason == "completed" and episode.malformed_turns == 3
    answers = [r[-1] for r in model.requests[1:]]
    assert "the only tool is 'bash'" in answers[0]["content"] and answers[0]["tool_call_id"] == "x"
    assert "not JSON" in answers[1]["content"]
    assert [m["tool_call_id"] for m in model.requests[4][-2:]] == ["c0", "z"]  # every call is answered
    assert "non-empty string \"command\"" in answers[3]["content"]


def test_the_atif_file_keeps_each_call_with_its_result_and_exports_rebuild_the_calls(compose_cfg):
    config = compose_cfg("agent=bash_tool").agent
    agent = BashToolAgent(config)
    episode, _, _ = play(config, [("Let me look.", calls("cd /srv && ls", "pwd")), ("All done.", [])])
    trajectory = atif.from_episode(episode, session_id="s", agent_name="litecoder-bash_tool", model="m",
                                   started_at="2026-12-06T00:00:00Z", extra={"task_id": "t", "rollout": 0},
                                   tools=agent.tools())
    atif.validate(trajectory)
    step = trajectory["steps"][1]
    assert [c["arguments"] for c in step["tool_calls"]] == [{"command": "cd /srv && ls"}, {"command": "pwd"}]
    assert [r["source_call_id"] for r in step["observation"]["results"]] == ["c0", "c1"]
    messages = atif.tool_messages(trajectory)
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool", "assistant"]
    assert messages[1]["content"] == "Let me look." and json.loads(messages[1]["tool_calls"][0]["function"]["arguments"]) == {"command": "cd /srv && ls"}
    assert atif.tools_of(trajectory) == agent.tools()
    # Harbor's solve.sh replays each call in a subshell from /root, as the calls ran.
    assert "(\ncd /srv && ls\n)\n(\npwd\n)\n" in solve_script(trajectory)


SOLVE_CALLS = [
    "cd /srv/repo && git status --short",
    "cd /srv/repo && printf 'greeting = \"hello, world\"\\ngreeting2 = \"hi\"\\n' > app.py",
    "cd /srv/repo && git add app.py && git commit -qm 'merge feature' && git log --oneline | head -3",
]


class ToolPipeline(Pipeline):
    """The scripted pipeline, with a teacher that answers with native tool calls."""

    def __init__(self):
        super().__init__(teacher=None)

    def __call__(self, path, body):
        if "tools" not in body or "red-team exercise" in body["messages"][0]["content"]:
            return super().__call__(path, body)  # a cheat trial's agent has the tools too: it gives up
        self.teacher_requests.append(body)
        turn = sum(1 for m in body["messages"] if m["role"] == "assistant")
        if turn < len(SOLVE_CALLS):
            call = tool_call("bash", {"command": SOLVE_CALLS[turn]}, f"call_{turn}")
            return 200, completion_body_with([call]), 0
        return 200, completion_body_with([], text="The conflict is resolved and committed."), 0


def completion_body_with(tool_calls, text=""):
    from litecoder.testing.stub_openai import completion_body

    return completion_body([text], chat=True, tool_calls=tool_calls)


@pytest.mark.docker
def test_the_tool_calling_teacher_solves_the_merge_conflict_and_its_rows_carry_tool_calls(compose_cfg, tmp_path):
    try:
        summaries, model = run_pipeline(compose_cfg, tmp_path, None, "agent=bash_tool", pipeline=ToolPipeline())
        assert summaries["trajectory"]["kept"] == 1, summaries
        row = pl.read_parquet(tmp_path / "trajectories.parquet").row(0, named=True)
        assert row["reward"] == 1 and row["stop_reason"] == "completed" and row["commands"] == 3
        # The teacher saw each call's real output in its tool message.
        last = model.teacher_requests[-1]["messages"]
        assert last[2]["role"] == "tool" and "UU app.py" in last[2]["content"]
        assert model.teacher_requests[0]["tools"][0]["function"]["name"] == "bash"

        trajectory_file = tmp_path / row["trajectory"]
        trajectory = json.loads(trajectory_file.read_text())
        atif.validate(trajectory)
        assert trajectory["agent"]["name"] == "litecoder-bash_tool"

        loaded = datasets.load_dataset("json", data_files=str(tmp_path / "sft" / "messages.jsonl"), split="train",
                                       cache_dir=str(tmp_path / "hf-cache"))
        messages = loaded[0]["messages"]
        assert [m["role"] for m in messages] == ["user"] + ["assistant", "tool"] * 3 + ["assistant"]
        call = messages[1]["tool_calls"][0]
        assert call["function"]["name"] == "bash" and json.loads(call["function"]["arguments"])["command"] == SOLVE_CALLS[0]
        assert messages[2]["tool_call_id"] == call["id"] and loaded[0]["tools"][0]["function"]["name"] == "bash"
        sharegpt = datasets.load_dataset("json", data_files=str(tmp_path / "sft" / "sharegpt.jsonl"), split="train",
                                         cache_dir=str(tmp_path / "hf-cache"))
        assert [t["from"] for t in sharegpt[0]["conversations"]] == ["human"] + ["function_call", "observation"] * 3 + ["gpt"]

        (task_id,) = {row["task_id"]}
        assert check_harbor_task(tmp_path / "harbor" / task_id, "bash /solution/solve.sh") == "1"
    finally:
        remove_images(tmp_path)


@pytest.mark.harbor
def test_harbor_reads_the_tool_calling_atif_file(tmp_path, compose_cfg):
    from litecoder.testing.harbor import validate_trajectory

    config = compose_cfg("agent=bash_tool").agent
    agent = BashToolAgent(config)
    episode, _, _ = play(config, [("", calls("ls /root")), ("done", [])])
    trajectory = atif.from_episode(episode, session_id="s", agent_name="litecoder-bash_tool", model="m",
                                   started_at="2026-12-06T00:00:00Z", extra={}, tools=agent.tools())
    validate_trajectory(trajectory)
