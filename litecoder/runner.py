"""The loop every item stage runs: its items, a few at a time, into the run store.

A stage (``litecoder.stage.ItemStage``) says what is its own: which items it has, the work
for one item (an async function returning ``Done``), and its tables. ``run_stage`` owns the
rest, the same way for every stage: resuming from the store, the to-do list, bounded
concurrency (``Dispatcher``), progress, the items' costs and the run's budgets, storing each
item's records as soon as it ends, the circuit breaker, closing the client, exporting the
tables in ``finally``, and the summary with its counts and stop reason. One breaker rule
holds for every stage: when the first requests all fail, or every item's request failed, the
stage stops with ``BackendError`` naming the backend's diagnosis (a dead server ends a run in
seconds, not after every retry).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from .budget import request_cost
from .dispatch import Dispatcher
from .errors import BackendError
from .progress import Progress
from .stage import Item, ItemStage, Stage, Work

if TYPE_CHECKING:
    from .run import Run
    from .stage import Plan

log = logging.getLogger(__name__)

#: one record in the run store: (key, state, outcome, reason, record)
Entry = tuple[str, str, str, "str | None", dict]


@dataclass
class Done:
    """What one item of work produced."""

    #: the records to store, usually one (a sampling request stores one per choice)
    entries: list[Entry]
    #: model usage (``requests``, ``prompt_tokens``, ``completion_tokens``); the runner prices
    #: it (``cost_usd``, in place, so records holding it see the cost) and adds it to the budget
    usage: dict | None = None
    #: why a model request failed, if one did (the breaker counts these)
    request_error: str | None = None
    #: units of progress (sampled tasks for a request of n choices)
    progress: int = 1
    #: progress-bar tallies; default: one per entry's outcome
    tally: dict = field(default_factory=dict)


def run_stage(run: Run, stage: Stage) -> dict:
    """Run any stage: an item stage from its declaration, another through its own ``run``.
    Returns the summary: for an item stage the plan's facts, the counts by state and outcome,
    the stage's own figures, and ``stopped_by`` when a budget stopped it."""
    if not isinstance(stage, ItemStage):
        return stage.run(run) or {}
    finished = open_items(run, stage, stage.inputs(run), what=stage.what)
    stopped = None
    try:
        plan = stage.plan(run, finished)
        if plan.total:
            stopped = asyncio.run(_run_plan(run, stage, plan))
    finally:
        stage.export(run)  # the tables reflect the store even after an error or Ctrl-C
    summary = {**plan.facts, **run.store.counts(stage.name), **stage.summary(run)}
    spent = run.budget.exhausted() if stopped else None
    if spent:
        summary["stopped_by"] = spent
    return summary


async def _run_plan(run: Run, stage: ItemStage, plan: Plan) -> str | None:
    try:
        return await run_items(run, stage.name, plan.items, plan.work, total=plan.total, label=plan.label or stage.name,
                               unit=stage.unit, limit=stage.limit(run), table=run.path(stage.table), stop=plan.stop,
                               blocked=plan.blocked, calls_model=stage.calls_model)
    finally:
        if plan.aclose is not None:
            await plan.aclose()


def open_items(run: Run, stage: ItemStage, inputs: set[str] | None, *, what: str = "results") -> set[str]:
    """Open the stage in the store with its identity; returns the keys already finished.
    Earlier results made under another identity are stale: redone where ``inputs`` names the
    stage's items, else kept aside."""
    finished, stale = run.store.open_stage(stage.name, stage.identity(run.cfg, run.backend_config(stage.name)), inputs,
                                           retry_failed=run.cfg.run.retry_failed)
    if stale:
        fate = "will be redone" if inputs is not None else "are kept aside"
        log.warning("%s: %d earlier %s are stale (config or inputs changed) and %s", stage.name, stale, what, fate)
    return finished


async def run_items(run: Run, stage: str, items: Iterable[Item], work: Work[Item], *,
                    total: int, label: str, unit: str, limit: int, table: Path,
                    stop: Callable[[], str | None] | None = None,
                    blocked: Callable[[int], bool] | None = None, calls_model: bool = True) -> str | None:
    """Run ``work(item, client)`` over ``items`` with at most ``limit`` at once; returns why
    dispatching stopped early (a budget, a target), if it did. ``total`` sizes the progress.
    A stage that calls no model gets no client (None), and starts no backend."""
    backend = run.backend(stage) if calls_model else None
    config = run.backend_config(stage) if calls_model else None
    client = run.client(stage) if calls_model else None
    bar = Progress(run, label, total, unit, concurrency=limit)
    errors: list[str] = []
    count = 0

    async def one(item: Item) -> bool:
        nonlocal count
        count += 1
        started = time.monotonic()
        done = await work(item, client)
        if done.usage is not None and config is not None:
            done.usage["cost_usd"] = request_cost(config, done.usage["prompt_tokens"], done.usage["completion_tokens"])
            run.budget.add(done.usage)
        run.store.put(stage, done.entries)
        bar.update(done.progress, seconds=time.monotonic() - started, **(done.tally or _outcomes(done.entries)))
        if done.request_error is not None:
            errors.append(done.request_error)
        return done.request_error is None

    dispatcher = Dispatcher(limit, stop=lambda: (stop() if stop else None) or run.budget.exhausted(),
                            blocked=blocked or (lambda in_flight: False))
    try:
        stopped = await dispatcher.run(items, one)
    finally:
        bar.close()
        if client is not None:
            await client.aclose()
    if stopped == "breaker" or (errors and len(errors) == count):
        cause = (backend.diagnose() if backend is not None else None) or f"first error: {errors[0]}"
        raise BackendError(f"{stage} requests keep failing, stopping (recorded in {table}); {cause}")
    return stopped


def _outcomes(entries: list[Entry]) -> dict:
    tally: dict[str, int] = {}
    for _, _, outcome, _, _ in entries:
        tally[outcome] = tally.get(outcome, 0) + 1
    return tally
