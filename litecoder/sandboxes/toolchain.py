"""Toolchain images: a domain's packages as one layer on the sandbox's base image.

A domain names the Debian, Python and npm packages its tasks need (``domain.toolchain``).
The image is built from the package registries this machine reaches and tagged by a hash of
its recipe (the base image's id and the package lists), so an unchanged recipe is reused and
a changed one rebuilt. The exact versions installed go into a manifest next to the image
(``$LITECODER_HOME/images/<tag>.json``), because a task is only reproducible with them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SandboxError
from ..paths import litecoder_home
from .base import shell_quote
from .base_image import build_from_files
from .names import tag_safe

if TYPE_CHECKING:
    from docker import DockerClient

log = logging.getLogger(__name__)

TOOLCHAIN_IMAGES = "litecoder-toolchain"
#: the host's CA bundle: registries are reached through whatever TLS the host trusts
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
RECIPE_FORMAT = 1
#: lines of a failed build that name the package at fault, per package manager
FAILED_PACKAGE = [
    re.compile(r"E: Unable to locate package (?P<package>\S+)"),
    re.compile(r"E: Version '(?P<version>[^']+)' for '(?P<package>[^']+)' was not found"),
    re.compile(r"No matching distribution found for (?P<package>\S+)"),
    re.compile(r"404 Not Found - GET \S*/(?P<package>[^/\s]+)\s"),
]
#: what a container of the image reports about its packages (no network needed)
MANIFEST_SCRIPT = r"""
set -e
echo '{"debian": {'
dpkg-query -W -f '"${Package}": "${Version}",\n' | sed '$ s/,$//'
echo '}, "python": '
if python3 -m pip --version >/dev/null 2>&1; then python3 -m pip list --format=json 2>/dev/null; else echo '[]'; fi
echo ', "npm": '
if command -v npm >/dev/null; then npm ls -g --json --depth=0 2>/dev/null || echo '{}'; else echo '{}'; fi
echo '}'
"""


def packages(toolchain: dict) -> dict[str, list[str]]:
    """The toolchain's package lists, sorted; ``python`` and ``npm`` bring their installers."""
    lists = {kind: sorted(str(p) for p in (toolchain.get(kind) or [])) for kind in ("debian", "python", "npm")}
    installers = (["python3-pip", "python3-venv"] if lists["python"] else []) + (["npm"] if lists["npm"] else [])
    lists["debian"] = sorted(set(lists["debian"]) | set(installers))
    return lists


def is_empty(toolchain: dict) -> bool:
    return toolchain is None or not any(packages(toolchain).values())


def recipe_hash(base_image_id: str, toolchain: dict) -> str:
    recipe = {"format": RECIPE_FORMAT, "base": base_image_id, **packages(toolchain)}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def image_name(domain: str, base_image_id: str, toolchain: dict) -> str:
    return f"{TOOLCHAIN_IMAGES}:{tag_safe(domain, 60) or 'domain'}-{recipe_hash(base_image_id, toolchain)}"


def dockerfile(base: str, toolchain: dict) -> str:
    """Debian packages with apt (``name=version`` pins), then pip and npm; registries over the
    host's CA bundle, and no package caches left in the layer."""
    lists = packages(toolchain)
    lines = [f"FROM {base}", "COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt",
             "ENV DEBIAN_FRONTEND=noninteractive PIP_CERT=/etc/ssl/certs/ca-certificates.crt "
             "PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt"]
    if lists["debian"]:
        lines.append("RUN apt-get update && apt-get install -y --no-install-recommends "
                     + " ".join(lists["debian"]) + " && rm -rf /var/lib/apt/lists/*")
    if lists["python"]:
        lines.append("RUN python3 -m pip install --break-system-packages " + " ".join(shell_quote(p) for p in lists["python"]))
    if lists["npm"]:
        lines.append("RUN npm install -g " + " ".join(shell_quote(p) for p in lists["npm"]) + " && npm cache clean --force")
    return "\n".join(lines) + "\n"


def context_files(base: str, toolchain: dict) -> dict[str, bytes]:
    """The build context: the Dockerfile and the host's CA bundle."""
    ca = HOST_CA_BUNDLE.read_bytes() if HOST_CA_BUNDLE.is_file() else b""
    return {"Dockerfile": dockerfile(base, toolchain).encode(), "ca-certificates.crt": ca}


def failed_package(output: str) -> str | None:
    """The package a failed build names, if it names one."""
    for pattern in FAILED_PACKAGE:
        match = pattern.search(output)
        if match:
            version = match.groupdict().get("version")
            return f"{match['package']}={version}" if version else match["package"]
    return None


def manifest_path(image: str) -> Path:
    return litecoder_home() / "images" / (image.replace(":", "-").replace("/", "_") + ".json")


def ensure_toolchain_image(client: DockerClient, domain: str, base: str, base_image_id: str, toolchain: dict,
                           timeout: float = 1800) -> tuple[str, bool]:
    """The domain's toolchain image on ``base`` (whose id is part of the recipe), built unless
    it exists: (name, reused). Its manifest is written when missing or stale."""
    import docker

    image = image_name(domain, base_image_id, toolchain)
    try:
        client.images.get(image)
        reused = True
    except docker.errors.ImageNotFound:
        build_toolchain_image(client, image, base, toolchain, timeout)
        reused = False
    ensure_manifest(client, image, {"domain": domain, "base": base_image_id, "recipe": packages(toolchain)})
    return image, reused


def ensure_manifest(client: DockerClient, image: str, about: dict) -> Path:
    """The image's manifest, written again when the image under that name changed."""
    image_id = client.images.get(image).id
    path = manifest_path(image)
    try:
        if json.loads(path.read_text()).get("image_id") == image_id:
            return path
    except (OSError, ValueError):
        pass
    return write_manifest(client, image, {"image_id": image_id, **about})


def read_manifest(image: str) -> dict | None:
    """The recorded manifest of ``image``, if there is one."""
    try:
        return json.loads(manifest_path(image).read_text())
    except (OSError, ValueError):
        return None


def build_toolchain_image(client: DockerClient, image: str, base: str, toolchain: dict, timeout: float,
                          nocache: bool = False) -> None:
    """Build ``image`` with the build's network (the registries); ``nocache`` skips the layer cache."""
    log.info("building %s (%s)", image, ", ".join(f"{k}: {len(v)}" for k, v in packages(toolchain).items()))
    output = build_from_files(client, image, context_files(base, toolchain), labels={"litecoder.toolchain": image},
                              timeout=timeout, nocache=nocache)
    if output is not None:
        package = failed_package(output)
        reason = output.strip().splitlines()[-1][:300] if output.strip() else "no output"
        what = f"package {package} could not be installed" if package else f"the build failed: {reason}"
        raise SandboxError(f"toolchain image {image}: {what}; check the name and version in domain.toolchain")


def write_manifest(client: DockerClient, image: str, about: dict) -> Path:
    """Record the exact package versions the image holds, from a container with no network."""
    raw = client.containers.run(image, ["bash", "-c", MANIFEST_SCRIPT], network_mode="none", remove=True)
    installed = json.loads(raw.decode())
    installed["python"] = {p["name"]: p["version"] for p in installed["python"]}
    installed["npm"] = {name: dep.get("version") for name, dep in (installed["npm"].get("dependencies") or {}).items()}
    path = manifest_path(image)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"image": image, **about, "installed": installed}, indent=2) + "\n")
    return path
