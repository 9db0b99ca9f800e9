"""What a run spent: requests, tokens and money per stage, and per item that came out of it.

Every stage records the usage of each item's requests in the store, so these figures are
read back from it: they cover the whole run across resumes, and the end-of-run summary,
the sweep comparison and the report all agree.
"""

from __future__ import annotations


from .outcomes import ACCEPTED, KEPT
from .store import RunStore

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
