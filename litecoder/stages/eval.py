"""Evaluating a model on a task set: ``k`` rollouts per task, pass@1 and pass@k per task and category.

The model is ``eval.backend`` (else the run's ``backend``), the agent is ``agent=`` as for the
teacher; the tasks are this run's ready environments, or those of the run directory named
by ``eval.tasks`` (so a sweep over models evaluates every model on the same held-out tasks,
each job in its own directory). Rollouts run exactly as the teacher's do (fresh container,
verifier after the agent stops, one ATIF file each, resumable) but nothing is filtered:
every rollout counts. ``eval.parquet`` holds one row per task, ``eval_rollouts.parquet`` one
per rollout; the summary and the report show pass rates per category.
"""

from __future__ import annotations

import statistics
from html import escape
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import polars as pl

from .. import hookimpl
from ..difficulty import pass_at
from ..errors import ConfigError
from ..page import Section, empty, table
from ..records import EvalTask, polars_schema
from ..store import DONE
from ..tables import records_frame, write_parquet_atomic
from ..outcomes import TAMPERED, SOLVED, UNSOLVED
from .trajectory import SCHEMA, RolloutConfig, TrajectoryStage, tamper_reason

if TYPE_CHECKING:
    from ..run import Run

EVAL_FILE = "eval.parquet"
EVAL_ROLLOUTS_FILE = "eval_rollouts.parquet"
EVAL_DIR = "eval"
EVAL_SCHEMA = polars_schema(EvalTask)


@dataclass
class EvalConfig(RolloutConfig):
    """A model with the configured agent on a task set; every rollout counts, none is filtered."""


class EvalStage(TrajectoryStage):
    name = "eval"
    order = None
    rollouts_file, trajectory_dir, tasks_file = EVAL_ROLLOUTS_FILE, EVAL_DIR, EVAL_FILE
    table = rollouts_file

    def classify(self, run: Run, record: dict) -> tuple[str, list[str]]:
        """Every finished rollout counts: it solved the task or it did not (a tampered one did not)."""
        if record.get("tampered"):
            return TAMPERED, [tamper_reason(record)]
        return (SOLVED if record.get("reward") == 1 else UNSOLVED), []

    def summary(self, run: Run) -> dict:
        tasks = self.task_rows(run)
        summary: dict = {"tasks": len(tasks)}
        if tasks:
            summary["pass@1"] = round(statistics.mean(t["pass_at_1"] for t in tasks), 3)
            summary[f"pass@{run.cfg.eval.rollouts}"] = round(statistics.mean(t["pass_at_k"] for t in tasks), 3)
            summary["by_category"] = {name: {"tasks": row["tasks"], "pass@1": round(row["pass_at_1"], 3),
                                             "pass@k": round(row["pass_at_k"], 3)}
                                      for name, row in per_category(tasks).items()}
        return summary

    def report_section(self, run: Run) -> Section | None:
        """Pass rates per category of the evaluated model."""
        path = run.path(EVAL_FILE)
        tasks = pl.read_parquet(path).to_dicts() if path.is_file() else []
        if not tasks:
            body = empty("No evaluation: run stage=eval (eval.rollouts=k, eval.tasks=a run directory).")
            return Section("Evaluation", "eval", body)
        models = ", ".join(sorted({t["model"] for t in tasks if t["model"]})) or "?"
        rows = [[name, row["tasks"], f"{row['pass_at_1']:.3f}", f"{row['pass_at_k']:.3f}", row["tokens"], row["wall_s"]]
                for name, row in per_category(tasks).items()]
        body = (f"<p>{escape(models)} on {len(tasks)} tasks, {tasks[0]['rollouts']} rollouts each "
                "(per task in eval.parquet, per rollout in eval_rollouts.parquet).</p>"
                + table(["category", "tasks", "pass@1", "pass@k", "tokens", "wall s"], rows, "table-eval"))
        return Section("Evaluation", "eval", body)

    def task_rows(self, run: Run) -> list[dict]:
        """One row per task over its finished rollouts (``EvalTask``)."""
        categories = {env["task_id"]: env.get("category") for env in self._known_environments(run)}
        by_task: dict[str, list[dict]] = defaultdict(list)
        for item in run.store.items(self.name, DONE):
            by_task[item.record["task_id"]].append(item.record)
        rows = []
        for task_id, records in sorted(by_task.items()):
            solved = sum(r.get("reward") == 1 for r in records)
            pass_at_1, pass_at_k = pass_at(solved, len(records))
            rows.append({"task_id": task_id, "category": categories.get(task_id) or "uncategorized",
                         "model": records[0].get("model") or "", "rollouts": len(records), "solved": solved,
                         "pass_at_1": pass_at_1, "pass_at_k": pass_at_k,
                         "prompt_tokens": sum(r.get("prompt_tokens") or 0 for r in records),
                         "completion_tokens": sum(r.get("completion_tokens") or 0 for r in records),
                         "turns": statistics.mean(r.get("turns") or 0 for r in records),
                         "wall_s": round(sum(r.get("wall_s") or 0.0 for r in records), 2)})
        return rows

    def _known_environments(self, run: Run) -> list[dict]:
        try:
            return self.environments(run)
        except ConfigError:
            return []

    def export(self, run: Run) -> None:
        records = [i.record for i in run.store.items(self.name)]
        write_parquet_atomic(records_frame(records, SCHEMA, "finished_at"), run.path(self.rollouts_file))
        write_parquet_atomic(pl.DataFrame(self.task_rows(run), schema=EVAL_SCHEMA), run.path(self.tasks_file))


def per_category(tasks: list[dict]) -> dict[str, dict]:
    """Mean pass@1 and pass@k, tasks, tokens and wall time per category."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for task in tasks:
        groups[task["category"]].append(task)
    return {name: {"tasks": len(rows), "pass_at_1": statistics.mean(r["pass_at_1"] for r in rows),
                   "pass_at_k": statistics.mean(r["pass_at_k"] for r in rows),
                   "tokens": sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows),
                   "wall_s": round(sum(r["wall_s"] for r in rows), 2)}
            for name, rows in sorted(groups.items())}


@hookimpl
def litecoder_register_stages(register):
    register("eval", EvalStage, config=EvalConfig)
