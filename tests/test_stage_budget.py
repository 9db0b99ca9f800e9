"""Every item stage runs through one runner entry point, so a budget stops each the same way:
no item started, the stop named in the stage's summary and in summary.json, the tables written."""

from __future__ import annotations

import json

import pytest

from litecoder.run import execute
from litecoder.store import DONE, RunStore

from .stub_openai import StubServer
from .test_ingest_stage import NOTES_TEST, harbor_task
from .test_report import SampleAndAccept

pytestmark = pytest.mark.docker

#: the stage that makes each stage's input, and the table each stage writes
BEFORE = {"sample": None, "judge": "[sample]", "environment": "[sample,judge]", "trajectory": "[sample,judge]",
          "eval": "[sample,judge]", "ingest": None}
TABLES = {"sample": "tasks.parquet", "judge": "judgments.parquet", "environment": "environments.parquet",
          "trajectory": "trajectories.parquet", "eval": "eval_rollouts.parquet", "ingest": "imported.parquet"}


def a_ready_task(run_dir) -> None:
    """A ready task in the store, as the environment stage leaves it (the budget stops the
    rollouts before its image is needed)."""
    store = RunStore(run_dir / "store.sqlite")
    try:
        store.open_stage("environment", {"made": "by the test"}, None, retry_failed=False)
        record = {"task_id": "t1", "text": "Write ok to /root/out.txt.", "status": "ready", "image": "litecoder-base:bookworm",
                  "outputs": ["/root/out.txt"], "verification": "separate", "verifier": "#!/bin/bash\ntrue\n"}
        store.put("environment", [("t1", DONE, "ready", None, record)])
    finally:
        store.close()


@pytest.mark.parametrize("stage", list(BEFORE))
def test_a_budget_stop_is_reported_the_same_way_in_every_stage(stage, compose_cfg, tmp_path):
    run_dir = tmp_path / "run"
    with StubServer(SampleAndAccept()) as server:
        base = (f"backend.url={server.url}", "sample.num_tasks=2", "sample.n=1", "domain=security")
        if BEFORE[stage]:
            execute(compose_cfg(f"stage={BEFORE[stage]}", *base), run_dir)
        if stage in ("trajectory", "eval"):
            a_ready_task(run_dir)
        own = [f"ingest.paths=[{harbor_task(tmp_path / 'tasks', 'notes', NOTES_TEST)}]"] if stage == "ingest" else []
        asked = len(server.requests)
        summaries = execute(compose_cfg(f"stage={stage}", *base, *own, "budget.max_wall_time_s=0"), run_dir)
        assert len(server.requests) == asked  # not one request after the budget was spent
    expected_stop = "budget.max_wall_time_s=0.0"
    assert summaries[stage]["stopped_by"] == expected_stop, summaries[stage]
    # nothing done but what needs no work (the judge leaves duplicates out before any request)
    assert summaries[stage].get(DONE, 0) == summaries[stage].get("duplicate", 0)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["error"] == f"{stage}: {expected_stop}"
    assert (run_dir / TABLES[stage]).is_file()
