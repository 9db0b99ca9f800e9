"""The image stage: build (or reuse) the run's image and print its name.

The run's image is the domain's toolchain image (``domain.toolchain`` on the base image), or
the base image when the domain lists no packages or ``sandbox.toolchain=false``. The other
stages make it ready themselves; ``python -m litecoder stage=image domain=build_tools``
builds it ahead of time and prints it as the last line on stdout, so scripts can take it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from .. import hookimpl
from ..stage import Stage
from ..sandboxes.toolchain import manifest_path, read_manifest

if TYPE_CHECKING:
    from ..run import Run


class ImageStage(Stage):
    name = "image"

    def run(self, run: Run) -> dict:
        started = time.monotonic()
        sandbox = run.sandbox()
        image = sandbox.image
        print(image, flush=True)
        summary = {"image": image, "reused": sandbox.image_reused,
                   "seconds": round(time.monotonic() - started, 1)}
        manifest = read_manifest(image)
        if manifest:
            summary.update({f"{kind}_packages": len(manifest["installed"][kind]) for kind in ("debian", "python", "npm")})
            summary["manifest"] = str(manifest_path(image))
        return summary


@hookimpl
def litecoder_register_stages(register):
    register("image", ImageStage)
