"""Model usage as the stages count it: requests and tokens, of a request, an episode or an item.

Each item's usage goes with its ``Done`` to the runner, which prices it and adds it to the
run's budget; these helpers are the one place its keys are spelled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from .agents.base import Turn
    from .backends.base import Completion

KEYS = ("requests", "prompt_tokens", "completion_tokens")


def new_usage() -> dict:
    return dict.fromkeys(KEYS, 0)


def add_usage(total: dict, usage: dict) -> dict:
    """Add ``usage`` into ``total`` (in place) and return it."""
    for key in KEYS:
        total[key] = total.get(key, 0) + usage.get(key, 0)
    return total


def of_request(result: Completion) -> dict:
    """One request's usage, from a completion."""
    return {"requests": 1, "prompt_tokens": result.prompt_tokens or 0, "completion_tokens": result.completion_tokens or 0}


def of_turns(turns: Iterable[Turn]) -> dict:
    """An episode's usage: one request per turn (``agents.base.Turn``)."""
    turns = list(turns)
    return {"requests": len(turns), "prompt_tokens": sum(t.prompt_tokens or 0 for t in turns),
            "completion_tokens": sum(t.completion_tokens or 0 for t in turns)}
