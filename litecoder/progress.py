"""Progress of a long stage: a tqdm bar on a terminal, plain log lines everywhere else.

Both show items done of total, the stage's own tallies (accepted, failed, solved, ...), the
run's tokens and cost so far, and the time left. The time left comes from how long the
finished items each took and how many run at once, not from the finishing rate: when a batch
of concurrent items ends together, the rate leaps, but the items' own time does not. Log lines come every
``run.progress_interval`` seconds and once at the end, so CI logs and files show progress
without carriage-return noise.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import TYPE_CHECKING

from tqdm import tqdm

if TYPE_CHECKING:
    from .run import Run

log = logging.getLogger("litecoder.progress")


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


class Progress:
    def __init__(self, run: Run, desc: str, total: int, unit: str, *, concurrency: int = 1) -> None:
        settings = run.cfg.run
        self.bar_shown = settings.progress if settings.progress is not None else sys.stderr.isatty()
        self.desc, self.total, self.unit = desc, total, unit
        self.budget = run.budget
        self.interval = float(settings.get("progress_interval", 30.0))
        self.done = 0
        self.concurrency = max(1, int(concurrency))
        #: seconds the finished items took, each from its start to its end
        self.item_seconds: list[float] = []
        self.logged = -1  # items done at the last log line
        self.tallies: dict[str, int] = {}
        self.started = self.last_line = time.monotonic()
        # tqdm's own time left is rate-based; the postfix carries ours
        self.bar = tqdm(total=total, desc=desc, unit=unit, disable=not self.bar_shown,
                        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")

    def update(self, n: int = 1, *, seconds: float | None = None, **tallies: int) -> None:
        """``n`` more items finished, after ``seconds`` of work; ``tallies`` are added to the
        named counts."""
        self.done += n
        if seconds is not None:
            self.item_seconds.append(seconds / max(n, 1))
        for name, value in tallies.items():
            self.tallies[name] = self.tallies.get(name, 0) + int(value)
        if self.bar_shown:
            postfix = self._postfix()
            eta = self.eta_seconds()
            if eta is not None:
                postfix["eta"] = _duration(eta)
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(n)
        elif time.monotonic() - self.last_line >= self.interval:
            self._log_line()

    def _postfix(self) -> dict:
        postfix: dict = {k: v for k, v in self.tallies.items() if v}
        postfix["tokens"] = self.budget.tokens
        if self.budget.cost:
            postfix["cost"] = f"${self.budget.cost:.4f}"
        return postfix

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        parts = [f"{self.desc}: {self.done}/{self.total} {self.unit}s"]
        parts += [f"{k} {v}" for k, v in self._postfix().items()]
        parts.append(f"elapsed {_duration(elapsed)}")
        eta = self.eta_seconds()
        if eta is not None:
            parts.append(f"eta {_duration(eta)}")
        return ", ".join(parts)

    def eta_seconds(self) -> float | None:
        """Seconds left: the remaining items at the finished ones' mean time, ``concurrency``
        at once (the finishing rate when items say nothing of their time)."""
        if not 0 < self.done < self.total:
            return None
        remaining = self.total - self.done
        if self.item_seconds:
            mean = sum(self.item_seconds) / len(self.item_seconds)
            return mean * remaining / min(self.concurrency, remaining)
        return (time.monotonic() - self.started) / self.done * remaining

    def _log_line(self) -> None:
        self.last_line, self.logged = time.monotonic(), self.done
        log.info(self.line())

    def close(self) -> None:
        if self.bar_shown:
            self.bar.close()
        elif self.total and self.logged != self.done:
            self._log_line()
