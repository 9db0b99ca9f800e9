"""litecoder: synthesize training data for terminal agents."""

from __future__ import annotations

import pluggy

__version__ = "0.1.0"

#: Decorator for plugin hook implementations: ``@litecoder.hookimpl``.
hookimpl = pluggy.HookimplMarker("litecoder")

__all__ = ["__version__", "hookimpl"]
