"""Reviews by a model: a task against the criteria of a fair exercise, a solved rollout
against reward hacking.

Checks in containers prove what a verifier does; they cannot say whether it checks what the
instruction asks for. The task review shows a model the instruction, the verifier, the
reference solution and the declared outputs, and asks for a verdict on each criterion of
``review.task_criteria`` (every behaviour the tests check is in the instruction and the other
way round, every output is named, the solution computes its answer, ...). Failed criteria are
certification findings. The trajectory review (``trajectory.review``) shows a solved rollout's
commands and asks whether they earned the reward by gaming the check; a flagged rollout is
kept out of the training data. The criteria and every word of the requests are config
(``conf/review/default.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from omegaconf import MISSING, DictConfig

from .records import ReviewVerdict
from .replies import ask_json
from .templates import render
from .usage import new_usage

if TYPE_CHECKING:
    from .backends.base import LLMClient


@dataclass
class Criterion:
    name: str = MISSING
    #: what the reviewer checks, in words a model can apply
    description: str = MISSING


@dataclass
class ReviewConfig:
    """The reviews' criteria and texts; whether they run is ``certify.review`` and
    ``trajectory.review``. Their model is the stage's (the environment model, the teacher)."""

    task_criteria: list[Criterion] = field(default_factory=list)
    trajectory_criteria: list[Criterion] = field(default_factory=list)
    #: system message of either review; sees ``criteria``
    system: str = MISSING
    #: the task review's user message; sees ``task``, ``verifier``, ``solution``, ``outputs``,
    #: ``system_state``
    task_instruction: str = MISSING
    #: the trajectory review's user message; sees ``task`` and ``commands``
    trajectory_instruction: str = MISSING
    temperature: float = 0.0
    max_tokens: int = 2000
    #: ``auto``: JSON-schema constrained decoding where the backend has it; ``off``
    structured_output: str = "auto"


#: how a review whose reply could not be read starts its finding
UNUSABLE_REVIEW = "review: the review's reply was not usable"


def reply_schema(criteria: Sequence[DictConfig]) -> dict:
    """One ``{passed, reason}`` per criterion, every criterion required."""
    verdict = {"type": "object", "properties": {"passed": {"type": "boolean"}, "reason": {"type": "string", "maxLength": 1000}},
               "required": ["passed", "reason"], "additionalProperties": False}
    names = [str(c.name) for c in criteria]
    return {"type": "object", "properties": {name: verdict for name in names}, "required": names,
            "additionalProperties": False}


async def review(client: LLMClient, config: DictConfig, criteria: Sequence[DictConfig], instruction: str, *, structured: bool,
                 **context: Any) -> tuple[list[ReviewVerdict], dict, str | None]:
    """Ask for a verdict on each criterion: (the verdicts, the request's usage, why there are
    none when the reply was unusable). ``instruction`` names the user message's template."""
    if not criteria:
        return [], new_usage(), None
    schema = reply_schema(criteria)
    messages = [{"role": "system", "content": render(config.system, criteria=criteria)},
                {"role": "user", "content": render(config[instruction], **context)}]
    reply, usage, error = await ask_json(client, messages, schema, name="review", config=config, structured=structured)
    if reply is None:
        return [], usage, f"{UNUSABLE_REVIEW.removeprefix('review: ')}: {error}"
    return [ReviewVerdict(str(c.name), bool(reply[c.name]["passed"]), reply[c.name]["reason"].strip())
            for c in criteria], usage, None


def review_findings(verdicts: list[ReviewVerdict], error: str | None) -> list[str]:
    """Certification findings: one per failed criterion, or the review that could not be read."""
    if error:
        return [f"review: {error}"]
    return [f"review: {v.criterion}: {v.reason or 'failed'}" for v in verdicts if not v.passed]
