"""The export stage: kept trajectories become SFT datasets, ready tasks become task
directories, one exporter per format.

Exporters are plugins (``litecoder_register_exporters``); ``export.formats`` picks which run.
Each declares what it reads (``needs``: trajectories or environments); one whose input this
run does not have is skipped with a line saying why, and the others still run, so
``stage=[sample,judge,environment,export]`` writes RL environments with no teacher at all.
Every file is rebuilt from the run store and the trajectory files on each run, so an export
always matches the current filters.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .. import hookimpl
from ..stage import Stage
from ..errors import ConfigError
from ..exporters.base import ENVIRONMENTS, missing_input

if TYPE_CHECKING:
    from ..run import Run

log = logging.getLogger(__name__)


@dataclass
class ExportConfig:
    #: registered exporters to run (``litecoder_register_exporters``)
    """The export stage's own keys; each exporter's config is a node of its name beside them."""

    formats: list[str] = field(default_factory=lambda: ["sharegpt", "messages", "harbor"])


def first_stage(wanted: set[str]) -> str:
    """What to run before exporting formats that need ``wanted``."""
    if wanted == {ENVIRONMENTS}:
        return "run stage=environment first"
    if ENVIRONMENTS in wanted:
        return "for task formats run stage=environment, for SFT data run stage=trajectory first"
    return "run stage=trajectory first"


class ExportStage(Stage):
    name, order = "export", 90

    def run(self, run: Run) -> dict:
        formats = list(run.cfg.export.formats)
        registry = run.plugins.registry("exporter")
        exporters = {name: registry.get(name) for name in formats}  # unknown names fail before any work
        made = {name: factory() for name, factory in exporters.items()}
        missing = {name: missing_input(run, exporter.needs) for name, exporter in made.items()}
        if made and all(missing.values()):
            raise ConfigError(f"nothing to export in {run.dir}: " + "; ".join(f"{n} has {why}" for n, why in missing.items())
                              + "; " + first_stage({exporter.needs for exporter in made.values()}))
        summary: dict = {}
        skipped = []
        for name, exporter in made.items():
            if missing[name] is not None:
                log.warning("export: %s skipped: %s", name, missing[name])
                skipped.append(name)
                continue
            counts = exporter.export(run) or {}
            summary.update({f"{name}_{k}": v for k, v in counts.items()})
        if skipped:
            summary["skipped"] = ",".join(skipped)
        return summary


@hookimpl
def litecoder_register_stages(register):
    register("export", ExportStage, config=ExportConfig)
