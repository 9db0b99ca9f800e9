"""A run: its directory, its config, the backends its stages share, and the stage loop."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from .errors import ConfigError, StageNotBuilt
from .plugins import Plugins, get_plugins

log = logging.getLogger("litecoder")

#: the order of ``stage=all``
PIPELINE = ("sample", "judge", "environment", "trajectory", "export")


class Run:
    """Everything a stage needs: config, run directory, plugins and started backends."""

    def __init__(self, cfg: DictConfig, run_dir: Path, plugins: Plugins | None = None) -> None:
        self.cfg = cfg
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = self.dir.name
        self.plugins = plugins or get_plugins()
        self._backends: dict[str, Any] = {}

    def path(self, name: str) -> Path:
        return self.dir / name

    def backend_config(self, stage: str) -> DictConfig:
        """The stage's own ``<stage>.backend`` if set, else the run's ``backend``."""
        section = OmegaConf.select(self.cfg, stage)
        own = section.get("backend") if isinstance(section, DictConfig) else None
        return own if own is not None else self.cfg.backend

    def backend(self, stage: str) -> Any:
        """A started backend for the stage; stages with equal backend configs share one."""
        config = self.backend_config(stage)
        key = OmegaConf.to_yaml(config, resolve=True)
        if key not in self._backends:
            factory = self.plugins.registry("backend").get(config.type)
            backend = factory(config, self.dir)
            self._backends[key] = backend
            backend.start()
        return self._backends[key]

    def close(self) -> None:
        for backend in self._backends.values():
            try:
                backend.close()
            except Exception:  # noqa: BLE001 - closing must reach every backend
                log.exception("closing backend %s failed", backend)
        self._backends.clear()


def stage_names(value: Any, known: list[str]) -> list[str]:
    """Normalize ``stage=...`` (a name, ``all``, or a list) and check every name."""
    if isinstance(value, (list, tuple, ListConfig)):
        names = [str(v) for v in value]
    else:
        names = [s.strip() for s in str(value).split(",") if s.strip()]
    if names == ["all"]:
        return [s for s in PIPELINE if s in known]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ConfigError(f"unknown stage {', '.join(unknown) or '(none)'}; choose from: all, {', '.join(known)}")
    return names


def execute(cfg: DictConfig, run_dir: Path, plugins: Plugins | None = None) -> dict[str, dict]:
    """Run the requested stages in order; returns each finished stage's summary."""
    plugins = plugins or get_plugins()
    registry = plugins.registry("stage")
    names = stage_names(cfg.stage, registry.names())
    run = Run(cfg, run_dir, plugins)
    OmegaConf.save(cfg, run.path("config.yaml"), resolve=True)
    log.info("run %s: stages %s, output in %s", run.name, ", ".join(names), run.dir)
    summaries: dict[str, dict] = {}
    try:
        for name in names:
            stage = registry.get(name)()
            plugins.pm.hook.litecoder_before_stage(stage=name, run=run)
            try:
                summary = stage.run(run) or {}
            except StageNotBuilt as exc:
                done = ", ".join(summaries) or "nothing"
                print(f"litecoder: {exc}; stopping before it (finished: {done}).", file=sys.stderr)
                break
            summaries[name] = summary
            plugins.pm.hook.litecoder_after_stage(stage=name, run=run, summary=summary)
            counts = ", ".join(f"{k}={v}" for k, v in summary.items())
            print(f"litecoder: {name} done in {run.dir}: {counts}", file=sys.stderr)
    finally:
        run.close()
    return summaries
