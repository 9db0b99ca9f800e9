"""The export stage: the kept trajectories become datasets, one exporter per format.

Exporters are plugins (``litecoder_register_exporters``); ``export.formats`` picks which run.
Every file is rebuilt from the run store and the trajectory files on each run, so an export
always matches the current filters.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from .. import hookimpl
from ..errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class ExportConfig:
    #: registered exporters to run (``litecoder_register_exporters``)
    """The export stage's own keys; each exporter's config is a node of its name beside them."""

    formats: list[str] = field(default_factory=lambda: ["sharegpt", "messages", "harbor"])


class ExportStage:
    name = "export"

    def run(self, run: Any) -> dict:
        formats = list(run.cfg.export.formats)
        registry = run.plugins.registry("exporter")
        exporters = {name: registry.get(name) for name in formats}  # unknown names fail before any work
        if not run.store.stage_started("trajectory"):
            raise ConfigError(f"no trajectories in {run.dir}; run stage=trajectory first")
        summary: dict[str, Any] = {}
        for name, factory in exporters.items():
            counts = factory().export(run) or {}
            summary.update({f"{name}_{k}": v for k, v in counts.items()})
        return summary


@hookimpl
def litecoder_register_stages(register):
    register("export", ExportStage, config=ExportConfig)
