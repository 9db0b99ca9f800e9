"""The judge stage against a scripted model: verdicts, failures with raw text, duplicates,
targets, budgets, resuming and stale results."""

from __future__ import annotations

import json
import threading

import polars as pl
import pytest

from litecoder.errors import BackendError
from litecoder.run import execute
from litecoder.store import RunStore

from .stub_openai import StubServer, completion_body

FAST = ["backend.retry_initial_wait=0.01", "backend.retry_max_wait=0.05"]
CRITERIA = ["complexity_balance", "clarity", "resource_availability", "verifiability", "safety"]
FOUR_SUBTOPICS = "domain.subtopics=[{name: a}, {name: b}, {name: c}, {name: d}]"


def scores(value: int, **overrides: int) -> str:
    return json.dumps({c: {"rationale": f"{c} looks {value}", "score": overrides.get(c, value)} for c in CRITERIA})


class Model:
    """Hands out scripted task texts for sampling and scripted replies for judging."""

    def __init__(self, tasks, reply):
        self.tasks = list(tasks)
        self.reply = reply
        self.position = 0
        self.lock = threading.Lock()
        self.judged: list[str] = []

    def __call__(self, path, body):
        with self.lock:
            if path.endswith("chat/completions"):
                task = body["messages"][1]["content"]
                self.judged.append(task)
                reply = self.reply(task, self.judged.count(task))
                return (200, completion_body([reply], chat=True), 0) if isinstance(reply, str) else reply
            texts = []
            for _ in range(int(body.get("n", 1))):
                texts.append(self.tasks[self.position % len(self.tasks)] if self.tasks else f"task {self.position}")
                self.position += 1
            return 200, completion_body(texts), 0


def by_keyword(task: str, attempt: int) -> str:
    if "GOOD" in task:
        return scores(5)
    if "UNSAFE" in task:
        return scores(5, safety=1)
    return scores(1)


def run_pipeline(compose_cfg, run_dir, server, *overrides):
    cfg = compose_cfg("stage=[sample,judge]", f"backend.url={server.url}", *FAST, FOUR_SUBTOPICS, *overrides)
    return execute(cfg, run_dir)


def read(run_dir, name):
    return pl.read_parquet(run_dir / name)


def test_verdicts_scores_and_feasible_tasks(compose_cfg, tmp_path):
    texts = [f"GOOD task {i}: build the project in /srv/app and write /srv/app/REPORT.md" for i in range(3)]
    texts += ["BAD task: make coffee with the printer", "UNSAFE task: wipe the host disks from inside the container"]
    model = Model(texts + [f"GOOD second batch {i} compiling libfoo under /opt/src then testing it" for i in range(3)], by_keyword)
    with StubServer(model) as server:
        summaries = run_pipeline(compose_cfg, tmp_path, server, "sample.num_tasks=8", "sample.n=2")
        judge_bodies = [b for p, b, _ in server.requests if p.endswith("chat/completions")]
    judgments = read(tmp_path, "judgments.parquet")
    assert len(judgments) == 8 and judgments["task_id"].n_unique() == 8
    verdicts = dict(judgments.group_by("verdict").len().iter_rows())
    assert verdicts == {"accepted": 6, "rejected": 2}
    unsafe = judgments.filter(pl.col("text").str.contains("UNSAFE")).row(0, named=True)
    assert unsafe["verdict"] == "rejected" and "safety=1<3" in unsafe["reason"]
    good = judgments.filter(pl.col("verdict") == "accepted").row(0, named=True)
    assert [s["criterion"] for s in good["scores"]] == CRITERIA and good["aggregate"] == 5.0
    assert all(s["rationale"] for s in good["scores"]) and good["prompt_tokens"] > 0 and good["completion_tokens"] > 0
    feasible = read(tmp_path, "feasible.parquet")
    assert len(feasible) == 6 and feasible["text"].str.contains("GOOD").all()
    assert set(feasible.columns) >= {"id", "text", "domain", "subtopic", "aggregate", "scores"}
    # Constrained decoding: the schema goes with every judge request.
    schema = judge_bodies[0]["response_format"]["json_schema"]["schema"]
    assert schema["required"] == CRITERIA
    assert summaries["judge"]["accepted"] == 6


def test_a_run_whose_judge_keeps_nothing_ends_by_saying_what_to_change(compose_cfg, tmp_path, capfd):
    with StubServer(Model(["BAD task: make coffee"] * 4, by_keyword)) as server:
        run_pipeline(compose_cfg, tmp_path, server, "sample.num_tasks=4", "sample.n=2", "dedup.exact=false", "dedup.near=false")
    err = capfd.readouterr().err
    assert "the judge kept none of 4 tasks" in err and "backend=openai" in err and "models-and-backends" in err


@pytest.mark.parametrize(
    "reply, fragment",
    [
        ("this is not JSON at all", "no JSON object"),
        ("", "empty reply"),
        ("{" + "x" * 30_000 + "}", "longer than the limit"),
        (json.dumps({"complexity_balance": {"score": 9}}), "does not fit the schema"),
        (scores(7), "does not fit the schema"),
    ],
    ids=["malformed", "empty", "oversized", "incomplete", "out-of-scale"],
)
def test_replies_that_never_parse_end_failed_with_their_raw_text(compose_cfg, tmp_path, reply, fragment):
    model = Model(["GOOD task: configure cron in /etc/cron.d"], lambda task, attempt: reply)
    with StubServer(model) as server:
        run_pipeline(compose_cfg, tmp_path, server, "sample.num_tasks=1", "sample.n=1")
    judgments = read(tmp_path, "judgments.parquet")
    row = judgments.row(0, named=True)
    assert row["verdict"] == "failed" and fragment in row["reason"]
    assert row["raw"] == reply and row["attempts"] == 3
    assert len(model.judged) == 3  # bounded retries
    assert len(read(tmp_path, "feasible.parquet")) == 0


def test_a_reply_that_parses_on_retry_counts_once(compose_cfg, tmp_path):
    model = Model(["GOOD task: rotate the logs"], lambda task, attempt: "```json\nnope```" if attempt == 1 else f"Sure!\n```json\n{scores(5)}\n```")
    with StubServer(model) as server:
        run_pipeline(compose_cfg, tmp_path, server, "sample.num_tasks=1", "sample.n=1")
    row = read(tmp_path, "judgments.parquet").row(0, named=True)
    assert row["verdict"] == "accepted" and row["attempts"] == 2


def test_duplicates_and_truncated_tasks_are_recorded_without_judging(compose_cfg, tmp_path):
    base = "GOOD task: set up nginx as a reverse proxy for two local backends on ports 8001 and 8002 and write the config to /etc/nginx/conf.d/proxy.conf"
    texts = [base, base.upper() + "!", base.replace("8002", "8003"), "GOOD task: bisect the regression in /repo with git bisect and a test script"]
    model = Model(texts, by_keyword)
    with StubServer(model) as server:
        # One request at a time, so the scripted texts arrive in request order.
        run_pipeline(compose_cfg, tmp_path, server, "sample.num_tasks=4", "sample.n=1", "backend.max_in_flight=1")
    judgments = read(tmp_path, "judgments.parquet").sort("task_id")
    tasks = read(tmp_path, "tasks.parquet")
    first_id = tasks.filter(pl.col("request_index") == 0)["id"][0]
    dups = judgments.filter(pl.col("verdict") == "duplicate")
    assert sorted(dups["duplicate_kind"].to_list()) == ["exact", "near"]
    assert (dups["duplicate_of"] == first_id).all()
    assert len(model.judged) == 2  # only the two distinct tasks reach the judge


def test_new_criteria_come_from_config_alone(compose_cfg, tmp_path):
    extra = "judge.criteria=[{name: novelty, description: 'Not a textbook exercise.'}, {name: safety, description: 'Harmless.'}]"

    def reply(task, attempt):
        return json.dumps({"novelty": {"rationale": "fresh", "score": 4}, "safety": {"rationale": "fine", "score": 5}})

    model = Model(["GOOD task: write a tool"], reply)
    with StubServer(model) as server:
        run_pipeline(compose_cfg, tmp_path, server, "sample.num_tasks=1", "sample.n=1", extra)
        body = [b for p, b, _ in server.requests if p.endswith("chat/completions")][0]
    assert body["response_format"]["json_schema"]["schema"]["required"] == ["novelty", "safety"]
    assert "novelty (1-5): Not a textbook exercise." in body["messages"][0]["content"]
    row = read(tmp_path, "judgments.parquet").row(0, named=True)
    assert row["verdict"] == "accepted" and row["aggregate"] == 4.5


def test_target_accepted_samples_in_rounds_and_stops_exactly(compose_cfg, tmp_path, capfd):
    texts = [f"{'GOOD' if i % 3 == 0 else 'BAD'} distinct task number {i} about service {i * 7}" for i in range(200)]
    model = Model(texts, by_keyword)
    with StubServer(model) as server:
        run_pipeline(compose_cfg, tmp_path, server, "sample.num_tasks=4", "sample.n=2", "sample.target_accepted=5")
    err = capfd.readouterr().err
    assert "target reached: 5 accepted (sample.target_accepted=5)" in err
    judgments = read(tmp_path, "judgments.parquet")
    assert (judgments["verdict"] == "accepted").sum() == 5
    store = RunStore(tmp_path / "store.sqlite")
    assert int(store.get_meta("rounds")) >= 4
    store.close()


def test_a_budget_ends_the_rounds_and_says_which(compose_cfg, tmp_path, capfd):
    model = Model([f"BAD task {i} with its own words {i * 13}" for i in range(500)], by_keyword)
    with StubServer(model) as server:
        run_pipeline(compose_cfg, tmp_path, server, "sample.num_tasks=4", "sample.n=2", "sample.target_accepted=3",
                     "budget.max_requests=20")
    err = capfd.readouterr().err
    assert "budget reached: budget.max_requests=20" in err and "0 of 3 accepted" in err


def test_rerunning_continues_and_a_config_change_redoes_only_its_stage(compose_cfg, tmp_path, capfd):
    texts = [f"GOOD unique task {i} deploying service {i * 11} on port {9000 + i}" for i in range(50)]
    model = Model(texts, by_keyword)
    with StubServer(model) as server:
        run_pipeline(compose_cfg, tmp_path, server, "sample.num_tasks=8", "sample.n=2")
        first = len(server.requests)
        run_pipeline(compose_cfg, tmp_path, server, "sample.num_tasks=8", "sample.n=2")
        assert len(server.requests) == first  # nothing redone
        run_pipeline(compose_cfg, tmp_path, server, "sample.num_tasks=8", "sample.n=2", "judge.threshold=4.5")
        redone = server.requests[first:]
    assert redone and all(path.endswith("chat/completions") for path, _, _ in redone)  # sampling kept
    assert len(redone) == 8
    judgments = read(tmp_path, "judgments.parquet")
    assert len(judgments) == 8 and judgments["task_id"].n_unique() == 8
    assert "8 sampled = 8 accepted + 0 rejected + 0 duplicate + 0 failed (0 sampling, 0 judging) + 0 not judged yet" in capfd.readouterr().err


def test_failed_requests_are_per_item_and_retried_on_rerun(compose_cfg, tmp_path):
    calls = {"n": 0}

    def flaky(task, attempt):
        calls["n"] += 1
        return (400, {"error": "context too long"}, 0) if calls["n"] == 2 else scores(5)

    model = Model([f"GOOD task {i} about {i * 17} widgets" for i in range(20)], flaky)
    with StubServer(model) as server:
        run_pipeline(compose_cfg, tmp_path, server, "sample.num_tasks=4", "sample.n=1", "backend.max_in_flight=1")
        assert dict(read(tmp_path, "judgments.parquet").group_by("verdict").len().iter_rows()) == {"accepted": 3, "failed": 1}
        run_pipeline(compose_cfg, tmp_path, server, "sample.num_tasks=4", "sample.n=1", "backend.max_in_flight=1")
    assert dict(read(tmp_path, "judgments.parquet").group_by("verdict").len().iter_rows()) == {"accepted": 4}


def test_a_judge_server_that_is_down_aborts_with_one_clear_error(compose_cfg, tmp_path):
    model = Model([f"GOOD task {i} with words {i * 3}" for i in range(20)], lambda task, attempt: (503, {"error": "down"}, 0))
    with StubServer(model) as server:
        with pytest.raises(BackendError, match="judge requests keep failing.*HTTP 503"):
            run_pipeline(compose_cfg, tmp_path, server, "sample.num_tasks=4", "sample.n=1", "backend.max_retries=0")
    judgments = read(tmp_path, "judgments.parquet")
    assert (judgments["verdict"] == "failed").all() and len(judgments) == 4
