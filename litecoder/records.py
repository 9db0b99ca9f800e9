"""The records the stages keep, one dataclass per table, and the polars schemas derived from them.

A record's fields are written once, here: the stages build records with these fields, the
run store keeps them as JSON, and each table (``tasks.parquet``, ``judgments.parquet``, ...)
takes its columns, in order and typed, from ``polars_schema``. Timestamps are ISO text in the
store and UTC datetimes in the tables. Stages, the report and the sweep table import these
names from here rather than from each other.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Optional

import polars as pl

if TYPE_CHECKING:
    from omegaconf import DictConfig

#: the order sampled tasks are read in: the order they were requested
TASK_ORDER = ("request_index", "choice_index")
#: outcomes of a prepared environment: its verifier failed on it (the task is usable), or not

_SCALARS = {str: pl.String, int: pl.Int64, float: pl.Float64, bool: pl.Boolean,
            datetime: pl.Datetime("us", "UTC")}


def to_record(value: object) -> dict:
    """A record dataclass as the run store keeps it: a JSON object, datetimes as ISO text."""
    assert dataclasses.is_dataclass(value) and not isinstance(value, type)
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in dataclasses.asdict(value).items()}


def polars_schema(record: type) -> dict:
    """Column name -> polars type for each field of the dataclass ``record``, in order."""
    hints = typing.get_type_hints(record)
    return {f.name: _polars_type(hints[f.name]) for f in dataclasses.fields(record)}


def _polars_type(hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):  # Optional[X]: a column allows nulls anyway
        (hint,) = [a for a in args if a is not type(None)]
        return _polars_type(hint)
    if origin is list:
        return pl.List(_polars_type(args[0]))
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return pl.Struct(polars_schema(hint))
    return _SCALARS[hint]


def backend_identity(config: DictConfig) -> dict:
    """The parts of a backend config that change what it answers (not ports or limits); part
    of every model stage's identity."""
    from omegaconf import OmegaConf

    return {k: OmegaConf.select(config, k) for k in ("type", "model", "model_path", "base_url")}


@dataclass
class SampledTask:
    """``tasks.parquet``: one per choice of a sampling request, whatever happened to it."""

    id: str
    domain: str
    subtopic: str
    prompt_variant: str
    method: str
    text: str
    status: str
    finish_reason: Optional[str]
    error: Optional[str]
    model: str
    temperature: float
    top_p: float
    max_tokens: int
    n: int
    seed: Optional[int]
    request_index: int
    choice_index: int
    prompt_tokens: Optional[int]
    completion_tokens: Optional[int]
    latency_s: Optional[float]
    attempts: Optional[int]
    prompt: str
    created_at: datetime


@dataclass
class Score:
    criterion: str
    score: int
    rationale: str


@dataclass
class Judgment:
    """``judgments.parquet``: one per sampled task that reached the judge stage."""

    task_id: str
    domain: str
    subtopic: str
    prompt_variant: str
    text: str
    verdict: str
    reason: Optional[str]
    aggregate: Optional[float]
    scores: list[Score]
    duplicate_of: Optional[str]
    duplicate_kind: Optional[str]
    #: the benchmark task a contaminated task copies, and how (``ngram``, ``near``)
    contaminated_by: Optional[str]
    contamination_kind: Optional[str]
    #: of the duplicate or the contamination
    similarity: Optional[float]
    model: Optional[str]
    prompt_tokens: Optional[int]
    completion_tokens: Optional[int]
    attempts: Optional[int]
    raw: Optional[str]
    error: Optional[str]
    judged_at: datetime


@dataclass
class CommandRun:
    command: str
    exit_code: Optional[int]
    timed_out: bool
    duration_s: float


@dataclass
class CheckRun:
    """One certification run: a fresh container from the task's image, a script (none for
    ``nop``, the reference solution for ``oracle``, a wrong one for ``wrong``), the verifier."""

    check: str
    index: int
    solution_exit_code: Optional[int]
    verifier_exit_code: Optional[int]
    verifier_output: str
    seconds: float
    #: what the script changed that the verifier relies on (``verification.py``)
    tampered: list[str] = field(default_factory=list)
    #: containers it took: two when the verifier ran apart from the script's container
    containers: int = 1


@dataclass
class WrongSolution:
    """A plausible but wrong solution the verifier must refuse."""

    mistake: str
    script: str


@dataclass
class CheatTrial:
    """An agent told to get the reward without doing the task (``cheating.py``)."""

    index: int
    #: the verifier passed: the task is hackable this way
    rewarded: bool
    verifier_exit_code: Optional[int]
    tampered: list[str]
    stop_reason: Optional[str]
    turns: int
    #: what the agent typed, in order: the exploit when it was rewarded
    commands: list[str]
    seconds: float
    #: containers it took: its own, and the verifier's when that was a fresh one
    containers: int = 1


@dataclass
class ReviewVerdict:
    """A reviewing model's verdict on one criterion (``review.py``)."""

    criterion: str
    passed: bool
    reason: str


@dataclass
class Certificate:
    """What certification proved of a task's verifier (``certification.py``)."""

    certified: bool
    #: the verifier failed on every run on the untouched start state
    nop: bool
    #: it passed on every run after the reference solution
    oracle: bool
    #: each state gave the same answer on every run
    stable: bool
    wrong_total: int
    wrong_caught: int
    repairs: int
    #: containers run and their seconds added up, over every round
    container_runs: int
    seconds: float
    #: wall-clock seconds of certification (wrong solutions, checks and repairs)
    wall_s: float
    #: what the last round found (empty when certified)
    findings: list[str]
    #: the last round's runs
    checks: list[CheckRun]
    #: the last round's cheat trials (none when the checks had findings already) and how many
    #: got the reward
    cheats: list[CheatTrial] = field(default_factory=list)
    cheat_trials: Optional[int] = None
    cheats_rewarded: Optional[int] = None
    #: the last task review's verdicts, and whether every criterion passed (null: not reviewed)
    review: list[ReviewVerdict] = field(default_factory=list)
    review_passed: Optional[bool] = None


@dataclass
class Origin:
    """Where an imported task came from (``stage=ingest``)."""

    #: ``harbor`` or ``terminal_bench``
    format: str
    #: the collection's directory name and the task directory below it
    name: str
    path: str
    #: the build context its image was built from, or the prebuilt image it names
    context: Optional[str]
    image: Optional[str]
    #: the difficulty its own metadata gives
    difficulty: Optional[str]
    tags: list[str]


@dataclass
class Environment:
    """``environments.parquet``: one per accepted task (``imported.parquet``: one per imported task)."""

    task_id: str
    text: str
    #: a task is failed until it is proven otherwise
    status: str = "failed"
    reason: Optional[str] = None
    image: Optional[str] = None
    image_id: Optional[str] = None
    base_image: Optional[str] = None
    network: Optional[str] = None
    installed_debian: list[str] = field(default_factory=list)
    installed_python: list[str] = field(default_factory=list)
    apt_history: Optional[str] = None
    host: Optional[str] = None
    changed_paths: list[str] = field(default_factory=list)
    added_paths: list[str] = field(default_factory=list)
    deleted_paths: list[str] = field(default_factory=list)
    commands: list[CommandRun] = field(default_factory=list)
    verifier: Optional[str] = None
    verifier_exit_code: Optional[int] = None
    verifier_output: Optional[str] = None
    #: the environment agent's reference solution, kept outside the image like the verifier
    solution: Optional[str] = None
    certificate: Optional[Certificate] = None
    wrong_solutions: list[WrongSolution] = field(default_factory=list)
    steps: int = 0
    model: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    wall_s: float = 0.0
    prepared_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    #: an imported task's origin, category, working directory and verifier time limit
    origin: Optional[Origin] = None
    category: Optional[str] = None
    workdir: Optional[str] = None
    verifier_timeout: Optional[float] = None
    #: the paths whose final content decides the task, and how its episodes are verified
    #: (``separate``: those paths in a fresh container; ``shared``: in the agent's, guarded)
    outputs: list[str] = field(default_factory=list)
    verification: Optional[str] = None


@dataclass
class Rollout:
    """``trajectories.parquet``: one per rollout of a ready environment."""

    rollout_id: str
    task_id: str
    rollout: int
    status: str
    reason: Optional[str]
    filters: list[str]
    reward: Optional[int]
    verifier_exit_code: Optional[int]
    verifier_output: Optional[str]
    stop_reason: Optional[str]
    stop_detail: Optional[str]
    turns: int
    host: Optional[str]
    commands: int
    malformed_turns: int
    repeated_commands: int
    repeated_output: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    conversation_tokens: int
    cost_usd: float
    wall_s: float
    model: str
    trajectory: Optional[str]
    finished_at: datetime
    #: ``separate`` or ``shared`` (``verification.py``)
    verification: Optional[str] = None
    #: what the agent changed that the verifier relies on; a tampered rollout is never solved
    tampered: list[str] = field(default_factory=list)
    #: why the trajectory review flagged a solved rollout as reward hacking (null: not flagged)
    review: Optional[str] = None


@dataclass
class TaskPassRate:
    """``trajectory_tasks.parquet``: pass@1, pass@k and the difficulty label per task."""

    task_id: str
    rollouts: int
    solved: int
    kept: int
    pass_at_1: float
    pass_at_k: float
    difficulty: str


@dataclass
class EvalTask:
    """``eval.parquet``: one per task of the evaluated set, over its ``eval.rollouts`` rollouts."""

    task_id: str
    category: str
    model: str
    rollouts: int
    solved: int
    pass_at_1: float
    pass_at_k: float
    prompt_tokens: int
    completion_tokens: int
    #: mean turns per rollout
    turns: float
    #: seconds of all its rollouts together
    wall_s: float
