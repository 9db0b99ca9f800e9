"""The command line as users run it: run directories, sweeps, one-line errors."""

from __future__ import annotations

import re

import polars as pl
import pytest

FAST = ["backend.retry_initial_wait=0.01", "backend.retry_max_wait=0.05"]


def one_line_error(result, *fragments):
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("litecoder: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


def test_run_name_puts_the_run_in_outputs_name_with_its_config(cli, stub_server):
    result = cli("stage=sample", "run.name=demo", f"backend.url={stub_server.url}", "sample.num_tasks=6")
    assert result.returncode == 0, result.stderr
    run_dir = cli.outputs / "demo"
    tasks = pl.read_parquet(run_dir / "tasks.parquet")
    assert len(tasks) == 6
    assert (run_dir / "config.yaml").is_file() and (run_dir / ".hydra" / "config.yaml").is_file()
    assert "num_tasks: 6" in (run_dir / "config.yaml").read_text()
    assert "litecoder: sample: planned=6, done=6, ok=6" in result.stderr


def test_without_a_name_the_run_gets_a_timestamped_directory(cli, stub_server):
    result = cli("stage=sample", f"backend.url={stub_server.url}", "sample.num_tasks=2")
    assert result.returncode == 0, result.stderr
    (run_dir,) = list(cli.outputs.iterdir())
    assert run_dir.name[:4].isdigit() and "_" in run_dir.name
    assert (run_dir / "tasks.parquet").is_file()


def test_stage_all_runs_every_stage_even_when_nothing_is_accepted(cli, stub_server):
    # The stub answers the judge with task texts, so no task is accepted: every later stage
    # runs, has no input, and still writes its (empty) outputs.
    result = cli("stage=all", "run.name=chain", f"backend.url={stub_server.url}", "sample.num_tasks=2")
    assert result.returncode == 0, result.stderr
    assert "trajectory: environments=0, rollouts=0" in result.stderr
    assert "export: sharegpt_rows=0, messages_rows=0, harbor_tasks=0" in result.stderr
    assert "Traceback" not in result.stderr
    run_dir = cli.outputs / "chain"
    assert (run_dir / "tasks.parquet").is_file() and (run_dir / "trajectories.parquet").is_file()
    assert (run_dir / "sft" / "sharegpt.jsonl").read_text() == ""


def test_a_stage_whose_input_is_missing_says_which_to_run_first(cli, stub_server):
    result = cli("stage=[sample,export]", "run.name=pair", f"backend.url={stub_server.url}", "sample.num_tasks=2")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].endswith("run stage=trajectory first")
    assert "Traceback" not in result.stderr


def test_a_sweep_writes_one_run_per_combination(cli, stub_server):
    result = cli("-m", "stage=sample", "run.name=sweep", "prompts=v1,v2", "domain=networking,security",
                 f"backend.url={stub_server.url}", "sample.num_tasks=2")
    assert result.returncode == 0, result.stderr
    runs = sorted(p.name for p in (cli.outputs / "sweep").iterdir() if (p / "tasks.parquet").is_file())
    assert runs == [
        "domain=networking,prompts=v1,sample.num_tasks=2", "domain=networking,prompts=v2,sample.num_tasks=2",
        "domain=security,prompts=v1,sample.num_tasks=2", "domain=security,prompts=v2,sample.num_tasks=2",
    ]
    tasks = pl.read_parquet(cli.outputs / "sweep" / runs[-1] / "tasks.parquet")
    assert set(tasks["domain"]) == {"security"} and set(tasks["prompt_variant"]) == {"v2"}


def test_unknown_stage(cli):
    one_line_error(cli("stage=jduge"), "unknown stage jduge", "judge")


def test_unreachable_server(cli):
    one_line_error(cli("stage=sample", "backend.url=http://127.0.0.1:9"), "cannot reach the vLLM server", "backend.url")


def test_missing_model_directory(cli, tmp_path):
    one_line_error(cli("stage=sample", f"backend.model_path={tmp_path}/no-model"), "no-model", "scripts/setup.sh")


def test_missing_api_key(cli):
    line = one_line_error(
        cli("stage=sample", "backend=openai", "backend.model=gpt-4.1-mini", "backend.api_key_env=LITECODER_NO_SUCH_KEY"),
        "LITECODER_NO_SUCH_KEY is not set",
    )
    assert "export" in line


def test_full_error_shows_the_traceback(cli):
    result = cli("stage=sample", "backend.url=http://127.0.0.1:9", env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode != 0 and "Traceback" in result.stderr


@pytest.mark.parametrize(
    "override, expected",
    [
        ("domain=netwerking", ["Could not find 'domain/netwerking'", "version_control"]),
        ("sample.num_taks=3", ["num_taks"]),
        ("sample.n=many", ["sample.n"]),
    ],
)
def test_config_mistakes_fail_at_compose_time_without_a_traceback(cli, override, expected):
    result = cli("stage=sample", override)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    for fragment in expected:
        assert fragment in result.stderr


def test_progress_is_logged_without_a_terminal_and_drawn_with_one(cli, stub_server):
    # Not a terminal (CI, files): plain log lines with counts, tokens and elapsed time.
    result = cli("stage=[sample,judge]", "run.name=logged", f"backend.url={stub_server.url}", "sample.num_tasks=8",
                 "sample.n=2", "run.progress_interval=0")
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "\r" not in output
    lines = [line for line in output.splitlines() if "[litecoder.progress]" in line]
    assert any("sample networking/v1: 8/8 tasks, tokens " in line and "elapsed 0m" in line for line in lines), lines
    # The stub answers the judge with task texts, so every judgment (of the non-duplicates) fails.
    final = [line for line in lines if re.search(r"judge networking: (\d+)/\1 tasks, failed \1, tokens \d+", line)]
    assert len(final) == 1, lines
    assert final[0].split("] ", 1)[1] in (cli.outputs / "logged" / "litecoder.log").read_text()
    # run.progress=true draws bars, with the stage's tallies and the run's tokens.
    result = cli("stage=[sample,judge]", "run.name=drawn", f"backend.url={stub_server.url}", "sample.num_tasks=4",
                 "run.progress=true")
    assert result.returncode == 0, result.stderr
    assert "judge networking: 100%" in result.stderr and re.search(r"failed=\d+, tokens=\d+", result.stderr)
    assert "[litecoder.progress]" not in result.stdout + result.stderr
