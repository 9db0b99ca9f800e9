"""What a run's containers and images are called in the engine.

Run names are not unique: two runs of the same name under different ``run.root``s share one
engine. So a run is known there by its id, its name (made safe, shortened) plus a hash of
its resolved directory. The id labels the run's containers and images, so one run's cleanup
never removes another's containers, and starts its images' tags, so one run never takes
another's tags (which would leave the other's images untagged, for ``docker image prune``).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path

#: the run's id, on every container and image it makes; cleanup removes what carries it
LABEL_RUN = "litecoder.run"
#: the run's directory, on its task images, for people reading ``docker images``
LABEL_RUN_DIR = "litecoder.run_dir"
LABEL_ITEM = "litecoder.item"
#: the repository of every task's image, prepared (environment) or imported (ingest)
TASK_IMAGES = "litecoder-env"
#: a Docker tag is at most this long, in [A-Za-z0-9_.-], and starts with neither . nor -
MAX_TAG = 128
#: the readable part of a run id
MAX_READABLE = 40


def run_id(run_dir: str | Path) -> str:
    """``<name>-<hash of the resolved directory>``: readable, unique per directory, and
    usable in a tag and a label whatever the name holds."""
    path = Path(run_dir).resolve()
    digest = hashlib.sha256(str(path).encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{tag_safe(path.name, MAX_READABLE) or 'run'}-{digest}"


def image_tag(run: str, item: str) -> str:
    """An item's image tag under the run's id (from ``run_id``), so a run's tags are its own."""
    return f"{run}-{tag_safe(item, MAX_TAG) or 'item'}"[:MAX_TAG]


def tag_safe(text: str, limit: int) -> str:
    """``text`` in the characters a tag allows; accented letters keep their base letter."""
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", plain)[:limit].strip("._-")
