"""The core config schemas, and the run config's schema built from them.

Because every node has a dataclass schema, a misspelled key or a value of the wrong type
fails when the config is composed, naming the key. Component configs (backends, sandboxes,
agents, executors), stage configs and exporter configs live next to their code and are
registered with it; ``root_schema`` joins the core keys with the stages' and exporters'.
"""

from __future__ import annotations

import keyword
from dataclasses import dataclass, field, fields, make_dataclass
from datetime import datetime
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from .budget import BudgetConfig
from .errors import PluginError
from .paths import litecoder_home, check_run_name, job_dir_name
from .review import ReviewConfig
from .verification import VerificationConfig


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
class CertifyConfig:
    """Certification of each prepared task (``certification.py``): its verifier must fail on
    the start state, pass after the reference solution, refuse wrong solutions, and answer
    the same every time. The wording of the wrong-solution request is
    ``conf/certify/default.yaml``."""

    #: false: only the check that the verifier fails on the start state
    enabled: bool = True
    #: runs of the verifier on each state (fresh containers); they must all agree
    repeats: int = 3
    #: plausible wrong solutions asked of the environment model; each must fail the verifier
    wrong_solutions: int = 2
    #: rounds in which the environment agent gets the findings and mends the task
    max_repairs: int = 2
    #: seconds for a solution script (the verifier has ``environment.verifier_timeout``)
    solution_timeout: float = 300.0
    #: system message of the wrong-solution request; sees ``count``
    wrong_system: str = MISSING
    #: its user message; sees ``task``, ``solution``, ``verifier``, ``count``
    wrong_instruction: str = MISSING
    temperature: float = 0.8
    max_tokens: int = 3000
    #: ``auto``: JSON-schema constrained decoding where the backend has it; ``off``
    structured_output: str = "auto"
    #: agents per round told to get the reward without doing the task (``cheating.py``); one
    #: that gets it is a finding. They run once a round's checks found nothing else
    cheat_trials: int = 1
    #: turns each cheat trial may take (the teacher's agent, ``agent=``, plays it)
    cheat_max_turns: int = 10
    #: Jinja template of the cheat trial's instruction; sees ``task`` and ``max_turns``
    cheat_brief: str = MISSING
    #: review the task against ``review.task_criteria`` (``review.py``); failed criteria are findings
    review: bool = True
    #: the model of cheat trials and the review; null: the environment stage's
    backend: Optional[Any] = None


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
    backend: Any = MISSING
    sandbox: Any = MISSING
    agent: Any = MISSING
    executor: Any = MISSING
    dedup: DedupConfig = field(default_factory=DedupConfig)
    certify: CertifyConfig = field(default_factory=CertifyConfig)
    verification: VerificationConfig = field(default_factory=VerificationConfig)
    review: ReviewConfig = field(default_factory=ReviewConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    #: ``{model: {input_per_mtok, output_per_mtok}}`` in USD, for backends that set no price.
    #: Each entry is checked against ``budget.PriceConfig`` when the run starts (a typed dict
    #: here would refuse Hydra's ``+prices.<model>={...}``).
    prices: dict = field(default_factory=dict)


def root_schema(stages: dict[str, type], exporters: dict[str, type]) -> type:
    """The run config's schema: the core keys, one node per stage that brings a config (at
    the stage's name) and, in the ``export`` node, one per exporter that does."""
    core = {f.name for f in fields(LitecoderConfig)}
    added = []
    for name, schema in stages.items():
        if name in core:
            raise PluginError(f"stage {name!r} brings a config, but {name!r} is a core config key; rename the stage")
        if keyword.iskeyword(name) or not name.isidentifier():
            raise PluginError(f"stage {name!r} brings a config, but its config node must be named like a Python "
                              f"identifier that is not a keyword; rename the stage")
        if name == "export" and exporters:
            schema = _with_nodes(schema, exporters, "exporter")
        added.append((name, schema, field(default_factory=schema)))
    return make_dataclass("LitecoderRunConfig", added, bases=(LitecoderConfig,))


def _with_nodes(schema: type, nodes: dict[str, type], kind: str) -> type:
    own = {f.name for f in fields(schema)}
    clash = sorted(own & set(nodes))
    if clash:
        raise PluginError(f"{kind} {clash[0]!r} brings a config, but {schema.__name__} has a key of that name")
    added = [(name, node, field(default_factory=node)) for name, node in nodes.items()]
    return make_dataclass(schema.__name__, added, bases=(schema,))


def as_dict(node: DictConfig) -> dict:
    """A config node as a plain dict, interpolations resolved (a stage's identity, a record)."""
    value = OmegaConf.to_container(node, resolve=True)
    if not isinstance(value, dict):
        raise TypeError(f"expected a config mapping, got {type(value).__name__}")
    return {str(k): v for k, v in value.items()}


def default_run_name() -> str:
    return datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


_registered = False


def register_configs() -> None:
    """Add litecoder's resolvers (idempotent). The run config's schema, which depends on the
    registered stages and exporters, is stored by the plugin host when it loads."""
    global _registered
    if _registered:
        return
    if not OmegaConf.has_resolver("litecoder.home"):
        OmegaConf.register_new_resolver("litecoder.home", lambda: str(litecoder_home()))
    if not OmegaConf.has_resolver("litecoder.run_name"):
        OmegaConf.register_new_resolver(
            "litecoder.run_name", lambda name: check_run_name(name) if name else default_run_name(), use_cache=True
        )
    if not OmegaConf.has_resolver("litecoder.job_dir"):
        OmegaConf.register_new_resolver("litecoder.job_dir", job_dir_name)
    _registered = True
