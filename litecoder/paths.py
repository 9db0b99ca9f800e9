"""Where litecoder finds its configs and keeps its large, shared files."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import LitecoderError

PACKAGE_DIR = Path(__file__).resolve().parent


def core_conf_dir() -> Path:
    """The core config tree: inside the package when installed, ``conf/`` in a checkout."""
    for candidate in (PACKAGE_DIR / "conf", PACKAGE_DIR.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise LitecoderError(f"litecoder's config tree is missing next to {PACKAGE_DIR}; reinstall litecoder")


def litecoder_home() -> Path:
    """Shared cache for the vLLM environment and converted models (``LITECODER_HOME``).

    Kept outside any checkout so that a fresh clone reuses the multi-GB set-up.
    """
    return Path(os.environ.get("LITECODER_HOME") or Path.home() / ".cache" / "litecoder")
