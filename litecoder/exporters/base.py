"""What exporters read: the kept rollouts, with their ATIF trajectories loaded."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from ..sandboxes.base import SandboxError, item_failure
from ..store import DONE
from ..tables import write_text_atomic


class Exporter(Protocol):
    def export(self, run: Any) -> dict:
        """Write files under the run directory; returns counts for the summary (``{"rows": 12}``)."""


@dataclass
class Rollout:
    record: dict
    trajectory: dict


def kept_rollouts(run: Any) -> list[Rollout]:
    """Rollouts the trajectory filters kept, in the order they finished."""
    rollouts = []
    for item in run.store.items("trajectory", DONE):
        if item.outcome != "kept" or not item.record.get("trajectory"):
            continue
        path = run.dir / item.record["trajectory"]
        rollouts.append(Rollout(item.record, json.loads(path.read_text(encoding="utf-8"))))
    return rollouts


def solved_rollouts(run: Any) -> dict[str, Rollout]:
    """Per task, its shortest kept rollout with reward 1: the one a task export replays."""
    best: dict[str, Rollout] = {}
    for rollout in kept_rollouts(run):
        if rollout.record.get("reward") != 1:
            continue
        current = best.get(rollout.record["task_id"])
        if current is None or rollout.record["turns"] < current.record["turns"]:
            best[rollout.record["task_id"]] = rollout
    return best


#: how one task's export went: ``(directory written, solution check)``; the check is None
#: when it is off, else ``(passed, detail)``
TaskResult = tuple[Path, "tuple[bool, str] | None"]


def export_tasks(run: Any, root: Path, write: Callable[[str, Rollout], TaskResult]) -> dict:
    """Write one directory per solved task under ``root`` with ``write(task_id, rollout)``, and
    ``root/index.jsonl`` with one entry per task. A task whose export fails (a sandbox error, a
    bad state, a Docker API error) is recorded as failed and the others go on; directories of
    tasks no longer solved are removed. Returns the counts for the summary."""
    entries = []
    for task_id, rollout in solved_rollouts(run).items():
        entry = {"task_id": task_id, "rollout_id": rollout.record["rollout_id"], "path": None,
                 "status": "failed", "solution_check": "skipped", "detail": None}
        try:
            directory, check = write(task_id, rollout)
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
        entries.append(entry)
    wanted = {e["task_id"] for e in entries if e["status"] == "exported"}
    for stale in [p for p in root.iterdir() if p.is_dir() and p.name not in wanted] if root.is_dir() else []:
        shutil.rmtree(stale)  # tasks no longer solved (filters changed) and unfinished partials
    write_text_atomic(root / "index.jsonl", jsonl(entries))
    counts = {"tasks": len(wanted), "failed": sum(e["status"] == "failed" for e in entries)}
    if run.cfg.export.harbor.check_solution:
        counts["solution_checked"] = sum(e["solution_check"] == "passed" for e in entries)
    return counts


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
