"""Stages that exist by name but are not built yet: they say so in one line."""

from __future__ import annotations

from .. import hookimpl
from ..errors import StageNotBuilt


class PendingStage:
    def __init__(self, name: str) -> None:
        self.name = name

    def run(self, run) -> dict:
        raise StageNotBuilt(f"stage {self.name!r} is not built yet")


@hookimpl
def litecoder_register_stages(register):
    for name in ("trajectory", "export"):
        register(name, lambda name=name: PendingStage(name))
