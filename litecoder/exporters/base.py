"""What exporters read: the kept rollouts with their ATIF trajectories (SFT formats), or the
ready environments with their certificates, best rollouts and pass rates (task formats)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

from ..difficulty import UNKNOWN, in_band, pass_rates
from ..outcomes import KEPT
from ..sandboxes.base import SandboxError, item_failure
from ..store import DONE
from ..tables import write_text_atomic
from ..ready_tasks import has_environments, ready_items

if TYPE_CHECKING:
    from ..run import Run


#: what an exporter reads: the kept rollouts (SFT data) or the ready environments (tasks)
TRAJECTORIES, ENVIRONMENTS = "trajectories", "environments"


class Exporter:
    """What an exporter plugin subclasses: it declares what it reads and writes its files."""

    #: ``TRAJECTORIES`` (the kept rollouts) or ``ENVIRONMENTS`` (the ready tasks)
    needs: str = TRAJECTORIES

    def export(self, run: Run) -> dict:
        """Write files under the run directory; returns counts for the summary (``{"rows": 12}``)."""
        raise NotImplementedError


def missing_input(run: Run, what: str) -> str | None:
    """Why an exporter that needs ``what`` cannot run: the stage that makes its input has not
    run (None: it has; with nothing kept the exporter still runs, so its files match the
    current filters)."""
    if what == ENVIRONMENTS:
        return None if has_environments(run.store) else "no environments (run stage=environment or stage=ingest)"
    return None if run.store.stage_started("trajectory") else "no trajectories (run stage=trajectory)"


@dataclass
class Rollout:
    record: dict
    trajectory: dict


def kept_rollouts(run: Run) -> list[Rollout]:
    """Rollouts the trajectory filters kept, in the order they finished."""
    rollouts = []
    for item in run.store.items("trajectory", DONE):
        if item.outcome != KEPT or not item.record.get("trajectory"):
            continue
        path = run.dir / item.record["trajectory"]
        rollouts.append(Rollout(item.record, json.loads(path.read_text(encoding="utf-8"))))
    return rollouts


def solved_rollouts(run: Run) -> dict[str, Rollout]:
    """Per task, its shortest kept rollout with reward 1: the one a task export replays."""
    best: dict[str, Rollout] = {}
    for rollout in kept_rollouts(run):
        if rollout.record.get("reward") != 1:
            continue
        current = best.get(rollout.record["task_id"])
        if current is None or rollout.record["turns"] < current.record["turns"]:
            best[rollout.record["task_id"]] = rollout
    return best


@dataclass
class ExportTask:
    """One ready environment as a task exporter sees it."""

    task_id: str
    environment: dict
    judged: dict
    #: the shortest kept rollout with reward 1, if the teacher solved it
    rollout: Optional[Rollout]
    #: the task's entry of ``trajectory_tasks.parquet`` (None: no trajectory stage yet)
    pass_rate: Optional[dict]

    @property
    def difficulty(self) -> str:
        return self.pass_rate["difficulty"] if self.pass_rate else UNKNOWN

    @property
    def certificate(self) -> dict:
        return self.environment.get("certificate") or {}


#: how one task's export went: ``(directory written, solution check)``; the check is None
#: when it is off, else ``(passed, detail)``
TaskResult = tuple[Path, "tuple[bool, str] | None"]


def export_candidates(run: Run) -> list[ExportTask]:
    """Every ready environment (certified, when certification ran), with its best rollout
    and pass rate when the trajectory stage ran."""
    judged = {i.key: i.record for i in run.store.items("judge", DONE)}
    solved = solved_rollouts(run)
    rates = {r["task_id"]: r for r in pass_rates(
        (i.record for i in run.store.items("trajectory", DONE)), run.cfg.trajectory.difficulty)}
    return [ExportTask(i.key, i.record, judged.get(i.key, {}), solved.get(i.key), rates.get(i.key))
            for i in ready_items(run.store)]


def left_out(task: ExportTask, band: Sequence[float] | None) -> str | None:
    """Why a ready task is not exported (None: it is)."""
    if task.rollout is None and not (task.environment.get("solution") or "").strip():
        return "no solution: the teacher did not solve it and it has no reference solution"
    rate = task.pass_rate["pass_at_1"] if task.pass_rate else None
    if not in_band(rate, band):
        shown = "unknown (no rollouts)" if rate is None else f"{rate:g}"
        return f"pass rate {shown} outside export.harbor.pass_rate {list(band or [])}"
    return None


def export_tasks(run: Run, root: Path, write: Callable[[ExportTask], TaskResult]) -> dict:
    """Write one directory per exportable task under ``root`` with ``write(task)``, and
    ``root/index.jsonl`` with one entry per ready task. A task whose export fails (a sandbox
    error, a bad state, a Docker API error) is recorded as failed and the others go on; one
    left out (outside the pass-rate band, no solution) is recorded as skipped; directories of
    tasks no longer exported are removed. Returns the counts for the summary."""
    band = run.cfg.export.harbor.pass_rate
    entries = []
    for task in export_candidates(run):
        entry = {"task_id": task.task_id, "rollout_id": task.rollout.record["rollout_id"] if task.rollout else None,
                 "path": None, "status": "failed", "solution_check": "skipped", "detail": left_out(task, band),
                 "difficulty": task.difficulty, "certified": task.certificate.get("certified")}
        if entry["detail"] is not None:
            entry["status"] = "skipped"
        else:
            _write_one(run, task, write, entry)
        entries.append(entry)
    wanted = {e["task_id"] for e in entries if e["status"] == "exported"}
    for stale in [p for p in root.iterdir() if p.is_dir() and p.name not in wanted] if root.is_dir() else []:
        shutil.rmtree(stale)  # tasks no longer exported (filters changed) and unfinished partials
    write_text_atomic(root / "index.jsonl", jsonl(entries))
    counts = {"tasks": len(wanted), "failed": sum(e["status"] == "failed" for e in entries),
              "skipped": sum(e["status"] == "skipped" for e in entries)}
    if run.cfg.export.harbor.check_solution:
        counts["solution_checked"] = sum(e["solution_check"] == "passed" for e in entries)
    return counts


def _write_one(run: Run, task: ExportTask, write: Callable[[ExportTask], TaskResult], entry: dict) -> None:
    try:
        directory, check = write(task)
        entry["path"], entry["status"] = str(directory.relative_to(run.dir)), "exported"
        if check is not None:
            entry["solution_check"] = "passed" if check[0] else "failed"
            entry["detail"] = check[1]
    except (SandboxError, ValueError, OSError) as exc:
        entry["detail"] = str(exc)
    except Exception as exc:  # noqa: BLE001 - a Docker API error fails this task's export only
        entry["detail"] = item_failure(exc)
        if entry["detail"] is None:
            raise


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
