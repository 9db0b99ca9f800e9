"""Terminal agents: the loops that turn model replies into keystrokes."""

from __future__ import annotations

from .terminus import litecoder_register_agents  # noqa: F401  (the built-in plugin's hooks)
