"""The report stage: rebuild ``report.html`` for a run, finished or not, without running anything."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import hookimpl
from ..stage import Stage
from ..report import write_report

if TYPE_CHECKING:
    from ..run import Run


class ReportStage(Stage):
    name = "report"

    def run(self, run: Run) -> dict:
        path = write_report(run)
        rollouts = sum(1 for item in run.store.items("trajectory") if item.record.get("trajectory"))
        return {"file": path.name, "trajectories": rollouts}


@hookimpl
def litecoder_register_stages(register):
    register("report", ReportStage)
