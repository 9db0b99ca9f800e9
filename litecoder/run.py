"""A run: its directory, store, config, shared backends, budget, and the stage loop."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf

from .config import as_dict
from .budget import Budget, apply_prices, served_model, spend, spend_lines
from .backends.base import Backend, LLMClient
from .errors import ConfigError, LitecoderError, StageNotBuilt
from .executors.base import Executor
from .sandboxes.base import Sandbox
from .plugins import Plugins, get_plugins
from .outcomes import ACCEPTED, KEPT, REJECTED
from .runner import run_stage
from .stage import model_stages, pipeline
from .sandboxes.names import run_id
from .store import RunStore
from .tables import write_text_atomic

log = logging.getLogger("litecoder")

STORE_FILE = "store.sqlite"


class Run:
    """Everything a stage needs: config, run directory, store, plugins and started backends."""

    def __init__(self, cfg: DictConfig, run_dir: Path, plugins: Plugins | None = None) -> None:
        self.cfg = cfg
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = self.dir.name
        self.plugins = plugins or get_plugins()
        self.store = RunStore(self.dir / STORE_FILE)
        # every stage's own model, and certification's (cheat trials, review)
        unpriced = apply_prices(cfg, (*model_stages(self.plugins), "certify"))
        if unpriced:
            log.info("no price for %s: its cost counts as 0 (set prices.<model> to count it)", ", ".join(unpriced))
        self.budget = Budget(cfg.budget, self.store.totals())
        #: sampling rounds planned so far (grows with ``sample.target_accepted``)
        self.rounds = int(self.store.get_meta("rounds") or 1)
        self._backends: dict[str, Backend] = {}
        self._sandbox: Sandbox | None = None
        self._executor: Executor | None = None

    def executor(self) -> Executor:
        """Where per-item requests and container work run (``executor=local`` or ``ray``)."""
        if self._executor is None:
            factory = self.plugins.registry("executor").get(self.cfg.executor.type)
            self._executor = factory(self.cfg.executor)
        return self._executor

    def client(self, stage: str) -> LLMClient:
        """An LLM client for the stage's backend, sending through the executor."""
        return self.executor().client(self.backend(stage))

    def sandbox(self) -> Sandbox:
        """The run's sandbox, created on first use with its base image ready."""
        if self._sandbox is None:
            factory = self.plugins.registry("sandbox").get(self.cfg.sandbox.type)
            self._sandbox = self.executor().sandbox(factory, self.cfg.sandbox, run_id(self.dir),
                                                    self.plugins.registry("image_builder"), self.toolchain())
        return self._sandbox

    def toolchain(self) -> dict:
        """The domain's toolchain, which the sandbox puts on its base image for the run."""
        domain = self.cfg.domain
        return {"name": str(domain.name), **as_dict(domain.toolchain)}

    def path(self, name: str) -> Path:
        return self.dir / name

    def set_rounds(self, rounds: int) -> None:
        self.rounds = rounds
        self.store.set_meta("rounds", str(rounds))

    def backend_config(self, stage: str) -> DictConfig:
        """The stage's own ``<stage>.backend`` if set, else the run's ``backend``."""
        section = OmegaConf.select(self.cfg, stage)
        own = section.get("backend") if isinstance(section, DictConfig) else None
        return own if own is not None else self.cfg.backend

    def backend(self, stage: str) -> Backend:
        """A started backend for the stage; stages with equal backend configs share one."""
        config = self.backend_config(stage)
        key = OmegaConf.to_yaml(config, resolve=True)
        if key not in self._backends:
            factory = self.plugins.registry("backend").get(config.type)
            backend = factory(config, self.dir)
            self._backends[key] = backend
            backend.start()
        return self._backends[key]

    def stop_services(self) -> None:
        """Stop model servers, containers and the executor; the store stays open for the summary."""
        for backend in self._backends.values():
            try:
                backend.close()
            except Exception:  # noqa: BLE001 - closing must reach every backend
                log.exception("closing backend %s failed", backend)
        self._backends.clear()
        if self._sandbox is not None:
            try:
                self._sandbox.close()  # removes every container of this run
            except Exception:  # noqa: BLE001
                log.exception("closing the sandbox failed")
            self._sandbox = None
        if self._executor is not None:
            try:
                self._executor.close()
            except Exception:  # noqa: BLE001
                log.exception("closing the executor failed")
            self._executor = None

    def close(self) -> None:
        self.stop_services()
        self.store.close()


#: other names users type for a stage: ``import`` is the ingest stage (its config is
#: ``ingest.*``, since a Python keyword cannot name a config node)
STAGE_ALIASES = {"import": "ingest"}


def stage_names(value: object, known: list[str], order: list[str]) -> list[str]:
    """Normalize ``stage=...`` (a name, ``all``: the stages of ``order``, or a list) and check every name."""
    if isinstance(value, (list, tuple, ListConfig)):
        names = [str(v) for v in value]
    else:
        names = [s.strip() for s in str(value).split(",") if s.strip()]
    names = [STAGE_ALIASES.get(n, n) if STAGE_ALIASES.get(n) in known else n for n in names]
    if names == ["all"]:
        return [s for s in order if s in known]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ConfigError(f"unknown stage {', '.join(unknown) or '(none)'}; choose from: all, {', '.join(known)}")
    return names


def _say(message: str) -> None:
    print(f"litecoder: {message}", file=sys.stderr)


def _run_stage(name: str, run: Run, plugins: Plugins) -> dict:
    stage = plugins.registry("stage").get(name)()
    plugins.pm.hook.litecoder_before_stage(stage=name, run=run)
    summary = run_stage(run, stage)
    plugins.pm.hook.litecoder_after_stage(stage=name, run=run, summary=summary)
    _say(f"{name}: " + ", ".join(f"{k}={v}" for k, v in summary.items()))
    return summary


def _rounds(run: Run, names: list[str], plugins: Plugins, summaries: dict) -> str:
    """Sample and judge in rounds until ``sample.target_accepted`` tasks are accepted."""
    target = int(target_accepted(run.cfg) or 0)
    while True:
        summaries["sample"] = _run_stage("sample", run, plugins)
        summaries["judge"] = _run_stage("judge", run, plugins)
        accepted = run.store.counts("judge").get(ACCEPTED, 0)
        if accepted >= target:
            return f"target reached: {accepted} accepted (sample.target_accepted={target})"
        spent = run.budget.exhausted()
        if spent:
            return f"budget reached: {spent}; {accepted} of {target} accepted"
        if run.rounds >= run.cfg.budget.max_rounds:
            return f"budget reached: budget.max_rounds={run.cfg.budget.max_rounds}; {accepted} of {target} accepted"
        run.set_rounds(run.rounds + 1)
        log.info("round %d: %d of %d accepted so far", run.rounds, accepted, target)


def target_accepted(cfg: DictConfig) -> int | None:
    """``sample.target_accepted``, or None where the sample stage brings no such key."""
    return OmegaConf.select(cfg, "sample.target_accepted", default=None)


def execute(cfg: DictConfig, run_dir: Path, plugins: Plugins | None = None) -> dict[str, dict]:
    """Run the requested stages in order; returns each finished stage's summary.

    However it ends (finished, stopped, failed, interrupted), the run directory gets its
    ``summary.json`` with what was done so far, and the report unless ``run.report=false``.
    """
    plugins = plugins or get_plugins()
    try:
        names = stage_names(cfg.stage, plugins.registry("stage").names(), pipeline(plugins))
        if target_accepted(cfg) is not None and not {"sample", "judge"} <= set(names):
            raise ConfigError("sample.target_accepted needs both stages: stage=[sample,judge] (or stage=all)")
        run = Run(cfg, run_dir, plugins)
    except BaseException as exc:
        write_summary(run_dir, _ending(exc), error=str(exc) or type(exc).__name__)
        raise
    OmegaConf.save(cfg, run.path("config.yaml"), resolve=True)
    log.info("run %s: stages %s, output in %s", run.name, ", ".join(names), run.dir)
    summaries: dict[str, dict] = {}
    status, error = "failed", None
    try:
        _run_stages(run, names, plugins, summaries)
        stopped = [f"{name}: {s['stopped_by']}" for name, s in summaries.items() if s.get("stopped_by")]
        status, error = ("stopped" if stopped else "finished"), "; ".join(stopped) or None
    except BaseException as exc:
        status, error = _ending(exc), _describe(exc)
        raise
    finally:
        try:
            run.stop_services()
            _finish(run, names, status, summaries, error)
        finally:
            run.close()
    return summaries


def _run_stages(run: Run, names: list[str], plugins: Plugins, summaries: dict) -> None:
    remaining = list(names)
    if target_accepted(run.cfg) is not None:
        _say(_rounds(run, names, plugins, summaries))
        remaining = [n for n in names if n not in ("sample", "judge")]
    for name in remaining:
        try:
            summaries[name] = _run_stage(name, run, plugins)
        except StageNotBuilt as exc:
            done = ", ".join(summaries) or "nothing"
            _say(f"{exc}; stopping before it (finished: {done}).")
            break
        if summaries[name].get("stopped_by"):
            _say(f"{name} stopped early: {summaries[name]['stopped_by']}")
            break


def _ending(exc: BaseException) -> str:
    return "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"


def _describe(exc: BaseException) -> str | None:
    if isinstance(exc, KeyboardInterrupt):
        return None
    return str(exc) if isinstance(exc, LitecoderError) else f"{type(exc).__name__}: {exc}"


def _finish(run: Run, names: list[str], status: str, summaries: dict, error: str | None) -> None:
    """The counts, ``summary.json`` and the report, for a run that ended in any way. A stage
    cut short has no summary of its own, so it is described by its items' states in the store."""
    stages = dict(summaries)
    for name in names:
        if name not in stages and run.store.stage_started(name):
            stages[name] = {**run.store.counts(name), "unfinished": True}
    write_summary(run.dir, status, stages, spend(run.store, model_stages(run.plugins)), error=error)
    if not set(names) & set(pipeline(run.plugins)) and not any(run.store.stage_started(name) for name in names):
        return  # e.g. stage=image: no items, nothing to count or draw (ingest, eval and plugin stages have)
    if status != "finished" and not any(run.store.counts(name) for name in run.store.stage_names()):
        return  # nothing was done: the error is all there is to say
    try:
        report_counts(run, names)
    except Exception:  # noqa: BLE001 - the counts are printed where they can be
        log.exception("counting the run's items failed")
    if run.cfg.run.report and "report" not in names and "report" in run.plugins.registry("stage").names():
        _write_report(run)


def write_summary(run_dir: Path, status: str, stages: dict | None = None, spent: dict | None = None,
                  error: str | None = None) -> None:
    """``summary.json``: how the last invocation ended, for sweeps and scripts that read runs."""
    summary = {"status": status, "error": error, "stages": stages or {}, "spend": spent}
    try:
        write_text_atomic(Path(run_dir) / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    except OSError as exc:
        log.warning("could not write %s/summary.json: %s", run_dir, exc)


def _write_report(run: Run) -> None:
    """Run the ``report`` stage quietly; a page that cannot be drawn is a warning, never a lost run."""
    try:
        summary = run_stage(run, run.plugins.registry("stage").get("report")())
    except Exception as exc:  # noqa: BLE001 - the results are safe in the store either way
        log.warning("the report was not written: %s: %s (rebuild it with stage=report)", type(exc).__name__, exc)
        return
    _say(f"report: {run.path(summary.get('file', 'report.html'))}")


def report_counts(run: Run, names: list[str]) -> None:
    """Print where every item of the run stands; the counts reconcile across stages."""
    from .tallies import reconcile

    line = reconcile(run.store) if "judge" in names or run.store.counts("judge") else None
    if line:
        _say(line)
    for line in spend_lines(spend(run.store, model_stages(run.plugins))):
        _say(line)
    for line in next_steps(run):
        _say(line)


#: where to read about choosing a stronger model
MODELS_DOC = "docs/configuration.md#models-and-backends"


def next_steps(run: Run) -> list[str]:
    """What the run showed, in a line or two, and what to change for real data."""
    judge, trajectory = run.store.counts("judge"), run.store.counts("trajectory")
    judged = judge.get(ACCEPTED, 0) + judge.get(REJECTED, 0)
    lines = []
    if judged and not judge.get(ACCEPTED):
        model = served_model(run.backend_config("judge")) or "the model"
        lines.append(f"the judge kept none of {judged} tasks: {model} writes tasks too vague to keep. For real data, "
                     f"sample and judge with a stronger model: backend.model_path=<model directory> (a GPU server), "
                     f"or backend=openai backend.model=<name> ({MODELS_DOC})")
    elif trajectory and not trajectory.get(KEPT):
        lines.append(f"no rollout was kept: give the teacher a stronger model, e.g. backend@trajectory.backend=openai "
                     f"trajectory.backend.model=<name> ({MODELS_DOC})")
    elif trajectory.get(KEPT):
        lines.append(f"{trajectory[KEPT]} kept rollouts: SFT data in {run.path('sft')}, tasks in {run.path('harbor')}")
    return lines
