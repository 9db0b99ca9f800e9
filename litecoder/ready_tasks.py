"""A run's task set: its ready environments, prepared by the environment stage or imported.

Every stage that works on tasks (trajectory, eval, the task exports) reads them here, so
imported tasks flow through the pipeline exactly like synthesized ones.
"""

from __future__ import annotations

from .plugins import get_plugins
from .outcomes import READY
from .stage import task_sources
from .store import DONE, Item, RunStore


def has_environments(store: RunStore) -> bool:
    """Whether a stage that makes tasks has run (its ready items may still be none)."""
    return any(store.stage_started(stage) for stage in task_sources(get_plugins()))


def ready_items(store: RunStore) -> list[Item]:
    """The ready tasks' store items, in the order of the stages that made them."""
    return [i for stage in task_sources(get_plugins()) for i in store.items(stage, DONE) if i.outcome == READY]


def ready_environments(store: RunStore) -> list[dict]:
    """The ready environments' records, each with a ``category``: its own (an imported
    task's), else the sampled task's domain and subtopic."""
    judged = {i.key: i.record for i in store.items("judge", DONE)}
    out = []
    for item in ready_items(store):
        task = judged.get(item.key, {})
        sampled = "/".join(str(p) for p in (task.get("domain"), task.get("subtopic")) if p) or None
        out.append({**item.record, "category": item.record.get("category") or sampled})
    return out
