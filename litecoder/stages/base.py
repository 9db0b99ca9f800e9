"""What a stage is: a named step that reads and writes files in the run directory."""

from __future__ import annotations

from typing import Any, Protocol


class Stage(Protocol):
    name: str

    def run(self, run: Any) -> dict:
        """Do the work; return counts by outcome (``{"ok": 10, "failed": 1}``) for the summary."""
