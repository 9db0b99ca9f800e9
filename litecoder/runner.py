"""The loop every model-calling stage runs: its items, a few at a time, into the run store.

A stage says what is its own: which items it has (``open_items`` resumes them from the
store), the work for one item (an async method returning ``Done``), and its tables. The
runner owns the rest: bounded concurrency (``Dispatcher``), progress, the items' costs and
the run's budgets, storing each item's records as soon as it ends, the circuit breaker, and
closing the client. One breaker rule holds for every stage: when the first requests all
fail, or every item's request failed, the stage stops with ``BackendError`` naming the
backend's diagnosis (a dead server ends a run in seconds, not after every retry).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable

from .budget import request_cost
from .dispatch import Dispatcher
from .errors import BackendError
from .progress import Progress

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


def open_items(run: Any, stage: Any, inputs: set[str] | None, *, what: str = "results") -> set[str]:
    """Open the stage in the store with its identity; returns the keys already finished.
    Earlier results made under another identity are stale: redone where ``inputs`` names the
    stage's items, else kept aside."""
    finished, stale = run.store.open_stage(stage.name, stage.identity(run.cfg, run.backend_config(stage.name)), inputs,
                                           retry_failed=run.cfg.run.retry_failed)
    if stale:
        fate = "will be redone" if inputs is not None else "are kept aside"
        log.warning("%s: %d earlier %s are stale (config or inputs changed) and %s", stage.name, stale, what, fate)
    return finished


async def run_items(run: Any, stage: str, items: Iterable[Any], work: Callable[[Any, Any], Awaitable[Done]], *,
                    total: int, label: str, unit: str, limit: int, table: Path,
                    stop: Callable[[], str | None] | None = None,
                    blocked: Callable[[int], bool] | None = None) -> str | None:
    """Run ``work(item, client)`` over ``items`` with at most ``limit`` at once; returns why
    dispatching stopped early (a budget, a target), if it did. ``total`` sizes the progress."""
    backend, config, client = run.backend(stage), run.backend_config(stage), run.client(stage)
    bar = Progress(run, label, total, unit, concurrency=limit)
    errors: list[str] = []
    count = 0

    async def one(item: Any) -> bool:
        nonlocal count
        count += 1
        started = time.monotonic()
        done = await work(item, client)
        if done.usage is not None:
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
        await client.aclose()
    if stopped == "breaker" or (errors and len(errors) == count):
        cause = backend.diagnose() or f"first error: {errors[0]}"
        raise BackendError(f"{stage} requests keep failing, stopping (recorded in {table}); {cause}")
    return stopped


def _outcomes(entries: list[Entry]) -> dict:
    tally: dict[str, int] = {}
    for _, _, outcome, _, _ in entries:
        tally[outcome] = tally.get(outcome, 0) + 1
    return tally


def summary_counts(run: Any, stage: str, done_state: str) -> dict:
    """The stage's item counts by outcome and failure, without the ``done`` total."""
    return {k: v for k, v in run.store.counts(stage).items() if k != done_state}
