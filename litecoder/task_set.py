"""A run's task set: its ready environments, prepared by the environment stage or imported.

Every stage that works on tasks (trajectory, eval, the task exports) reads them here, so
imported tasks flow through the pipeline exactly like synthesized ones.
"""

from __future__ import annotations

from typing import Any

from .records import READY
from .store import DONE

#: the stages whose ready items are task environments
TASK_SOURCES = ("environment", "ingest")


def has_environments(store: Any) -> bool:
    """Whether a stage that makes environments has run (its ready items may still be none)."""
    return any(store.stage_started(stage) for stage in TASK_SOURCES)


def ready_items(store: Any) -> list[Any]:
    """The ready environments' store items, prepared ones first."""
    return [i for stage in TASK_SOURCES for i in store.items(stage, DONE) if i.outcome == READY]


def ready_environments(store: Any) -> list[dict]:
    """The ready environments' records, each with a ``category``: its own (an imported
    task's), else the sampled task's domain and subtopic."""
    judged = {i.key: i.record for i in store.items("judge", DONE)}
    out = []
    for item in ready_items(store):
        task = judged.get(item.key, {})
        sampled = "/".join(str(p) for p in (task.get("domain"), task.get("subtopic")) if p) or None
        out.append({**item.record, "category": item.record.get("category") or sampled})
    return out
