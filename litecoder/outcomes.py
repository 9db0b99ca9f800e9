"""The outcomes an item can end with, by the stage that gives them: one spelling each.

An item's *state* (``litecoder.store``: done, failed) says whether its work finished; its
*outcome* says what became of it. Tables, summaries, the report and the sweep comparison all
count these names.
"""

from __future__ import annotations

#: judge: the task is feasible, infeasible, a near-copy of another, or a benchmark's
ACCEPTED, REJECTED, DUPLICATE, CONTAMINATED = "accepted", "rejected", "duplicate", "contaminated"
#: environment and ingest: the task is certified (or rejected, as by the judge)
READY = "ready"
#: trajectory: the rollout is training data, filtered out, or changed what its verifier relies on
KEPT, DROPPED, TAMPERED = "kept", "dropped", "tampered"
#: eval: the rollout solved its task or did not
SOLVED, UNSOLVED = "solved", "unsolved"
