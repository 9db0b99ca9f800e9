"""Run many model requests with a bounded number in flight, and stop early when told to.

Stages hand over their items and a worker; the dispatcher keeps ``limit`` workers busy,
pauses while ``blocked(in_flight)`` (e.g. enough acceptances are already in flight), stops
dispatching once ``stop()`` names a reason (a budget, a target), and trips a breaker when
the first ``breaker`` requests all fail: a dead server should end the run quickly, not
after every item has worked through its retries.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Iterable, TypeVar

T = TypeVar("T")


class Dispatcher:
    def __init__(
        self,
        limit: int,
        *,
        stop: Callable[[], str | None] = lambda: None,
        blocked: Callable[[int], bool] = lambda in_flight: False,
        breaker: int = 32,
    ) -> None:
        self.limit = max(1, limit)
        self.stop = stop
        self.blocked = blocked
        self.breaker = breaker
        self.successes = 0
        self.failures_in_a_row = 0

    @property
    def tripped(self) -> bool:
        return self.successes == 0 and self.failures_in_a_row >= self.breaker

    async def run(self, items: Iterable[T], worker: Callable[[T], Awaitable[bool]]) -> str | None:
        """Returns why dispatching stopped early (None when every item was dispatched)."""
        queue = iter(items)
        pending: set[asyncio.Task] = set()
        reason: str | None = None
        exhausted = False
        try:
            while True:
                while not exhausted and reason is None and len(pending) < self.limit:
                    reason = self.stop() or ("breaker" if self.tripped else None)
                    if reason or self.blocked(len(pending)):
                        break
                    try:
                        item = next(queue)
                    except StopIteration:
                        exhausted = True
                        break
                    pending.add(asyncio.ensure_future(worker(item)))
                if not pending:
                    if reason is None and not exhausted and self.blocked(0):
                        reason = self.stop() or "blocked"
                    break
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task.result():
                        self.successes += 1
                        self.failures_in_a_row = 0
                    else:
                        self.failures_in_a_row += 1
        finally:
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        return reason

