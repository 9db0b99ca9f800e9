"""Counts of a run that the report, the sweep comparison and the end-of-run lines share:
the judge's scores and the reconciliation of every sampled task, counted inside SQLite."""

from __future__ import annotations

from collections import Counter

from .store import DONE, FAILED, RunStore

from .outcomes import ACCEPTED, CONTAMINATED, DUPLICATE, REJECTED


#: every score the judge gave, as (criterion, score, how many tasks got it)
SCORE_COUNTS_SQL = """
SELECT json_extract(score.value, '$.criterion'), json_extract(score.value, '$.score'), COUNT(*)
FROM items, json_each(items.record, '$.scores') AS score
WHERE items.stage = 'judge' AND items.state = 'done' GROUP BY 1, 2
"""


def judge_scores(store: RunStore) -> tuple[dict[str, Counter], list[float | None]]:
    """The judge's scores as counts per criterion (criteria in name order), and the aggregate
    of each task it scored. Counted inside SQLite, so the views of a 100k-task run (the
    report, the sweep comparison) hold only these."""
    counts: dict[str, Counter] = {}
    for criterion, score, n in store.query(SCORE_COUNTS_SQL):
        counts.setdefault(criterion, Counter())[score] += n
    rows = store.query("SELECT json_extract(record, '$.aggregate') FROM items WHERE stage = 'judge' "
                       "AND state = 'done' AND json_array_length(record, '$.scores') > 0")
    return counts, [aggregate for (aggregate,) in rows]


def reconcile(store: RunStore) -> str:
    """One line that accounts for every sampled task."""
    sample, judge = store.counts("sample"), store.counts("judge")
    sampled = sample.get(DONE, 0) + sample.get(FAILED, 0)
    judged = judge.get(DONE, 0) + judge.get(FAILED, 0)
    not_started = sample.get(DONE, 0) - judged
    contaminated = f"{judge[CONTAMINATED]} contaminated + " if judge.get(CONTAMINATED) else ""
    return (
        f"{sampled} sampled = {judge.get(ACCEPTED, 0)} accepted + {judge.get(REJECTED, 0)} rejected + "
        f"{judge.get(DUPLICATE, 0)} duplicate + {contaminated}{sample.get(FAILED, 0) + judge.get(FAILED, 0)} failed "
        f"({sample.get(FAILED, 0)} sampling, {judge.get(FAILED, 0)} judging) + {not_started} not judged yet"
    )
