"""What a run may spend and what it spent: requests, tokens, money and wall time.

Limits (``budget.*``) and prices (``prices.<model>``) are checked as items end. Every stage
records the usage of each item's requests in the store, so spending is read back from it: a
budget covers the whole run across resumes (wall time is the exception and counts from this
invocation's start), and the end-of-run summary, the sweep comparison and the report agree.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError
from .outcomes import ACCEPTED, KEPT
from .store import RunStore


@dataclass
class PriceConfig:
    """USD per million tokens of one model (``prices.<model>``)."""

    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0


@dataclass
class BudgetConfig:
    max_requests: Optional[int] = None
    #: prompt + completion tokens
    max_tokens: Optional[int] = None
    #: needs prices: ``prices.<model>`` or the backend's ``price_input_per_mtok``/``price_output_per_mtok``
    max_cost_usd: Optional[float] = None
    max_wall_time_s: Optional[float] = None
    #: sample/judge rounds when ``sample.target_accepted`` is set
    max_rounds: int = 50


def request_cost(backend_config: DictConfig, prompt_tokens: int | None, completion_tokens: int | None) -> float:
    price_in = backend_config.get("price_input_per_mtok") or 0.0
    price_out = backend_config.get("price_output_per_mtok") or 0.0
    return ((prompt_tokens or 0) * price_in + (completion_tokens or 0) * price_out) / 1e6


def served_model(backend_config: DictConfig) -> str | None:
    """The model name requests carry: ``model``, else the directory of a model litecoder serves."""
    model = OmegaConf.select(backend_config, "model", default=None)
    path = OmegaConf.select(backend_config, "model_path", default=None)
    served_elsewhere = OmegaConf.select(backend_config, "url", default=None)
    return model or (Path(str(path)).name if path and not served_elsewhere else None)


def model_price(prices: DictConfig, model: str) -> tuple[float, float] | None:
    """``prices.<model>`` as (input, output) USD per million tokens; a malformed entry is an error."""
    entry = prices.get(model)
    if entry is None:
        return None
    try:
        price = OmegaConf.merge(OmegaConf.structured(PriceConfig), entry)
    except (OmegaConfBaseException, ValueError) as exc:
        raise ConfigError(f"prices.{model} must be {{input_per_mtok: USD, output_per_mtok: USD}}, got {entry} "
                          f"({str(exc).splitlines()[0]})") from exc
    return float(price.input_per_mtok), float(price.output_per_mtok)


def check_prices(prices: DictConfig) -> None:
    """Every ``prices.<model>`` entry against ``PriceConfig``, so a typo fails at start-up."""
    for model in prices:
        model_price(prices, str(model))


def apply_prices(cfg: DictConfig, stages: tuple[str, ...]) -> list[str]:
    """Fill each backend's unset prices from ``prices.<model>``; returns the models with no price.

    A backend's own ``price_*_per_mtok`` wins, so one stage can be priced differently.
    """
    check_prices(cfg.prices)
    nodes = [cfg.backend] + [OmegaConf.select(cfg, f"{s}.backend", default=None) for s in stages]
    unpriced: list[str] = []
    for node in nodes:
        if node is None or "price_input_per_mtok" not in node:
            continue
        model = served_model(node)
        price = model_price(cfg.prices, model) if model else None
        if price is not None:
            if node.price_input_per_mtok is None:
                node.price_input_per_mtok = price[0]
            if node.price_output_per_mtok is None:
                node.price_output_per_mtok = price[1]
        elif node.price_input_per_mtok is None and node.price_output_per_mtok is None and str(model) not in unpriced:
            unpriced.append(str(model))
    return unpriced


class Budget:
    def __init__(self, config: DictConfig, spent: dict[str, float] | None = None) -> None:
        self.config = config
        spent = spent or {}
        self.requests = int(spent.get("requests", 0))
        self.tokens = int(spent.get("prompt_tokens", 0) + spent.get("completion_tokens", 0))
        self.cost = float(spent.get("cost_usd", 0.0))
        self.started = time.monotonic()

    def add(self, usage: dict) -> None:
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


FIELDS = ("requests", "prompt_tokens", "completion_tokens", "cost_usd")


def spend(store: RunStore, order: list[str] | tuple[str, ...] = ()) -> dict:
    """Spending by stage (in ``order`` first), the total, and per accepted task / kept trajectory."""
    names = [s for s in order if s in store.stage_names()] + [s for s in store.stage_names() if s not in order]
    stages = []
    for name in names:
        totals = store.totals(name)
        stages.append({"stage": name, **_row(totals)})
    total = _row({f: sum(s[f] for s in stages) for f in FIELDS})
    accepted = store.counts("judge").get(ACCEPTED, 0)
    kept = store.counts("trajectory").get(KEPT, 0)
    return {
        "stages": stages,
        "total": total,
        "accepted_tasks": accepted,
        "kept_trajectories": kept,
        "per_accepted_task": _per(total, accepted),
        "per_kept_trajectory": _per(total, kept),
    }


def _row(totals: dict[str, float]) -> dict:
    row = {f: (round(float(totals.get(f, 0)), 6) if f == "cost_usd" else int(totals.get(f, 0))) for f in FIELDS}
    row["tokens"] = row["prompt_tokens"] + row["completion_tokens"]
    return row


def _per(total: dict, count: int) -> dict[str, float] | None:
    if not count:
        return None
    return {"tokens": total["tokens"] / count, "cost_usd": total["cost_usd"] / count}


def spend_lines(figures: dict) -> list[str]:
    """The end-of-run summary's lines: one per stage that spent anything, then per item."""
    lines = []
    for row in figures["stages"]:
        if row["requests"] or row["tokens"]:
            lines.append(
                f"spent in {row['stage']}: {row['requests']:,} requests, {row['tokens']:,} tokens "
                f"({row['prompt_tokens']:,} prompt + {row['completion_tokens']:,} completion), ${row['cost_usd']:.4f}"
            )
    total = figures["total"]
    if not lines:
        return lines
    per = []
    for label, key in (("accepted task", "per_accepted_task"), ("kept trajectory", "per_kept_trajectory")):
        value = figures[key]
        per.append(f"per {label}: " + (f"{value['tokens']:,.0f} tokens, ${value['cost_usd']:.4f}" if value else "none yet"))
    lines.append(f"spent in total: {total['requests']:,} requests, {total['tokens']:,} tokens, ${total['cost_usd']:.4f}; "
                 + "; ".join(per))
    return lines
