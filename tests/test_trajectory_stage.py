"""Trajectory and export stages on the real Docker engine with a scripted teacher (a test
double that answers in the Terminus-2 format); the real model is in test_vllm.py."""

from __future__ import annotations

import json
import subprocess
import tomllib

import datasets
import polars as pl
import pytest

from litecoder import atif
from litecoder.run import execute
from litecoder.sandboxes.docker import DockerSandbox, DockerSandboxConfig
from litecoder.sandboxes.names import run_id

from .stub_openai import StubServer, completion_body
from .test_environment_stage import (ACCEPT, DOES_NOTHING, Adversaries, SETUP_CONFLICT, SOLUTION, TASK, TIGHT_VERIFIER,
                                     kill_while_working_then_resume, leftovers, step, wrong_reply)
from .test_plugin_guide import guide_module

pytestmark = pytest.mark.docker

SOLVE = [
    "cd /srv/repo\n",
    "git status --short\n",
    "printf 'greeting = \"hello, world\"\\ngreeting2 = \"hi\"\\n' > app.py\n",
    "git add app.py && git commit -qm 'merge feature'\n",
    "git log --oneline | head -3\n",
]


def terminus(*commands, complete=False, duration=0.3):
    return json.dumps({"analysis": "checking the repository", "plan": "resolve and commit",
                       "commands": [{"keystrokes": c, "duration": duration} for c in commands], "task_complete": complete})


def solving_teacher(turn):
    return [terminus(*SOLVE[:2]), terminus(*SOLVE[2:]), terminus(complete=True), terminus(complete=True)][min(turn, 3)]


def looping_teacher(turn):
    return terminus("git status\n")


def environment_script(turn):
    """The merge conflict of test_environment_stage, plus a deleted file the export must keep deleted."""
    if turn == 0:
        return step([*SETUP_CONFLICT, "rm /etc/issue.net"], analysis="build a repository with a conflicted merge")
    return step(ready=True, verifier=TIGHT_VERIFIER, solution=SOLUTION, analysis="the conflict is in place",
                outputs=["/srv/repo"])


class Pipeline(Adversaries):
    """Plays sampler, judge, environment agent (its wrong solutions, review and cheat trials),
    teacher and the trajectory reviewer, each from its own script."""

    def __init__(self, teacher, environment=environment_script, **adversaries):
        super().__init__(**adversaries)
        self.teacher = teacher
        self.environment = environment
        self.teacher_requests: list[dict] = []

    def __call__(self, path, body):
        if not path.endswith("chat/completions"):
            return 200, completion_body([TASK] * int(body.get("n", 1))), 0
        first = body["messages"][0]["content"]
        turn = sum(1 for m in body["messages"] if m["role"] == "assistant")
        if "task proposals" in first:
            return 200, completion_body([ACCEPT], chat=True), 0
        if "You prepare Linux containers" in first:
            return 200, completion_body([self.environment(turn)], chat=True), 0
        if "WRONG solutions" in first:
            return 200, completion_body([wrong_reply(DOES_NOTHING)], chat=True), 0
        adversary = self.answer(body)
        if adversary is not None:
            return 200, completion_body([adversary], chat=True), 0
        self.teacher_requests.append(body)
        return 200, completion_body([self.teacher(turn)], chat=True), 0


def run_pipeline(compose_cfg, tmp_path, teacher, *overrides, environment=environment_script, pipeline=None):
    model = pipeline or Pipeline(teacher, environment)
    with StubServer(model) as server:
        # certification has its own tests (test_environment_stage); here one run per state does
        cfg = compose_cfg("stage=all", f"backend.url={server.url}", "sample.num_tasks=1", "sample.n=1",
                          "backend.retry_initial_wait=0.01", "sandbox.max_containers=2", "certify.repeats=1", *overrides)
        summaries = execute(cfg, tmp_path)
    assert leftovers(run_id(tmp_path)) == []
    return summaries, model


def remove_images(run_dir):
    frame = pl.read_parquet(run_dir / "environments.parquet")
    for image in frame["image"].drop_nulls():
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True)


def test_a_scripted_teacher_solves_the_merge_conflict_and_every_format_is_written(compose_cfg, tmp_path):
    try:
        summaries, model = run_pipeline(compose_cfg, tmp_path, solving_teacher, "trajectory.rollouts=2")
        assert summaries["trajectory"]["kept"] == 2 and summaries["trajectory"]["pass@2"] == 1.0
        rollouts = pl.read_parquet(tmp_path / "trajectories.parquet")
        assert rollouts["reward"].to_list() == [1, 1] and set(rollouts["status"]) == {"kept"}
        row = rollouts.row(0, named=True)
        assert row["stop_reason"] == "completed" and row["turns"] == 4 and row["commands"] == len(SOLVE)
        assert row["prompt_tokens"] > 0 and row["completion_tokens"] > 0 and row["wall_s"] > 0
        tasks = pl.read_parquet(tmp_path / "trajectory_tasks.parquet")
        assert tasks.select("rollouts", "solved", "pass_at_1", "pass_at_k", "difficulty").row(0) == (2, 2, 1.0, 1.0, "easy")

        # The teacher saw real terminal output: the conflict, then its own commit.
        by_turn = {}
        for body in model.teacher_requests:
            by_turn.setdefault(sum(m["role"] == "assistant" for m in body["messages"]), body["messages"])
        assert "Resolve the merge conflict" in by_turn[0][0]["content"]
        assert "UU app.py" in by_turn[1][-1]["content"]
        assert "merge feature" in by_turn[2][-1]["content"]

        # ATIF: the fields of FORMATS.md, per-step token metrics.
        trajectory = json.loads((tmp_path / row["trajectory"]).read_text())
        atif.validate(trajectory)
        assert trajectory["schema_version"].startswith("ATIF-v1.") and trajectory["agent"]["name"] == "litecoder-terminus"
        agent_steps = [s for s in trajectory["steps"] if s["source"] == "agent"]
        assert len(agent_steps) == 4 and all(s["metrics"]["completion_tokens"] > 0 for s in agent_steps)
        assert trajectory["extra"]["reward"] == 1

        # ShareGPT and messages: same turns, loadable by datasets and polars.
        sharegpt = [json.loads(line) for line in (tmp_path / "sft" / "sharegpt.jsonl").read_text().splitlines()]
        assert len(sharegpt) == 2
        conversation = sharegpt[0]["conversations"]
        assert [c["from"] for c in conversation] == ["human", "gpt"] * 4
        assert json.loads(conversation[1]["value"])["commands"][0]["keystrokes"] == SOLVE[0]
        assert "UU app.py" in conversation[2]["value"]
        messages = pl.read_ndjson(tmp_path / "sft" / "messages.jsonl")
        assert messages["messages"].list.len().to_list() == [8, 8]
        assert pl.read_ndjson(tmp_path / "sft" / "sharegpt.jsonl").columns == ["id", "conversations"]
        for name, column in (("sharegpt", "conversations"), ("messages", "messages")):
            loaded = datasets.load_dataset("json", data_files=str(tmp_path / "sft" / f"{name}.jsonl"), split="train",
                                           cache_dir=str(tmp_path / "hf-cache"))
            assert loaded.num_rows == 2 and len(loaded[0][column]) == 8

        # Harbor: one directory for the task, checked by building it and running solve.sh.
        (task_id,) = set(rollouts["task_id"])
        harbor = tmp_path / "harbor" / task_id
        assert (harbor / "instruction.md").read_text().strip() == TASK
        toml = tomllib.loads((harbor / "task.toml").read_text())
        assert toml["schema_version"] == "1.4" and toml["task"]["name"] == f"litecoder/{task_id}"
        assert toml["environment"]["network_mode"] == "no-network" and toml["verifier"]["timeout_sec"] > 0
        assert isinstance(toml["environment"]["cpus"], int) and "allow_internet" not in toml["environment"]
        dockerfile = (harbor / "environment" / "Dockerfile").read_text()
        assert "FROM debian:bookworm" in dockerfile and "RUN rm -rf -- '/etc/issue.net'" in dockerfile
        (index,) = [json.loads(line) for line in (tmp_path / "harbor" / "index.jsonl").read_text().splitlines()]
        assert index["status"] == "exported" and index["solution_check"] == "passed", index
        assert check_harbor_task(harbor, "bash /solution/solve.sh") == "1"
        assert check_harbor_task(harbor, "true") == "0"  # the starting state alone is not solved
        # The rebuilt starting state is the prepared one: the conflict, the git identity, the deletion.
        assert check_harbor_task(harbor, "cd /srv/repo && git status --short | grep -q '^UU app.py' && "
                                 "git config user.name | grep -qx Dev && ! test -e /etc/issue.net && "
                                 "printf 'a = \"hello, world\"\\nb = \"hi\"\\n' > app.py && git commit -qam merged") == "1"
        assert toml["metadata"]["difficulty"] == "easy" and toml["metadata"]["certificate"]["certified"]
        page = (tmp_path / "report.html").read_text()
        assert "chart-certification" in page and "table-difficulty" in page

        # RL wants tasks the teacher neither always nor never solves: this one (pass rate 1) is left out.
        execute(compose_cfg("stage=export", "export.formats=[harbor]", "export.harbor.pass_rate=[0.1,0.9]"), tmp_path)
        (index,) = [json.loads(line) for line in (tmp_path / "harbor" / "index.jsonl").read_text().splitlines()]
        assert index["status"] == "skipped" and index["detail"] == "pass rate 1 outside export.harbor.pass_rate [0.1, 0.9]"
        assert not (tmp_path / "harbor" / task_id).exists()
    finally:
        remove_images(tmp_path)


def check_harbor_task(directory, solve_command):
    """Build the task's Dockerfile, run ``solve_command`` and then tests/test.sh; the reward."""
    tag = f"litecoder-test-harbor:{directory.name}"
    build = subprocess.run(["docker", "build", "-q", "-t", tag, str(directory / "environment")], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    sandbox = DockerSandbox(DockerSandboxConfig(), "test-harbor-check")
    try:
        session = sandbox.open("check", image=tag)
        session.write_files({"/solution/solve.sh": (directory / "solution" / "solve.sh").read_text()}, mode=0o755)
        session.exec(solve_command, timeout=120)
        session.write_files({f"/tests/{p.name}": p.read_text() for p in (directory / "tests").iterdir()}, mode=0o755)
        assert session.exec("bash /tests/test.sh", timeout=120).ok
        return session.read_file("/logs/verifier/reward.txt").decode().strip()
    finally:
        sandbox.close()
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


def test_a_looping_teacher_is_dropped_with_the_reason(compose_cfg, tmp_path, plugins):
    try:
        summaries, model = run_pipeline(compose_cfg, tmp_path, looping_teacher, "agent.max_turns=8",
                                        "agent.loop_limit=null", "run.progress=true")
        row = pl.read_parquet(tmp_path / "trajectories.parquet").row(0, named=True)
        assert row["status"] == "dropped" and row["stop_reason"] == "max_turns" and row["reward"] == 0
        assert row["repeated_commands"] == 8
        assert any(f.startswith("looping: the same commands 8 times in a row") for f in row["filters"])
        assert row["reason"] == "; ".join(row["filters"])
        assert (tmp_path / "sft" / "sharegpt.jsonl").read_text() == ""
        # The task is still an RL environment: unsolved by the teacher, it ships its reference solution.
        (task,) = [p for p in (tmp_path / "harbor").iterdir() if p.is_dir()]
        metadata = tomllib.loads((task / "task.toml").read_text())["metadata"]
        assert (metadata["difficulty"], metadata["teacher_pass_rate"], metadata["solution"]) == (
            "unsolved", 0.0, "reference solution")
        assert "The reference solution of task" in (task / "solution" / "solve.sh").read_text()
        # Relaxing the filters re-labels the rollout without running it again.
        requests = len(model.teacher_requests)
        plugins.register(guide_module(), "guide-examples")  # its exporter
        with StubServer(Pipeline(looping_teacher)) as server:
            cfg = compose_cfg("stage=[trajectory,export]", f"backend.url={server.url}", "sandbox.max_containers=2",
                              "agent.max_turns=8", "agent.loop_limit=null", "trajectory.filters.max_repeats=null",
                              "trajectory.filters.unsuccessful=false", "export.formats=[sharegpt,rewards]", "export.rewards.path=kept-rewards.json")
            summaries = execute(cfg, tmp_path)
            assert server.requests == []
        assert summaries["export"] == {"sharegpt_rows": 1, "rewards_rows": 1}
        assert json.loads((tmp_path / "kept-rewards.json").read_text())[0]["reward"] == 0
        assert requests == 8
        row = pl.read_parquet(tmp_path / "trajectories.parquet").row(0, named=True)
        assert row["status"] == "kept" and row["filters"] == []
        assert len((tmp_path / "sft" / "sharegpt.jsonl").read_text().splitlines()) == 1
    finally:
        remove_images(tmp_path)


def closing_teacher(keystrokes):
    """Types ``keystrokes`` first, then looks at the terminal and declares the task done."""
    def teacher(turn):
        return [terminus(keystrokes, duration=1), terminus("echo still-$((1 + 1))\n"), terminus(complete=True),
                terminus(complete=True)][min(turn, 3)]
    return teacher


@pytest.mark.parametrize("keystrokes, closes", [
    ("tmux kill-server\n", True),
    ("kill -9 $PPID\n", True),  # the loop that restarts the shell: the pane, and so the session, ends
    ("exit\n", False),  # only the shell ends, and the loop starts a new one
    ("kill -9 $$\n", False),
])
def test_a_teacher_that_closes_its_terminal_ends_its_episode_and_is_not_retried(compose_cfg, tmp_path,
                                                                                 keystrokes, closes):
    def environment(turn):  # the environment agent types the same and is not troubled by it
        return environment_script(turn) if turn else step([keystrokes.strip(), *SETUP_CONFLICT])

    try:
        summaries, model = run_pipeline(compose_cfg, tmp_path, closing_teacher(keystrokes),
                                        "stage=[sample,judge,environment,trajectory]", environment=environment)
        assert summaries["environment"]["ready"] == 1
        row = pl.read_parquet(tmp_path / "trajectories.parquet").row(0, named=True)
        # The verifier ran after the episode; the unsolved conflict is reward 0, so the filters drop it.
        assert row["status"] == "dropped" and row["reward"] == 0 and row["verifier_exit_code"] == 1
        assert row["reason"] == "unsuccessful: the verifier exited 1 (reward 0)"
        if closes:
            assert row["stop_reason"] == "terminal_closed" and row["turns"] == 1
            assert "tmux session is gone" in row["stop_detail"]
        else:
            assert row["stop_reason"] == "completed" and row["turns"] == 4
            assert any("still-2" in body["messages"][-1]["content"] for body in model.teacher_requests)
        # A resumed run has nothing to redo: the rollout is finished, not failed.
        with StubServer(Pipeline(closing_teacher(keystrokes))) as server:
            summaries = execute(compose_cfg("stage=trajectory", f"backend.url={server.url}"), tmp_path)
            assert server.requests == []
        assert summaries["trajectory"]["dropped"] == 1 and "failed" not in summaries["trajectory"]
        assert pl.read_parquet(tmp_path / "trajectories.parquet").row(0, named=True)["finished_at"] == row["finished_at"]
    finally:
        remove_images(tmp_path)


def test_a_missing_image_and_a_dead_teacher_end_in_recorded_failures(compose_cfg, tmp_path):
    try:
        run_pipeline(compose_cfg, tmp_path, solving_teacher, "stage=[sample,judge,environment]")
        remove_images(tmp_path)
        with StubServer(lambda path, body: (500, {"error": "down"}, 0)) as server:
            cfg = compose_cfg("stage=trajectory", f"backend.url={server.url}", "backend.max_retries=0")
            execute(cfg, tmp_path)
        row = pl.read_parquet(tmp_path / "trajectories.parquet").row(0, named=True)
        assert row["status"] == "failed" and "cannot start a container" in row["reason"]
        assert leftovers(run_id(tmp_path)) == []
    finally:
        remove_images(tmp_path)


def test_a_killed_trajectory_run_resumes_without_losing_or_repeating_a_rollout(compose_cfg, tmp_path):
    """SIGKILL while rollouts are running, then the same command again: the containers the
    killed run left are removed, and every rollout is recorded exactly once."""
    import sys

    def slow_teacher(turn):
        steps = [terminus(*SOLVE[:2], duration=2), terminus(*SOLVE[2:], duration=2), terminus(complete=True)]
        return steps[min(turn, 2)]

    run_dir = tmp_path / "killed-traj"
    try:
        with StubServer(Pipeline(slow_teacher)) as server:
            execute(compose_cfg("stage=[sample,judge,environment]", f"backend.url={server.url}", "sample.num_tasks=1",
                                "sample.n=1"), run_dir)
            args = [sys.executable, "-m", "litecoder", "stage=[trajectory,export]", "run.name=killed-traj",
                    f"run.root={tmp_path}", f"backend.url={server.url}", "trajectory.rollouts=3",
                    "sandbox.max_containers=3", "export.harbor.check_solution=false"]
            kill_while_working_then_resume(args, run_id(run_dir))
        assert leftovers(run_id(run_dir)) == []
        rollouts = pl.read_parquet(run_dir / "trajectories.parquet")
        assert sorted(rollouts["rollout"].to_list()) == [0, 1, 2]
        assert set(rollouts["status"]) == {"kept"} and set(rollouts["stop_reason"]) == {"completed"}
        assert len((run_dir / "sft" / "sharegpt.jsonl").read_text().splitlines()) == 3
        assert sorted(p.name for p in (run_dir / "trajectories").iterdir()) == sorted(f"{r}.json" for r in rollouts["rollout_id"])
    finally:
        remove_images(run_dir)


def test_a_task_without_starting_state_exports_a_dockerfile_without_an_archive(compose_cfg, tmp_path):
    def nothing_to_prepare(turn):
        return step(ready=True, verifier="grep -qx 42 /root/answer.txt", solution="echo 42 > /root/answer.txt\n",
                    analysis="no starting state needed")

    def answer(turn):
        return [terminus("echo 42 > /root/answer.txt\n"), terminus(complete=True)][min(turn, 1)]

    try:
        run_pipeline(compose_cfg, tmp_path, answer, environment=nothing_to_prepare)
        (task_dir,) = [p for p in (tmp_path / "harbor").iterdir() if p.is_dir()]
        assert "ADD" not in (task_dir / "environment" / "Dockerfile").read_text()
        assert not (task_dir / "environment" / "state.tar").exists()
        (index,) = [json.loads(line) for line in (tmp_path / "harbor" / "index.jsonl").read_text().splitlines()]
        assert index["solution_check"] == "passed", index
    finally:
        remove_images(tmp_path)
