"""The run report: built for empty and partial runs from the store alone, and rendered by a real
browser (Debian's headless Chromium) for a run with real trajectories."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from plotly.offline import get_plotlyjs

from litecoder.stages.report import REPORT_FILE, write_report
from litecoder.run import Run, execute
from litecoder.stage import Stage

from .conftest import REPO
from .stub_openai import StubServer, completion_body
from .test_environment_stage import ACCEPT
from .test_trajectory_stage import SOLVE, remove_images, run_pipeline, solving_teacher

ARTIFACTS = REPO / "test-artifacts"
CHARTS = ("chart-funnel", "chart-subtopics", "chart-judge-scores", "chart-trajectories", "chart-usage")


def report_of(compose_cfg, run_dir: Path, *overrides: str) -> str:
    run = Run(compose_cfg("stage=report", *overrides), run_dir)
    try:
        path = write_report(run)
    finally:
        run.close()
    assert path == run_dir / REPORT_FILE
    return path.read_text(encoding="utf-8")


def assert_self_contained(page: str) -> None:
    assert page.count(get_plotlyjs()[:500]) == 1  # plotly.js inlined exactly once
    assert not re.search(r"<(script|link)[^>]+(src|href)=", page)  # nothing fetched from the network


def test_an_empty_run_gets_a_page_that_says_what_is_missing(compose_cfg, tmp_path):
    page = report_of(compose_cfg, tmp_path)
    assert_self_contained(page)
    assert f"litecoder run <code>{tmp_path.name}</code>" in page
    assert "Nothing sampled yet: run stage=sample." in page
    assert "No judge scores yet" in page and "No trajectories yet" in page and "No trajectory files yet" in page
    assert "No model requests recorded yet." in page
    assert not any(f'id="{chart}"' in page for chart in CHARTS)


TASKS = [
    "Audit /etc/passwd for accounts with an empty password field and list them in /tmp/audit.txt.",
    "Audit /etc/passwd for accounts with an empty password field and list them in /tmp/audit.txt.",
    "Write a bash script that rotates the nginx logs daily and keeps seven compressed copies.",
    "Set up an SSH server that only accepts key-based logins for the user deploy on port 2222.",
    "Find which process listens on port 8080 and write its PID to /tmp/pid.txt.",
    "Create a Python virtual environment in /opt/venv and install requests pinned to 2.31.",
    "Configure iptables so that only ports 22 and 443 accept incoming TCP connections.",
]


class SampleAndAccept:
    """Samples ``TASKS`` in order (the first twice, for the dedup step); the judge accepts all."""

    def __init__(self) -> None:
        self.tasks = iter(TASKS)

    def __call__(self, path, body):
        if path.endswith("chat/completions"):
            return 200, completion_body([ACCEPT], chat=True), 0
        return 200, completion_body([next(self.tasks) for _ in range(int(body.get("n", 1)))]), 0


def test_a_run_that_only_sampled_and_judged_gets_charts_and_notes_through_the_cli(compose_cfg, cli):
    run_dir = cli.outputs / "partial"
    with StubServer(SampleAndAccept()) as server:
        execute(compose_cfg("stage=[sample,judge]", f"backend.url={server.url}", "domain=security",
                            f"sample.num_tasks={len(TASKS)}", "sample.n=1", "backend.max_in_flight=1"), run_dir)
    result = cli("stage=report", "run.name=partial")  # the report's own overrides leave domain at its default
    assert result.returncode == 0, result.stderr
    assert "report: file=report.html, trajectories=0" in result.stderr
    page = (run_dir / REPORT_FILE).read_text(encoding="utf-8")
    assert_self_contained(page)
    for chart in ("chart-funnel", "chart-subtopics", "chart-judge-scores", "chart-usage"):
        assert f'id="{chart}"' in page
    assert "<td>domain</td><td>security</td>" in page  # what the run was sampled with, from the store
    assert "Not reached yet: environment ready, solved, exported." in page
    assert "No trajectories yet: run stage=trajectory." in page
    funnel = figure_data(page, "chart-funnel")[0]
    assert funnel["y"] == ["sampled", "unique, not in a benchmark", "accepted"] and funnel["x"] == [7, 6, 6]
    assert re.search(r"<td>per accepted task \(6\)</td>", page)
    # counted inside SQLite: each sampled task once, by its judge outcome; each criterion's scores
    subtopics = {trace["name"]: sum(trace["y"]) for trace in figure_data(page, "chart-subtopics")}
    assert subtopics == {"accepted": 6, "duplicate": 1}
    *criteria, aggregate = figure_data(page, "chart-judge-scores")
    assert len(criteria) == len(json.loads(ACCEPT))
    assert all(trace["x"] == [5] and trace["y"] == [6] for trace in criteria)
    assert aggregate["name"] == "aggregate" and len(aggregate["x"]) == 6


def figure_data(page: str, chart: str) -> list[dict]:
    """A chart's traces, as plotly got them."""
    start = page.index(f'"{chart}",') + len(f'"{chart}",')
    return json.JSONDecoder().raw_decode(page[start:].lstrip())[0]


def chromium(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """Headless Chromium on a page; a failed launch fails the test with Chromium's stderr."""
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail("Debian's chromium is not installed; run `bash scripts/setup.sh`")
    profile = tmp_path / "chromium-profile"
    result = subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                             "--virtual-time-budget=15000", *args], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"chromium exited {result.returncode}:\n{result.stderr}"
    return result


@pytest.mark.docker
@pytest.mark.browser
def test_the_report_of_a_run_with_trajectories_renders_in_chromium(compose_cfg, tmp_path):
    run_dir = tmp_path / "run"
    try:
        run_pipeline(compose_cfg, run_dir, solving_teacher, "trajectory.rollouts=2")
        page_path = run_dir / REPORT_FILE
        report_of(compose_cfg, run_dir)
        url = page_path.as_uri()

        dom = chromium("--dump-dom", url, tmp_path=tmp_path).stdout
        # plotly draws each chart as <svg class="main-svg"> inside the chart's div
        positions = sorted((dom.index(f'id="{chart}"'), chart) for chart in CHARTS)
        for (start, chart), (end, _) in zip(positions, [*positions[1:], (len(dom), "")]):
            assert 'class="main-svg"' in dom[start:end], f"{chart} was not drawn"

        trajectories = re.findall(r'<details class="trajectory".*?</details>', dom, re.S)
        assert len(trajectories) == 2
        turns = re.findall(r'<div class="turn">.*?(?=<div class="turn">|</details>)', trajectories[0], re.S)
        assert len(turns) == 4
        assert "resolve and commit" in turns[0] and "checking the repository" in turns[0]  # plan and analysis
        assert SOLVE[1].strip() in turns[0]  # keystrokes
        assert "UU app.py" in turns[0]  # the real terminal's output
        assert "merge feature" in turns[1]
        assert "litecoder-toolchain:networking-" in dom  # the run's image
        assert "environment: registries, teacher: none" in dom

        ARTIFACTS.mkdir(exist_ok=True)
        screenshot = ARTIFACTS / "report.png"
        screenshot.unlink(missing_ok=True)
        chromium(f"--screenshot={screenshot}", "--window-size=1280,4500", "--hide-scrollbars", url, tmp_path=tmp_path)
        assert screenshot.stat().st_size > 50_000
        print(f"report screenshot: {screenshot}")
    finally:
        remove_images(run_dir)


class BrokenReport(Stage):
    name = "report"

    def run(self, run):
        raise RuntimeError("no ink")


class BrokenReportPlugin:
    from litecoder import hookimpl

    @hookimpl
    def litecoder_register_stages(self, register):
        register("report", BrokenReport, replace=True)


def test_every_run_ends_with_its_report_and_a_broken_report_loses_nothing(compose_cfg, plugins, tmp_path,
                                                                         capfd, caplog):
    with StubServer(SampleAndAccept()) as server:
        overrides = ("stage=[sample,judge]", f"backend.url={server.url}", "sample.num_tasks=3", "sample.n=1")
        execute(compose_cfg(*overrides), tmp_path / "a")
        assert f"report: {tmp_path / 'a' / REPORT_FILE}" in capfd.readouterr().err
        assert 'id="chart-funnel"' in (tmp_path / "a" / REPORT_FILE).read_text(encoding="utf-8")
        execute(compose_cfg(*overrides, "run.report=false"), tmp_path / "off")
        assert not (tmp_path / "off" / REPORT_FILE).exists()
        plugins.register(BrokenReportPlugin(), "broken-report")
        execute(compose_cfg(*overrides), tmp_path / "b")
    assert not (tmp_path / "b" / REPORT_FILE).exists()
    assert "the report was not written: RuntimeError: no ink (rebuild it with stage=report)" in caplog.text
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["status"] == "finished"


def test_the_certification_funnel_counts_tasks_past_each_check_in_order():
    from litecoder.stages.report import certification_funnel

    # (nop, oracle, stable, wrong_total, wrong_caught, certified, repairs, review_passed, cheat_trials,
    # cheats_rewarded) per prepared task; a review or trial that did not run (null) is no step down
    certificates = [(1, 1, 1, 2, 2, 1, 0, 1, 1, 0), (1, 1, 1, 2, 1, 0, 2, None, None, None),
                    (1, 0, 1, 2, 2, 0, 2, None, None, None), (0, 1, 1, 2, 2, 0, 0, None, None, None),
                    (1, 1, 0, 2, 2, 0, 1, None, None, None), (1, 1, 1, 0, 0, 1, 1, None, None, None),
                    (1, 1, 1, 2, 2, 0, 2, 0, None, None), (1, 1, 1, 2, 2, 0, 2, 1, 1, 1)]
    assert certification_funnel(certificates) == [("prepared", 8), ("nop ok", 7), ("oracle ok", 6), ("stable", 5),
                                                  ("wrong solutions caught", 4), ("review passed", 3),
                                                  ("cheat trials caught", 2), ("certified", 2)]
