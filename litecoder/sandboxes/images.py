"""Builders for the sandbox base image, chosen by ``sandbox.builder``.

``debootstrap`` builds a minimal Debian root file system from Debian's packages and imports
it: it needs no container registry, which many machines (this project's CI among them)
cannot reach. ``pull`` and ``dockerfile`` serve users who have a registry or their own image.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from .. import hookimpl
from .base import SandboxError

log = logging.getLogger(__name__)

APT_SOURCES = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]


def host_debian_mirror() -> str | None:
    """The first Debian mirror in the host's apt sources (one-line or deb822 format)."""
    for path in APT_SOURCES:
        try:
            text = path.read_text()
        except OSError:
            continue
        match = re.search(r"^\s*URIs:\s*(\S+)", text, re.M) or re.search(r"^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)", text, re.M)
        if match:
            return match.group(1)
    return None


def split_image(image: str) -> tuple[str, str]:
    name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "latest")
    return name, tag


def build_with_debootstrap(config: Any, client: Any) -> str:
    if shutil.which("debootstrap") is None:
        raise SandboxError("debootstrap is not installed; run `bash scripts/setup.sh` (or apt-get install debootstrap)")
    mirror = config.mirror or host_debian_mirror()
    if not mirror:
        raise SandboxError("no Debian mirror found in /etc/apt/sources*; set sandbox.mirror")
    repository, tag = split_image(config.image)
    with tempfile.TemporaryDirectory(prefix="litecoder-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        command = ["debootstrap", "--variant=minbase", f"--include={','.join(config.packages)}", config.suite, str(rootfs), mirror]
        log.info("building %s: %s", config.image, " ".join(command))
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            tail = " | ".join(result.stdout.strip().splitlines()[-3:] + result.stderr.strip().splitlines()[-3:])
            raise SandboxError(f"debootstrap failed (exit {result.returncode}): {tail}")
        archive = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "-cf", str(archive), "."], check=True)
        client.api.import_image_from_file(str(archive), repository=repository, tag=tag,
                                          changes=['CMD ["bash"]', "LABEL litecoder.builder=debootstrap"])
    return client.images.get(config.image).id


def ensure_base_image(config: Any, client: Any, builders: Any) -> str:
    """The id of the base image ``config.image``, built by ``config.builder`` when it is missing."""
    import docker

    try:
        image_id = client.images.get(config.image).id
    except docker.errors.ImageNotFound:
        log.info("image %s is missing; building it with the %s builder", config.image, config.builder)
        image_id = builders.get(config.builder)(config, client)
    if config.builder == "debootstrap":
        stand_in_for_release(client, image_id, str(config.suite))
    return image_id


def stand_in_for_release(client: Any, image_id: str, suite: str) -> None:
    """Tag the debootstrap image ``debian:<suite>`` where the engine has no such image, so
    exported Dockerfiles (``FROM debian:<suite>``) build on engines that reach no container
    registry. It is the same release; the Dockerfiles install their packages on it either way."""
    import docker

    try:
        client.images.get(f"debian:{suite}")
    except docker.errors.ImageNotFound:
        client.images.get(image_id).tag("debian", suite)
        log.info("tagged the base image debian:%s for exported Dockerfiles (no such image was here)", suite)


def build_with_pull(config: Any, client: Any) -> str:
    repository, tag = split_image(config.image)
    try:
        return client.images.pull(repository, tag=tag).id
    except Exception as exc:  # noqa: BLE001
        raise SandboxError(f"cannot pull {config.image} ({exc}); use sandbox.builder=debootstrap offline") from exc


def build_with_dockerfile(config: Any, client: Any) -> str:
    if not config.dockerfile_dir or not (Path(config.dockerfile_dir) / "Dockerfile").is_file():
        raise SandboxError("sandbox.builder=dockerfile needs sandbox.dockerfile_dir with a Dockerfile in it")
    image, _ = client.images.build(path=str(config.dockerfile_dir), tag=config.image, rm=True)
    return image.id


@hookimpl
def litecoder_register_image_builders(register):
    register("debootstrap", build_with_debootstrap)
    register("pull", build_with_pull)
    register("dockerfile", build_with_dockerfile)
