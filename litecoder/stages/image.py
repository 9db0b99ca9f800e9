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
from ..sandboxes.toolchain import ensure_toolchain_image, is_empty, manifest_path


class ImageStage:
    name = "image"

    def run(self, run: Any) -> dict:
        sandbox, domain = run.cfg.sandbox, run.cfg.domain
        client = docker_client(sandbox.api_timeout)
        try:
            base_id = _base_image(client, sandbox, run.plugins.registry("image_builder"))
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


def _base_image(client: Any, sandbox: Any, builders: Any) -> str:
    """The base image's id, built by ``sandbox.builder`` when it is missing."""
    import docker

    try:
        return client.images.get(sandbox.image).id
    except docker.errors.ImageNotFound:
        return builders.get(sandbox.builder)(sandbox, client)


@hookimpl
def litecoder_register_stages(register):
    register("image", ImageStage)
