"""stage=eval: models of different skill on one task set, compared in a sweep table, on the
real Docker engine with scripted models; the real model runs it in test_vllm.py."""

from __future__ import annotations

import json
import threading

import polars as pl
import pytest

from litecoder import atif
from litecoder.errors import ConfigError
from litecoder.run import execute

from .stub_openai import StubServer, completion_body
from .test_tool_agent import ToolPipeline
from .test_trajectory_stage import SOLVE, Pipeline, remove_images, solving_teacher, terminus

pytestmark = pytest.mark.docker

IDLE_FIRST = terminus("true\n")


class Models:
    """``skilled`` always solves the merge conflict; ``medium`` solves every other episode it
    starts (its first reply picks the branch, later turns follow it); ``idle`` never does."""

    def __init__(self):
        self.lock = threading.Lock()
        self.episodes = 0
        self.models: list[str] = []

    def __call__(self, path, body):
        messages = body["messages"]
        turn = sum(1 for m in messages if m["role"] == "assistant")
        model = body["model"]
        self.models.append(model)
        if model == "idle":
            return 200, completion_body([terminus(complete=True) if turn else IDLE_FIRST], chat=True), 0
        if model == "medium" and turn == 0:
            with self.lock:
                self.episodes += 1
                solves = self.episodes % 2 == 1
            return 200, completion_body([terminus(*SOLVE[:2]) if solves else IDLE_FIRST], chat=True), 0
        if model == "medium" and messages[1]["content"] == IDLE_FIRST:
            return 200, completion_body([terminus(complete=True)], chat=True), 0
        return 200, completion_body([solving_teacher(turn)], chat=True), 0


@pytest.fixture
def task_set(compose_cfg, tmp_path):
    """A run directory with one prepared, certified task (the merge conflict)."""
    tasks = tmp_path / "tasks"
    with StubServer(Pipeline(solving_teacher)) as stub:
        execute(compose_cfg("stage=[sample,judge,environment]", f"backend.url={stub.url}", "sample.num_tasks=1",
                            "sample.n=1", "certify.repeats=1"), tasks)
    yield tasks
    remove_images(tasks)


def test_a_sweep_over_models_compares_their_pass_rates_on_the_same_tasks(cli, task_set):
    with StubServer(Models()) as server:
        result = cli("-m", "stage=eval", "run.name=evals", f"eval.tasks={task_set}", f"backend.url={server.url}",
                     "backend.model=skilled,medium,idle", "eval.rollouts=2", "sandbox.max_containers=1",
                     "run.report=false")
    assert result.returncode == 0, result.stderr[-3000:]
    table = pl.read_csv(cli.outputs / "evals" / "comparison.csv")
    assert table["job"].to_list() == ["backend.model=skilled", "backend.model=medium", "backend.model=idle"]
    assert table["eval_pass_at_1"].to_list() == [1.0, 0.5, 0.0]
    assert table["eval_pass_at_k"].to_list() == [1.0, 1.0, 0.0]
    assert table["eval_tasks"].to_list() == [1, 1, 1] and (table["eval_tokens_per_rollout"] > 0).all()
    header = (cli.outputs / "evals" / "comparison.md").read_text().splitlines()[0]
    assert "pass@1 | pass@k" in header and "accept rate" not in header  # no sampling in an eval sweep

    medium = cli.outputs / "evals" / table.row(1, named=True)["dir"]
    (task,) = pl.read_parquet(medium / "eval.parquet").to_dicts()
    assert (task["model"], task["rollouts"], task["solved"], task["pass_at_1"], task["pass_at_k"]) == ("medium", 2, 1, 0.5, 1.0)
    assert task["category"].startswith("networking/") and task["prompt_tokens"] > 0 and task["wall_s"] > 0
    rollouts = pl.read_parquet(medium / "eval_rollouts.parquet")
    assert sorted(rollouts["status"].to_list()) == ["solved", "unsolved"]
    for path in rollouts["trajectory"]:  # every rollout is recorded, solved or not
        atif.validate(json.loads((medium / path).read_text()))
    summary = json.loads((medium / "summary.json").read_text())["stages"]["eval"]
    assert summary["pass@1"] == 0.5 and summary["pass@2"] == 1.0
    (category,) = summary["by_category"].values()
    assert category == {"tasks": 1, "pass@1": 0.5, "pass@k": 1.0}


def test_eval_reports_per_category_and_resumes_without_repeating(compose_cfg, task_set):
    with StubServer(Models()) as server:
        cfg = compose_cfg("stage=eval", f"backend.url={server.url}", "backend.model=skilled", "eval.rollouts=1")
        execute(cfg, task_set)
        assert "table-eval" in (task_set / "report.html").read_text()  # a run of stage=eval alone ends with its report
        first = len(server.handler.models)
        summaries = execute(compose_cfg("stage=eval", f"backend.url={server.url}", "backend.model=skilled",
                                        "eval.rollouts=2"), task_set)
        assert summaries["eval"]["pass@2"] == 1.0
        assert len(server.handler.models) - first == 4  # only the new rollout ran (4 turns)
    page = (task_set / "report.html").read_text()
    assert "table-eval" in page and "networking/" in page


def test_eval_names_what_is_missing(compose_cfg, tmp_path):
    with pytest.raises(ConfigError, match="no run directory there"):
        execute(compose_cfg("stage=eval", f"eval.tasks={tmp_path / 'nowhere'}"), tmp_path / "run")
    with pytest.raises(ConfigError, match=r"run stage=environment \(or stage=ingest\) first"):
        execute(compose_cfg("stage=eval"), tmp_path / "empty")


def scaffolds(path, body):
    """Solves the merge conflict in either scaffold: Terminus JSON replies or native tool calls."""
    if "tools" in body:
        return ToolPipeline()(path, body)
    turn = sum(1 for m in body["messages"] if m["role"] == "assistant")
    return 200, completion_body([solving_teacher(turn)], chat=True), 0


def test_a_sweep_over_agents_compares_the_scaffolds_on_one_task_set(cli, task_set):
    with StubServer(scaffolds) as server:
        result = cli("-m", "stage=[trajectory,export]", "export.formats=[messages]", "run.name=scaffolds",
                     f"trajectory.tasks={task_set}",
                     f"backend.url={server.url}", "agent=terminus,bash_tool", "run.report=false")
    assert result.returncode == 0, result.stderr[-3000:]
    table = pl.read_csv(cli.outputs / "scaffolds" / "comparison.csv").sort("job")
    assert table["job"].to_list() == ["agent=bash_tool", "agent=terminus"]
    assert table["teacher_pass_rate"].to_list() == [1.0, 1.0]
    assert table["turns_per_rollout"].to_list() == [4.0, 4.0] and (table["tokens_per_kept"] > 0).all()
    header = (cli.outputs / "scaffolds" / "comparison.md").read_text().splitlines()[0]
    assert "teacher pass rate | turns/rollout | tokens/kept trajectory" in header
    bash_tool = cli.outputs / "scaffolds" / table.row(0, named=True)["dir"]
    (row,) = [json.loads(line) for line in (bash_tool / "sft" / "messages.jsonl").read_text().splitlines()]
    assert row["messages"][1]["tool_calls"][0]["function"]["name"] == "bash"
