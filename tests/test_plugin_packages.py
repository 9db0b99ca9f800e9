"""The plugin packages under plugins/ as a user gets them: a fresh venv, ``pip install`` of the
core checkout and both plugins (not editable), and the new domain through sample and judge on
the real vLLM server."""

from __future__ import annotations

import os
import subprocess
import sys
import venv

import polars as pl
import pytest

from .conftest import REPO

pytestmark = [pytest.mark.wheel, pytest.mark.vllm]

PLUGINS = ("litecoder-databases", "litecoder-terminal-bench")
LENIENT_JUDGE = ["judge.criteria=[{name: clarity, description: 'The task is stated.'}]", "judge.threshold=1",
                 "judge.rationale_max_chars=60", "judge.max_tokens=250"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A fresh venv with litecoder and both plugin packages installed from their directories."""
    root = tmp_path_factory.mktemp("plugin-packages")
    env_dir = root / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    packages = [str(REPO), *(str(REPO / "plugins" / name) for name in PLUGINS)]
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", *packages], capture_output=True, text=True)
    assert install.returncode == 0, install.stderr[-3000:]
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "HYDRA_FULL_ERROR")}
    return python, elsewhere, env


def run(installed, *args, timeout=600):
    python, elsewhere, env = installed
    return subprocess.run([str(python), *args], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_venv_has_the_installed_copies_and_lists_both_plugins(installed):
    python, _, _ = installed
    where = run(installed, "-c", "import litecoder, litecoder_databases, litecoder_terminal_bench as t; "
                                 "print(litecoder.__file__, litecoder_databases.__file__, t.__file__)")
    assert where.returncode == 0, where.stderr
    site = str(python.parent.parent)
    assert all(path.startswith(site) and "site-packages" in path for path in where.stdout.split()), where.stdout
    listing = run(installed, "-m", "litecoder", "--info", "plugins")
    assert listing.returncode == 0, listing.stderr
    assert "databases  [litecoder-databases 0.1.0]\n    domain databases" in listing.stdout
    assert "terminal_bench  [litecoder-terminal-bench 0.1.0]\n    exporter terminal_bench" in listing.stdout
    assert "0 failed to import" in listing.stdout


def test_the_plugins_own_tests_pass_with_the_fixtures_litecoder_ships(installed):
    """pytest finds litecoder's fixtures through the installed package's pytest11 entry point."""
    python, elsewhere, env = installed
    pip = subprocess.run([str(python), "-m", "pip", "install", "-q", "pytest"], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr[-2000:]
    fixtures = run(installed, "-m", "pytest", "--fixtures", "-p", "no:cacheprovider", str(elsewhere))
    for name in ("litecoder_plugins", "litecoder_compose", "litecoder_cli", "litecoder_stub_model"):
        assert name in fixtures.stdout, fixtures.stdout[-2000:]
    tests = [str(REPO / "plugins" / name / "tests") for name in PLUGINS]
    result = run(installed, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not docker", *tests)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "6 passed" in result.stdout  # 2 of the databases domain, 4 of the exporter


def test_the_new_domain_runs_through_sample_and_judge_on_the_real_server(installed, vllm_url):
    _, elsewhere, _ = installed
    outputs = elsewhere / "outputs"
    result = run(installed, "-m", "litecoder", "stage=[sample,judge]", "domain=databases", "run.name=db",
                 f"run.root={outputs}", f"backend.url={vllm_url}", "sample.num_tasks=2", "sample.max_tokens=96",
                 *LENIENT_JUDGE, timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = outputs / "db"
    tasks = pl.read_parquet(run_dir / "tasks.parquet")
    assert len(tasks) == 2 and set(tasks["domain"]) == {"databases"}
    assert set(tasks["subtopic"]) <= {"schema migrations", "backup and restore", "query tuning", "data loading"}
    assert (tasks["model"] == "SmolLM2-135M-Instruct").all()
    # Every sampled task is recorded: judged (or a duplicate), or failed in sampling with its reason.
    judgments = pl.read_parquet(run_dir / "judgments.parquet")
    sampled = set(tasks.filter(pl.col("status").is_in(["ok", "truncated"]))["id"])
    assert set(judgments["task_id"]) == sampled and judgments["task_id"].is_unique().all()
    assert len(judgments) + tasks.filter(pl.col("status").is_in(["failed", "empty"])).height == 2
    assert set(judgments["verdict"]) <= {"accepted", "rejected", "duplicate", "failed"}
    assert judgments["aggregate"].drop_nulls().len() >= 1  # the model judged at least one task
    assert "2 sampled = " in result.stderr and "+ 0 not judged yet" in result.stderr

    # The installed exporter is a name export.formats accepts; this run has no environments yet.
    export = run(installed, "-m", "litecoder", "stage=export", "run.name=db", f"run.root={outputs}",
                 "export.formats=[terminal_bench]")
    assert export.returncode != 0 and export.stderr.strip().endswith("run stage=environment first"), export.stderr
