"""Sweeps: a comparison table across jobs, failed jobs recorded, one model server for all jobs."""

from __future__ import annotations

import json
import threading

import polars as pl
import pytest

from litecoder.backends.base import SHARED_SERVERS_ENV, shared_server
from litecoder.backends.vllm import launch_key
from litecoder.budget import apply_prices
from litecoder.errors import ConfigError

from .conftest import run_cli
from .stub_openai import StubServer, completion_body
from .test_judge_stage import CRITERIA, FAST, scores
from .test_vllm import EAGER, managed_port, port_open, server_processes

VARIANT_YIELD = {"v1": 1, "v2": 0, "v3": 4}  # accepted tasks out of 4, by prompt variant


class VariantModel:
    """Samples tasks marked with the prompt variant that produced them; accepts by variant."""

    def __init__(self):
        self.lock = threading.Lock()
        self.count = 0

    def __call__(self, path, body):
        with self.lock:
            if path.endswith("chat/completions"):
                task = body["messages"][1]["content"]
                variant, index = task.split()[1], int(task.split()[3])
                good = index < VARIANT_YIELD[variant]
                return 200, completion_body([scores(5 if good else 1)], chat=True), 0
            prompt = body["prompt"]
            variant = "v3" if "stuck in" in prompt else "v2" if "senior engineer" in prompt else "v1"
            texts = []
            for _ in range(int(body.get("n", 1))):
                texts.append(f"variant {variant} task {self.count % 4} number {self.count}: configure the thing")
                self.count += 1
            return 200, completion_body(texts), 0


def test_a_prompt_sweep_writes_a_comparison_table(cli):
    with StubServer(VariantModel()) as server:
        result = cli("-m", "stage=[sample,judge]", "run.name=sweep", "prompts=v1,v2,v3", "domain=networking",
                     f"backend.url={server.url}", "backend.model=stub-model", "backend.max_in_flight=1",
                     "sample.num_tasks=4", "sample.n=1", "+prices.stub-model={input_per_mtok:2,output_per_mtok:10}",
                     *FAST)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = cli.outputs / "sweep"
    table = pl.read_csv(sweep / "comparison.csv")
    assert table["job"].to_list() == ["prompts=v3", "prompts=v1", "prompts=v2"]  # best acceptance first
    assert table["sampled"].to_list() == [4, 4, 4]
    assert table["accepted"].to_list() == [4, 1, 0]
    assert table["acceptance_rate"].to_list() == [1.0, 0.25, 0.0]
    assert table["status"].to_list() == ["finished"] * 3
    for criterion in CRITERIA:
        assert table[f"mean_{criterion}"].to_list() == [5.0, 2.0, 1.0]
    v3 = table.row(0, named=True)
    assert v3["tokens"] > 0 and v3["tokens_per_accepted"] == pytest.approx(v3["tokens"] / 4)
    assert v3["cost_usd"] > 0 and v3["cost_per_accepted"] == pytest.approx(v3["cost_usd"] / 4)
    assert table.row(2, named=True)["tokens_per_accepted"] is None
    markdown = (sweep / "comparison.md").read_text()
    assert markdown.splitlines()[0].startswith("| job | status | sampled | dup rate | accepted | accept rate |")
    assert "| prompts=v3 | finished | 4 | 0.0% | 4 | 100.0% |" in markdown
    assert markdown in result.stderr  # printed at the end of the sweep as well
    summary = json.loads((sweep / v3["dir"] / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["stages"]["judge"]["accepted"] == 4
    assert "spent in judge: 4 requests" in result.stderr and "per accepted task:" in result.stderr

    rebuilt = run_cli("--compare", str(sweep), cwd=cli.outputs)  # the table can be rebuilt from the runs at any time
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert rebuilt.stdout == markdown


def test_a_failing_job_is_recorded_and_the_sweep_goes_on(cli):
    with StubServer(VariantModel()) as server:
        result = cli("-m", "stage=[sample,judge]", "run.name=sweep", "prompts=v3", "judge.aggregation=median,mean",
                     f"backend.url={server.url}", "backend.max_in_flight=1", "sample.num_tasks=4", "sample.n=1", *FAST)
    assert result.returncode == 1
    assert "error in job 0" in result.stderr and "judge.aggregation='median'" in result.stderr
    assert "1 job(s) failed" in result.stderr
    table = pl.read_csv(cli.outputs / "sweep" / "comparison.csv")
    by_job = {row["job"]: row for row in table.iter_rows(named=True)}
    assert by_job["judge.aggregation=mean"]["status"] == "finished"
    assert by_job["judge.aggregation=mean"]["accepted"] == 4
    failed = by_job["judge.aggregation=median"]
    assert failed["status"] == "failed" and failed["sampled"] == 4
    summary = json.loads((cli.outputs / "sweep" / failed["dir"] / "summary.json").read_text())
    assert "is not one of mean, min" in summary["error"]


def test_jobs_find_the_server_the_sweep_started_for_their_config(compose_cfg, monkeypatch):
    base = compose_cfg().backend
    other = compose_cfg("backend.max_model_len=2048").backend
    assert launch_key(base) == launch_key(compose_cfg("backend.max_in_flight=3", "prompts=v2").backend)
    assert launch_key(base) != launch_key(other)
    monkeypatch.setenv(SHARED_SERVERS_ENV, json.dumps({launch_key(base): "http://127.0.0.1:1234"}))
    assert shared_server(launch_key(base)) == "http://127.0.0.1:1234"
    assert shared_server(launch_key(other)) is None  # a server with other settings is started by the job itself


def test_prices_per_model_fill_the_backends_that_set_none(compose_cfg):
    cfg = compose_cfg("backend.model=m1", "+prices.m1={input_per_mtok:1.5,output_per_mtok:6}",
                      "backend@judge.backend=openai", "judge.backend.model=m2", "judge.backend.price_input_per_mtok=9")
    assert apply_prices(cfg, ("sample", "judge")) == []
    assert (cfg.backend.price_input_per_mtok, cfg.backend.price_output_per_mtok) == (1.5, 6.0)
    assert cfg.judge.backend.price_input_per_mtok == 9  # a backend's own price wins
    assert apply_prices(compose_cfg("backend.model=m3"), ("sample",)) == ["m3"]
    with pytest.raises(ConfigError, match="prices.m1 must be.*Key 'input' not in 'PriceConfig'"):
        apply_prices(compose_cfg("backend.model=m1", "+prices.m1={input:1}"), ())
    with pytest.raises(ConfigError, match="prices.unused must be"):  # checked even if no backend uses it
        apply_prices(compose_cfg("backend.model=m1", "+prices.unused={input_per_mtok:cheap}"), ())


@pytest.mark.vllm
def test_a_parallel_sweep_on_the_managed_server_starts_it_once(cli):
    """Three jobs in parallel (joblib launcher), no backend.url: the sweep starts one vLLM server,
    and each job writes its own run."""
    result = cli("-m", "stage=sample", "run.name=sweep", "prompts=v1,v2,v3", "domain=networking",
                 "hydra/launcher=joblib", "hydra.launcher.n_jobs=3", "sample.num_tasks=2", "sample.n=1",
                 "sample.max_tokens=48", EAGER, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = cli.outputs / "sweep"
    logs = list(sweep.rglob("vllm-*.log"))
    assert [p.parent for p in logs] == [sweep / "logs"], logs  # one server, started by the sweep
    assert result.stderr.count("one vllm server for all jobs") == 1
    port = managed_port(sweep)
    assert not port_open(port) and server_processes(port) == []  # and stopped after the last job
    table = pl.read_csv(sweep / "comparison.csv")
    assert sorted(table["job"].to_list()) == ["prompts=v1", "prompts=v2", "prompts=v3"]
    assert table["sampled"].to_list() == [2, 2, 2]
    assert table["status"].to_list() == ["finished"] * 3
    assert (table["tokens"] > 0).all()
    for run_dir in table["dir"]:
        # each job's own tasks, sampled from the shared server
        tasks = pl.read_parquet(sweep / run_dir / "tasks.parquet")
        assert len(tasks) == 2 and tasks["prompt_variant"].n_unique() == 1


def test_a_cost_budget_from_model_prices_stops_the_run_cleanly(cli):
    with StubServer(VariantModel()) as server:
        result = cli("stage=[sample,judge]", "run.name=capped", f"backend.url={server.url}", "backend.model=stub-model",
                     "backend.max_in_flight=1", "sample.num_tasks=8", "sample.n=1",
                     "+prices.stub-model={input_per_mtok:1000000,output_per_mtok:0}",  # $1 per prompt token
                     "budget.max_cost_usd=40", *FAST)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((cli.outputs / "capped" / "summary.json").read_text())
    assert summary["status"] == "stopped" and "budget.max_cost_usd=40" in summary["error"]
    assert 40 <= summary["spend"]["total"]["cost_usd"] < 60  # stops at the first request past the limit
    assert "stopped early: budget.max_cost_usd=40" in result.stderr
    tasks = pl.read_parquet(cli.outputs / "capped" / "tasks.parquet")
    assert 0 < len(tasks) < 8  # what was sampled before the stop is kept
