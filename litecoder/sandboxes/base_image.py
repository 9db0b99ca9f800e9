"""Builders for the sandbox base image, chosen by ``sandbox.builder``.

``debootstrap`` builds a minimal Debian root file system from Debian's packages and imports
it: it needs no container registry, which many machines (this project's CI among them)
cannot reach. ``pull`` and ``dockerfile`` serve users who have a registry or their own image.
"""

from __future__ import annotations

import io
import logging
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from .. import hookimpl
from .base import SandboxError

if TYPE_CHECKING:
    from docker import DockerClient
    from omegaconf import DictConfig
    from ..registry import Registry

log = logging.getLogger(__name__)

APT_SOURCES_FILE = Path("/etc/apt/sources.list")
APT_SOURCES_DIR = Path("/etc/apt/sources.list.d")
#: escape sequences some build steps colour their output with
ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: build output lines worth a log line while an image builds
PROGRESS_LINES = ("Step ", "Setting up ", "Successfully installed")


def apt_source_files(sources_list: Path = APT_SOURCES_FILE, sources_dir: Path = APT_SOURCES_DIR) -> list[Path]:
    """``sources.list`` and the ``.list``/``.sources`` files beside it; ``*.disabled*`` ones are not read."""
    files = [sources_list]
    if sources_dir.is_dir():
        files += sorted(p for p in sources_dir.iterdir() if ".disabled" not in p.name
                        and p.suffix in (".list", ".sources"))
    return files


def apt_uris(files: Iterable[Path]) -> list[str]:
    """The URIs of the ``deb``/``deb-src`` lines and deb822 ``URIs:`` fields (stanzas with
    ``Enabled: no`` skipped) of apt's source files, in order."""
    uris: list[str] = []
    for path in files:
        try:
            text = Path(path).read_text(errors="replace")
        except OSError:
            continue
        lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
        for line in lines:
            match = re.match(r"\s*deb(?:-src)?\s+(?:\[[^\]]*\]\s+)?(\S+)", line)
            if match:
                uris.append(match.group(1))
        for stanza in re.split(r"\n\s*\n", "\n".join(lines)):
            if re.search(r"^\s*Enabled:\s*no\b", stanza, re.M | re.I):
                continue
            for match in re.finditer(r"^\s*URIs:[ \t]*(.*)$", stanza, re.M | re.I):
                uris += match.group(1).split()
    return uris


def host_debian_mirror() -> str | None:
    """The first Debian mirror in the host's apt sources (one-line or deb822 format)."""
    return next(iter(apt_uris(apt_source_files())), None)


def tar_files(files: dict[str, bytes]) -> bytes:
    """An uncompressed tar of in-memory files (a build context)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def build_from_files(client: DockerClient, image: str, files: dict[str, bytes], *, labels: dict[str, str], timeout: float,
                     nocache: bool = False) -> str | None:
    """Build ``image`` from an in-memory context on the default bridge network (the package
    registries), logging its steps and package set-ups as they come. Returns None, or the
    build's whole output (colour codes removed) ending with the engine's error."""
    stream = client.api.build(fileobj=io.BytesIO(tar_files(files)), custom_context=True, tag=image, rm=True,
                              forcerm=True, decode=True, network_mode="bridge", timeout=int(timeout), nocache=nocache,
                              labels=labels)
    chunks: list[str] = []
    for chunk in stream:
        chunks.append(chunk.get("stream") or "")
        for line in ANSI.sub("", chunks[-1]).splitlines():
            if line.startswith(PROGRESS_LINES):
                log.info("%s: %s", image, line.strip()[:200])
        if "error" in chunk or "errorDetail" in chunk:
            # a line can arrive in pieces (apt's "E" and ": Unable to ..."): join before reading
            return ANSI.sub("", "".join(chunks)) + "\n" + str(chunk.get("error") or chunk.get("errorDetail"))
    return None


def split_image(image: str) -> tuple[str, str]:
    name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "latest")
    return name, tag


def build_with_debootstrap(config: DictConfig, client: DockerClient) -> str:
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


def ensure_base_image(config: DictConfig, client: DockerClient, builders: Registry) -> str:
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


def stand_in_for_release(client: DockerClient, image_id: str, suite: str) -> None:
    """Tag the debootstrap image ``debian:<suite>`` where the engine has no such image, so
    exported Dockerfiles (``FROM debian:<suite>``) build on engines that reach no container
    registry. It is the same release; the Dockerfiles install their packages on it either way."""
    import docker

    try:
        client.images.get(f"debian:{suite}")
    except docker.errors.ImageNotFound:
        client.images.get(image_id).tag("debian", suite)
        log.info("tagged the base image debian:%s for exported Dockerfiles (no such image was here)", suite)


def build_with_pull(config: DictConfig, client: DockerClient) -> str:
    repository, tag = split_image(config.image)
    try:
        return client.images.pull(repository, tag=tag).id
    except Exception as exc:  # noqa: BLE001
        raise SandboxError(f"cannot pull {config.image} ({exc}); use sandbox.builder=debootstrap offline") from exc


def build_with_dockerfile(config: DictConfig, client: DockerClient) -> str:
    if not config.dockerfile_dir or not (Path(config.dockerfile_dir) / "Dockerfile").is_file():
        raise SandboxError("sandbox.builder=dockerfile needs sandbox.dockerfile_dir with a Dockerfile in it")
    image, _ = client.images.build(path=str(config.dockerfile_dir), tag=config.image, rm=True)
    return image.id


@hookimpl
def litecoder_register_image_builders(register):
    register("debootstrap", build_with_debootstrap)
    register("pull", build_with_pull)
    register("dockerfile", build_with_dockerfile)
