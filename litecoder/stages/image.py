"""The image stage: build (or reuse) the domain's toolchain image and print its name.

``python -m litecoder stage=image domain=build_tools`` prints the image as the last line on
stdout, so scripts can take it. A domain without a toolchain uses the base image.
The environment stage does not use toolchain images yet.
"""

from __future__ import annotations

import json
import time
from typing import Any

from .. import hookimpl
from ..sandboxes.docker import docker_client
from ..sandboxes.images import ensure_base_image
from ..sandboxes.toolchain import ensure_toolchain_image, is_empty, manifest_path


class ImageStage:
    name = "image"

    def run(self, run: Any) -> dict:
        sandbox, domain = run.cfg.sandbox, run.cfg.domain
        client = docker_client(sandbox.api_timeout)
        try:
            base_id = ensure_base_image(sandbox, client, run.plugins.registry("image_builder"))
            started = time.monotonic()
            if is_empty(domain.toolchain):
                image, reused = sandbox.image, True
            else:
                image, reused = ensure_toolchain_image(client, domain.name, sandbox.image, base_id, domain.toolchain)
        finally:
            client.close()
        print(image, flush=True)
        summary = {"image": image, "reused": reused, "seconds": round(time.monotonic() - started, 1)}
        if manifest_path(image).is_file():
            installed = json.loads(manifest_path(image).read_text())["installed"]
            summary.update({f"{kind}_packages": len(installed[kind]) for kind in ("debian", "python", "npm")})
            summary["manifest"] = str(manifest_path(image))
        return summary


@hookimpl
def litecoder_register_stages(register):
    register("image", ImageStage)
