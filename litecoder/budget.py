"""Limits on what a run may spend: requests, tokens, money and wall time.

Spending is read back from the run store when a run resumes, so a budget covers the whole
run, not one invocation; wall time is the exception and counts from this invocation's start.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional


@dataclass
class BudgetConfig:
    max_requests: Optional[int] = None
    #: prompt + completion tokens
    max_tokens: Optional[int] = None
    #: needs prices on the backends (``price_input_per_mtok``, ``price_output_per_mtok``)
    max_cost_usd: Optional[float] = None
    max_wall_time_s: Optional[float] = None
    #: sample/judge rounds when ``sample.target_accepted`` is set
    max_rounds: int = 50


def request_cost(backend_config: Any, prompt_tokens: int | None, completion_tokens: int | None) -> float:
    price_in = getattr(backend_config, "price_input_per_mtok", None) or 0.0
    price_out = getattr(backend_config, "price_output_per_mtok", None) or 0.0
    return ((prompt_tokens or 0) * price_in + (completion_tokens or 0) * price_out) / 1e6


class Budget:
    def __init__(self, config: Any, spent: dict[str, float] | None = None) -> None:
        self.config = config
        spent = spent or {}
        self.requests = int(spent.get("requests", 0))
        self.tokens = int(spent.get("prompt_tokens", 0) + spent.get("completion_tokens", 0))
        self.cost = float(spent.get("cost_usd", 0.0))
        self.started = time.monotonic()

    def add(self, usage: dict[str, Any]) -> None:
        self.requests += int(usage.get("requests") or 0)
        self.tokens += int((usage.get("prompt_tokens") or 0) + (usage.get("completion_tokens") or 0))
        self.cost += float(usage.get("cost_usd") or 0.0)

    def exhausted(self) -> str | None:
        """The limit that is reached, as ``budget.<name>=<value>``, or None."""
        c = self.config
        if c.max_requests is not None and self.requests >= c.max_requests:
            return f"budget.max_requests={c.max_requests} (spent {self.requests})"
        if c.max_tokens is not None and self.tokens >= c.max_tokens:
            return f"budget.max_tokens={c.max_tokens} (spent {self.tokens})"
        if c.max_cost_usd is not None and self.cost >= c.max_cost_usd:
            return f"budget.max_cost_usd={c.max_cost_usd} (spent {self.cost:.4f})"
        if c.max_wall_time_s is not None and time.monotonic() - self.started >= c.max_wall_time_s:
            return f"budget.max_wall_time_s={c.max_wall_time_s}"
        return None
