"""A table that compares runs, e.g. the jobs of a prompt sweep, by what they yield and cost.

Every figure is read back from each run's store, so the table can be rebuilt at any time
(``python -m litecoder --compare DIR``) and covers jobs that were resumed or cut short.
"""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import yaml

from .outcomes import ACCEPTED, KEPT, REJECTED
from .store import DONE, FAILED, RunStore
from .budget import spend
from .tallies import judge_scores
from .tables import write_text_atomic

STORE_FILE = "store.sqlite"
TABLE_CSV = "comparison.csv"
TABLE_MD = "comparison.md"
#: overrides that name where a job writes or how it shows progress, not what it does
NOT_A_VARIANT = ("run.", "stage=", "hydra.", "backend.url=")

#: the columns of the Markdown table, in order, with their headers
SHOWN = {
    "job": "job",
    "status": "status",
    "sampled": "sampled",
    "duplicate_rate": "dup rate",
    "accepted": "accepted",
    "acceptance_rate": "accept rate",
    "mean_aggregate": "mean score",
    "tokens": "tokens",
    "tokens_per_accepted": "tokens/accepted",
    "cost_usd": "cost $",
    "cost_per_accepted": "$/accepted",
    "teacher_pass_rate": "teacher pass rate",
    "turns_per_rollout": "turns/rollout",
    "tokens_per_kept": "tokens/kept trajectory",
    "eval_model": "eval model",
    "eval_tasks": "eval tasks",
    "eval_pass_at_1": "pass@1",
    "eval_pass_at_k": "pass@k",
    "eval_tokens_per_rollout": "tokens/rollout",
    "eval_wall_s": "eval wall s",
}
#: columns shown even when no run has a figure for them
ALWAYS_SHOWN = ("job", "status")


def run_dirs(root: Path) -> list[Path]:
    """Run directories under ``root`` (itself, or its job subdirectories at any depth)."""
    return sorted(p.parent for p in Path(root).rglob(STORE_FILE))


def job_overrides(run_dir: Path) -> list[str]:
    """The command-line overrides the run was made with, minus where it writes and what it runs."""
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    if not overrides_file.is_file():
        return []
    overrides = yaml.safe_load(overrides_file.read_text()) or []
    return [str(o) for o in overrides if not str(o).lstrip("+~").startswith(NOT_A_VARIANT)]


def job_labels(dirs: list[Path], root: Path) -> list[str]:
    """What sets each job apart: the overrides not shared by all of them, else its directory."""
    overrides = [job_overrides(d) for d in dirs]
    common = set.intersection(*(set(o) for o in overrides)) if len(dirs) > 1 else set()
    labels = []
    for run_dir, own in zip(dirs, overrides):
        shown = [o for o in own if o not in common]
        labels.append(" ".join(shown) or (str(run_dir.relative_to(root)) if run_dir != root else run_dir.name))
    return labels


def run_figures(run_dir: Path) -> dict:
    """One run's yield and cost: sampled, duplicates, acceptance, judge scores, tokens, money."""
    store = RunStore(run_dir / STORE_FILE)
    try:
        sample, judge = store.counts("sample"), store.counts("judge")
        sampled = sample.get(DONE, 0) + sample.get(FAILED, 0)
        judged = judge.get(DONE, 0)
        duplicates = judge.get("duplicate", 0)
        accepted = judge.get(ACCEPTED, 0)
        scores, scored = judge_scores(store)
        aggregates = [float(a) for a in scored if a is not None]
        spent = spend(store)
        rollouts = rollout_figures(store)
    finally:
        store.close()
    status_file = run_dir / "summary.json"
    status = json.loads(status_file.read_text()).get("status", "?") if status_file.is_file() else "unfinished"
    figures: dict = {
        "status": status,
        "sampled": sampled,
        "sample_failed": sample.get(FAILED, 0),
        "judged": judged,
        "duplicates": duplicates,
        "duplicate_rate": _ratio(duplicates, judged),
        "accepted": accepted,
        "rejected": judge.get(REJECTED, 0),
        "judge_failed": judge.get(FAILED, 0),
        "acceptance_rate": _ratio(accepted, sampled),
        "mean_aggregate": _mean(aggregates),
        "requests": spent["total"]["requests"],
        "tokens": spent["total"]["tokens"],
        "cost_usd": spent["total"]["cost_usd"],
        "tokens_per_accepted": (spent["per_accepted_task"] or {}).get("tokens"),
        "cost_per_accepted": (spent["per_accepted_task"] or {}).get("cost_usd"),
    }
    for criterion, counts in sorted(scores.items()):
        figures[f"mean_{criterion}"] = sum(int(score) * n for score, n in counts.items()) / sum(counts.values())
    if not sampled:  # a run that sampled nothing (an eval of tasks made elsewhere) has no sampling figures
        figures = {k: v for k, v in figures.items() if k in ("status", "requests", "tokens", "cost_usd")}
    return {**figures, **rollouts, **stage_spend(spent)}


def stage_spend(spent: dict) -> dict:
    """``<stage>_tokens`` and ``<stage>_cost_usd`` for every stage that spent anything, a
    plugin's included: the CSV's per-stage columns."""
    figures: dict = {}
    for row in spent["stages"]:
        if row["requests"] or row["tokens"]:
            figures[f"{row['stage']}_tokens"], figures[f"{row['stage']}_cost_usd"] = row["tokens"], row["cost_usd"]
    return figures


def rollout_figures(store: RunStore) -> dict:
    """The teacher's pass rate, turns and tokens per kept trajectory (stage=trajectory), and
    the evaluated model's pass@1 and pass@k, tokens and wall time (stage=eval)."""
    figures: dict = {}
    if store.stage_started("trajectory"):
        done = [i.record for i in store.items("trajectory", DONE)]
        kept = [r for r in done if r.get("status") == KEPT]
        figures.update(teacher_pass_rate=_mean([float(r.get("reward") == 1) for r in done]),
                       turns_per_rollout=_mean([r.get("turns") or 0 for r in done]),
                       tokens_per_kept=_mean([_tokens(r) for r in kept]))
    if store.stage_started("eval"):
        done = [i.record for i in store.items("eval", DONE)]
        by_task: dict[str, list[float]] = {}
        for record in done:
            by_task.setdefault(record["task_id"], []).append(float(record.get("reward") == 1))
        figures.update(eval_model=next((r.get("model") for r in done if r.get("model")), None), eval_tasks=len(by_task),
                       eval_pass_at_1=_mean([_mean(v) for v in by_task.values()]),
                       eval_pass_at_k=_mean([float(max(v)) for v in by_task.values()]),
                       eval_tokens_per_rollout=_mean([_tokens(r) for r in done]),
                       eval_wall_s=round(sum(r.get("wall_s") or 0.0 for r in done), 1) if done else None)
    return figures


def _tokens(record: dict) -> int:
    return (record.get("prompt_tokens") or 0) + (record.get("completion_tokens") or 0)


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _mean(values: list) -> float | None:
    return sum(values) / len(values) if values else None


def comparison(root: Path) -> pl.DataFrame:
    """One row per run under ``root``, best acceptance rate first (then best mean score)."""
    root = Path(root)
    dirs = run_dirs(root)
    rows = [{"job": label, "dir": str(d.relative_to(root)) if d != root else ".",
             "overrides": " ".join(job_overrides(d)), **run_figures(d)}
            for d, label in zip(dirs, job_labels(dirs, root))]
    if not rows:
        return pl.DataFrame()
    frame = pl.DataFrame(rows, infer_schema_length=None)
    order = [c for c in ("eval_pass_at_1", "acceptance_rate", "mean_aggregate") if c in frame.columns]
    return frame.sort(order, descending=True, nulls_last=True)


def markdown(frame: pl.DataFrame) -> str:
    """The main columns as a Markdown table; criteria means follow the mean aggregate. Columns
    no run has a figure for (the sampling columns of an eval sweep) are left out."""
    criteria = [c for c in frame.columns if c.startswith("mean_") and c != "mean_aggregate"]
    columns = [c for c in SHOWN if c in frame.columns and (c in ALWAYS_SHOWN or _has_figures(frame[c]))]
    at = columns.index("mean_aggregate") + 1 if "mean_aggregate" in columns else len(columns)
    columns[at:at] = [c for c in criteria if _has_figures(frame[c])]
    headers = [SHOWN.get(c, c.removeprefix("mean_")) for c in columns]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in frame.select(columns).iter_rows(named=True):
        lines.append("| " + " | ".join(_cell(c, row[c]) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _has_figures(column: pl.Series) -> bool:
    return column.null_count() < len(column)


def _cell(column: str, value: object) -> str:
    if value is None:
        return "–"
    if column.endswith("_rate"):
        return f"{value:.1%}"
    if column.startswith("cost"):
        return f"{value:.4f}"
    if isinstance(value, float):
        return f"{value:,.0f}" if column.startswith("tokens") else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|").replace("\r", "\\r").replace("\n", "\\n")


def write_comparison(root: Path) -> pl.DataFrame:
    """Write ``comparison.csv`` (every column) and ``comparison.md`` under ``root``; returns the table."""
    frame = comparison(root)
    if not frame.is_empty():
        write_text_atomic(Path(root) / TABLE_CSV, frame.write_csv())
        write_text_atomic(Path(root) / TABLE_MD, markdown(frame))
    return frame
