"""Certification's checks that need a model: the task review, then the cheat trials.

They run in a round whose container checks found nothing (a task whose oracle fails is
repaired first, and no model time is spent on it): the review (``certify.review``) holds the
task against ``review.task_criteria``; when it passes, ``certify.cheat_trials`` agents try to
get the reward without doing the task. Their verdicts go into the round's certificate and
their findings back to the environment agent, like every other check's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Optional

from .cheating import CheatTrials, cheat_findings
from .review import review, review_findings
from .usage import add_usage, new_usage
from .verification import SHARED, mode_of

if TYPE_CHECKING:
    from omegaconf import DictConfig
    from .backends.base import LLMClient


@dataclass
class AdversarialChecks:
    config: DictConfig
    review_config: DictConfig
    #: the client of the review's requests (``certify.backend``, else the environment model's)
    client: LLMClient
    structured: bool
    cheats: Optional[CheatTrials]

    async def run(self, record: dict, cert: dict) -> tuple[dict, int]:
        """Review and cheat-trial the task, adding verdicts and findings to ``cert``; returns
        (the model usage, containers run)."""
        usage = new_usage()
        containers = 0
        if self.config.review:
            verdicts, spent, error = await review(
                self.client, self.review_config, list(self.review_config.task_criteria), "task_instruction",
                structured=self.structured, task=record["text"].strip(), verifier=record["verifier"],
                solution=record.get("solution") or "", outputs=record.get("outputs") or [],
                system_state=mode_of(record) == SHARED)
            add_usage(usage, spent)
            found = review_findings(verdicts, error)
            cert.update(review=[asdict(v) for v in verdicts], review_passed=not found)
            cert["findings"] += found
        if self.cheats is not None and int(self.config.cheat_trials) > 0 and not cert["findings"]:
            trials, spent = await self.cheats.run(record)
            add_usage(usage, spent)
            containers = sum(t.containers for t in trials)
            cert.update(cheats=[asdict(t) for t in trials], cheat_trials=len(trials),
                        cheats_rewarded=sum(t.rewarded for t in trials))
            cert["findings"] += cheat_findings(trials)
        cert["certified"] = not cert["findings"]
        return usage, containers
