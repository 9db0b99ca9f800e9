"""Where litecoder finds its configs and keeps its large, shared files, and what its run and
sweep-job directories may be called.

A run name becomes a directory, so it must be one; a sweep job's directory is named after its
overrides, which may hold lists, quotes, newlines or long prompt texts, so it is shortened to a
readable part plus a hash of the whole (the full overrides stay in the job's ``.hydra/``).
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from pathlib import Path

from .errors import ConfigError, LitecoderError

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


#: most file systems allow 255 bytes per name
MAX_NAME_BYTES = 255
#: the readable part of a job directory's name stays below this many characters
MAX_READABLE = 80
#: values shown as they are in a job directory's name; anything else is left to the hash
SIMPLE_VALUE = re.compile(r"^[\w.+-]{1,40}$", re.ASCII)


def check_run_name(name: str) -> str:
    """``name`` if it can be a directory name, else a ConfigError that says why."""
    problem = None
    if name in (".", ".."):
        problem = "is not a directory name"
    elif "/" in name or "\\" in name:
        problem = "holds a path separator (use run.root=DIR to choose where runs go)"
    elif any(unicodedata.category(c) in ("Cc", "Cs") for c in name):
        problem = "holds a control character"
    elif len(name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
        problem = f"is longer than {MAX_NAME_BYTES} bytes"
    if problem:
        raise ConfigError(f"run.name {name!r} {problem}; choose a name that can be a directory")
    return name


def job_dir_name(override_dirname: str, job_num: int | str = 0) -> str:
    """A sweep job's directory: its overrides when they are all short and simple, else the
    simple ones followed by a short hash of all of them, so names stay safe, short and stable."""
    overrides = _split_overrides(override_dirname)
    simple = [o for o in overrides if _is_simple(o)]
    readable = ",".join(simple)
    if len(simple) == len(overrides) and readable and len(readable) <= MAX_READABLE:
        return readable
    if not overrides:
        return f"job{job_num}"
    digest = hashlib.sha256(override_dirname.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{readable[:MAX_READABLE].rstrip(',')}~{digest}" if readable else f"job~{digest}"


def _split_overrides(override_dirname: str) -> list[str]:
    """Hydra joins ``key=value`` pairs with commas, and values may hold commas of their own:
    a piece starts a new override only where it looks like ``key=``."""
    pieces: list[str] = []
    for piece in override_dirname.split(",") if override_dirname else []:
        if pieces and not re.match(r"^[+~]{0,2}[\w.@/-]+=", piece):
            pieces[-1] += "," + piece
        else:
            pieces.append(piece)
    return pieces


def _is_simple(override: str) -> bool:
    key, _, value = override.partition("=")
    return bool(re.fullmatch(r"[+~]{0,2}[\w.@-]+", key, re.ASCII)) and bool(SIMPLE_VALUE.match(value))
