"""How hard a task is, from the teacher's pass rate over ``trajectory.rollouts`` rollouts.

RL training wants tasks the teacher neither always nor never solves; the label and the rate
go into ``trajectory_tasks.parquet``, each exported task and the report, and
``export.harbor.pass_rate`` keeps a band of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Sequence

if TYPE_CHECKING:
    from omegaconf import DictConfig

UNSOLVED, HARD, MEDIUM, EASY, UNKNOWN = "unsolved", "hard", "medium", "easy", "unknown"
LABELS = (UNSOLVED, HARD, MEDIUM, EASY)


@dataclass
class DifficultyConfig:
    """The pass-rate thresholds of the labels: ``unsolved`` at 0, ``hard`` below
    ``hard_below``, ``easy`` above ``easy_above``, ``medium`` between."""

    easy_above: float = 0.8
    hard_below: float = 0.2


def label(pass_rate: float | None, config: DictConfig) -> str:
    if pass_rate is None:
        return UNKNOWN
    if pass_rate <= 0:
        return UNSOLVED
    if pass_rate < float(config.hard_below):
        return HARD
    return EASY if pass_rate > float(config.easy_above) else MEDIUM


def pass_rates(records: Iterable[dict], config: DictConfig) -> list[dict]:
    """Per task over its finished rollouts: rollouts, solved, kept, pass@1 (solved /
    rollouts), pass@k (any solved) and the difficulty label of pass@1. A tampered rollout
    says nothing of how hard the task is, and is left out."""
    tasks: dict[str, dict] = {}
    for record in records:
        if record.get("tampered"):
            continue
        entry = tasks.setdefault(record["task_id"], {"task_id": record["task_id"], "rollouts": 0, "solved": 0, "kept": 0})
        entry["rollouts"] += 1
        entry["solved"] += int(record.get("reward") == 1)
        entry["kept"] += int(record.get("status") == "kept")
    for entry in tasks.values():
        entry["pass_at_1"], entry["pass_at_k"] = pass_at(entry["solved"], entry["rollouts"])
        entry["difficulty"] = label(entry["pass_at_1"], config)
    return list(tasks.values())


def pass_at(solved: int, rollouts: int) -> tuple[float, float]:
    """pass@1 (the share of rollouts that solved the task) and pass@k (whether any did)."""
    return solved / rollouts, float(solved > 0)


def in_band(pass_rate: float | None, band: Sequence[float] | None) -> bool:
    """Whether a task's pass rate lies in ``[low, high]`` (no band: every task does)."""
    if band is None:
        return True
    low, high = (float(x) for x in band)
    return pass_rate is not None and low <= pass_rate <= high
