"""Odd run names, odd override values and interruptions: a run finishes with every item
recorded or stops with one clear line, and an interrupted run keeps its summary and report."""

from __future__ import annotations

import json
import signal
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from litecoder.errors import ConfigError
from litecoder.paths import check_run_name, job_dir_name
from litecoder.testing import run_cli

from .conftest import REPO
from .stub_openai import StubServer, completion_body
from .test_cli import one_line_error

NUM_TASKS = 2


def read_table(path: Path) -> pl.DataFrame:
    return pl.read_parquet(path, glob=False)


def assert_every_item_recorded(run_dir: Path) -> None:
    """Every planned task was sampled, every sampled task judged, and the run says it finished."""
    tasks = read_table(run_dir / "tasks.parquet")
    assert len(tasks) == NUM_TASKS, run_dir
    judgments = read_table(run_dir / "judgments.parquet")
    sampled = set(tasks.filter(pl.col("status").is_in(["ok", "truncated"]))["id"])
    assert set(judgments["task_id"]) == sampled
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"
    assert (run_dir / "report.html").is_file()


# -- names --------------------------------------------------------------------------------------

def test_simple_overrides_name_a_job_directory_as_they_are():
    assert job_dir_name("domain=networking,prompts=v3") == "domain=networking,prompts=v3"


def test_lists_quotes_and_long_texts_are_shortened_with_a_stable_hash():
    overrides = "prompts=v1,sample.template.prefix='{system}\\nTask:',sample.template.stop=[END,STOP]"
    name = job_dir_name(overrides)
    assert name.startswith("prompts=v1~") and len(name) < 100
    assert name == job_dir_name(overrides)
    assert name != job_dir_name(overrides.replace("STOP", "HALT"))
    assert "/" not in job_dir_name("sample.template.stop=[a/b]")
    assert job_dir_name("", 3) == "job3"


@pytest.mark.parametrize("name, why", [("a/b", "path separator"), ("..", "not a directory name"),
                                       ("x" * 256, "longer than 255 bytes"), ("a\nb", "control character")])
def test_names_that_cannot_be_a_directory_are_refused(name, why):
    with pytest.raises(ConfigError, match=why):
        check_run_name(name)


def test_a_run_name_with_brackets_is_read_literally(cli, stub_server):
    result = cli("stage=[sample,judge]", "run.name='exp[1]'", f"backend.url={stub_server.url}",
                 f"sample.num_tasks={NUM_TASKS}")
    assert result.returncode == 0, result.stderr
    assert_every_item_recorded(cli.outputs / "exp[1]")


@pytest.mark.parametrize("override, fragment", [
    ("run.name=exp[1]", "quote a value"),
    ("run.name='a/b'", "path separator"),
    ("run.name='${nowhere}'", "Interpolation key 'nowhere' not found"),
    ("sample.num_taks=3", "Key 'num_taks' not in 'SampleConfig'"),
])
def test_unreadable_overrides_and_impossible_names_stop_with_one_line(cli, override, fragment):
    one_line_error(cli("stage=sample", override), fragment)


def test_a_sweep_over_list_values_records_every_job_and_its_overrides(cli, stub_server):
    result = cli("-m", "stage=[sample,judge]", "run.name=stops", "prompts=v1,v2", "sample.template.stop=[END],[STOP]",
                 f"backend.url={stub_server.url}", f"sample.num_tasks={NUM_TASKS}")
    assert result.returncode == 0, result.stderr
    jobs = sorted(p for p in (cli.outputs / "stops").iterdir() if p.is_dir())
    assert len(jobs) == 4 and all("[" not in p.name and len(p.name) < 100 for p in jobs)
    for job in jobs:
        assert_every_item_recorded(job)
    table = pl.read_csv(cli.outputs / "stops" / "comparison.csv", glob=False)
    made_with = [" ".join(o for o in row.split() if not o.startswith("sample.tokenizer=")) for row in table["overrides"]]
    assert sorted(made_with) == sorted(f"prompts={p} sample.template.stop=[{s}] sample.num_tasks={NUM_TASKS}"
                                                for p in ("v1", "v2") for s in ("END", "STOP"))


# -- interruptions ------------------------------------------------------------------------------

def slow_judge(path: str, body: dict):
    """Tasks at once; each judgment takes a while, so a run can be stopped mid-judge."""
    if path.endswith("chat/completions"):
        scores = {c: {"rationale": "fine", "score": 5} for c in ("complexity_balance", "clarity",
                                                                 "resource_availability", "verifiability", "safety")}
        return 200, completion_body([json.dumps(scores)], chat=True), 0.5
    n = int(body.get("n", 1))
    return 200, completion_body([f"Task {time.monotonic_ns()}-{i}: set up the service in /srv/app" for i in range(n)]), 0


def test_a_run_interrupted_mid_judge_keeps_its_counts_spend_and_report(tmp_path, template_dir):
    with StubServer(slow_judge) as server:
        process = subprocess.Popen(
            [sys.executable, "-m", "litecoder", "stage=[sample,judge]", "run.name=cut", f"run.root={tmp_path}",
             f"backend.url={server.url}", "sample.num_tasks=12", "backend.max_in_flight=1", "dedup.near=false",
             f"sample.tokenizer={template_dir}"],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and sum(1 for r in server.requests if "chat" in r[0]) < 3:
            time.sleep(0.1)
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    summary = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert summary["stages"]["sample"]["done"] == 12
    judge = summary["stages"]["judge"]
    assert judge["unfinished"] and 2 <= judge.get("accepted", 0) < 12
    assert summary["spend"]["total"]["requests"] >= 3
    assert (tmp_path / "cut" / "report.html").is_file() and "litecoder: report:" in stderr
    assert "sampled = " in stderr


# -- property: any name, any value --------------------------------------------------------------

ODD_TEXT = st.text(alphabet=string.ascii_letters + string.digits + string.punctuation + " éßЖ漢ü", min_size=1,
                   max_size=12)


def hydra_quoted(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


@pytest.fixture(scope="module")
def module_stub():
    with StubServer() as server:
        yield server


@settings(max_examples=12, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=ODD_TEXT, value=ODD_TEXT, quote_name=st.booleans(), quote_value=st.booleans())
@example(name="exp[1]", value="END", quote_name=True, quote_value=False)
@example(name="a{b}", value="${x}", quote_name=True, quote_value=True)
@example(name="run*2", value="[STOP]", quote_name=False, quote_value=True)
@example(name="é 漢'\"", value="{system}\\nTask:", quote_name=True, quote_value=True)
def test_any_run_name_and_value_finishes_recorded_or_stops_with_one_line(module_stub, template_dir, name, value,
                                                                          quote_name, quote_value):
    name_arg = hydra_quoted(name) if quote_name else name
    value_arg = hydra_quoted(value) if quote_value else value
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "outputs"
        result = run_cli("-m", "stage=[sample,judge]", f"run.name={name_arg}", f"run.root={root}",
                         f"sample.template.stop=[END],[{value_arg}]", f"backend.url={module_stub.url}",
                         f"sample.num_tasks={NUM_TASKS}", f"sample.tokenizer={template_dir}", cwd=Path(tmp), timeout=300)
        assert "Traceback" not in result.stdout + result.stderr, result.stderr
        sweeps = [p for p in root.iterdir() if p.is_dir()] if root.is_dir() else []
        jobs = [p for sweep in sweeps for p in sweep.iterdir() if (p / "store.sqlite").is_file()]
        for job in jobs:  # whatever ran before a stop is complete
            assert_every_item_recorded(job)
        if result.returncode != 0:
            # one clear line: before anything ran, the only line; after a job ran, the last one
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            assert lines[-1].startswith("litecoder: error: "), result.stderr
            assert len(lines) == 1 or jobs, result.stderr
            return
        assert len(sweeps) == 1 and 1 <= len(jobs) <= 2, result.stderr  # equal values make one job
