"""Sandboxes: where commands written by a model run (never on the host)."""

from __future__ import annotations

from .docker import litecoder_register_sandboxes  # noqa: F401  (the built-in plugin's hooks)
