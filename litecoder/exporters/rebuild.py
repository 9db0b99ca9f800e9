"""The Dockerfile that rebuilds a task's image anywhere, from a public Debian image.

A task's image in the run is the base image, the domain's toolchain and what the environment
agent did. An exported task must build without any of litecoder's local images, so its
Dockerfile starts from ``debian:<suite>`` (the release the base image is made from), installs
the base image's packages, the toolchain and the packages added during preparation at the
versions the run had (from the image's manifest and the environment record), and only then
adds the starting state.
"""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..sandboxes.base import shell_quote
from ..sandboxes.toolchain import read_manifest

if TYPE_CHECKING:
    from omegaconf import DictConfig

log = logging.getLogger(__name__)

#: certificate authorities this machine added to its trust store (TLS-intercepting proxies)
LOCAL_CA_DIR = Path("/usr/local/share/ca-certificates")
CA_DIR = "ca-certificates"


@dataclass
class Pins:
    """Packages to install, each ``name=version`` (Debian), ``name==version`` (Python) or
    ``name@version`` (npm); a name alone where the run recorded no version."""

    debian: list[str] = field(default_factory=list)
    python: list[str] = field(default_factory=list)
    npm: list[str] = field(default_factory=list)


def bare_name(spec: str) -> str:
    """``numpy>=2`` -> ``numpy``; ``jq=1.6`` -> ``jq``; ``@scope/pkg@1`` -> ``@scope/pkg``."""
    if spec.startswith("@"):
        return "@" + re.split(r"@", spec[1:], maxsplit=1)[0]
    return re.split(r"[<>=!~;\[ @]", spec, maxsplit=1)[0]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(cfg: DictConfig, env: dict) -> Pins:
    """What the task's image had installed beyond a plain Debian image, pinned."""
    manifest = read_manifest(env.get("base_image") or "") or {}
    installed = manifest.get("installed") or {}
    recipe = manifest.get("recipe") or {}
    if not manifest:
        log.warning("no package manifest for %s's image %s; exporting unpinned package names",
                    env.get("task_id"), env.get("base_image"))
    base = list(cfg.sandbox.get("packages") or []) if cfg.sandbox.get("builder") == "debootstrap" else []
    debian_versions = installed.get("debian") or {}
    python_versions = {_canonical(k): v for k, v in (installed.get("python") or {}).items()}
    npm_versions = installed.get("npm") or {}
    debian = {bare_name(p): _pin(bare_name(p), debian_versions.get(bare_name(p)), "=") for p in base + list(recipe.get("debian") or [])}
    debian.update({bare_name(p): p for p in env.get("installed_debian") or []})
    python = {_canonical(bare_name(p)): _pin(bare_name(p), python_versions.get(_canonical(bare_name(p))), "==")
              for p in recipe.get("python") or []}
    python.update({_canonical(bare_name(p)): p for p in env.get("installed_python") or []})
    npm = [_pin(bare_name(p), npm_versions.get(bare_name(p)), "@") for p in recipe.get("npm") or []]
    return Pins(sorted(debian.values()), sorted(python.values()), sorted(npm))


def _pin(name: str, version: str | None, separator: str) -> str:
    return f"{name}{separator}{version}" if version else name


def local_ca_files() -> list[Path]:
    return sorted(LOCAL_CA_DIR.glob("*.crt")) if LOCAL_CA_DIR.is_dir() else []


def dockerfile_lines(base: str, packages: Pins, environment_dir: Path, local_ca: bool) -> list[str]:
    """``FROM`` and the package installs; copies this machine's added CAs into
    ``environment_dir`` when ``local_ca`` is set and there are any (pip and npm need them
    behind a TLS-intercepting proxy)."""
    lines = [f"FROM {base}", "ENV DEBIAN_FRONTEND=noninteractive"]
    if packages.debian:
        words = " ".join(shell_quote(p) for p in packages.debian)
        install = f"apt-get install -y --no-install-recommends --allow-downgrades {words}"
        # with every pin present already (a local image of the release), no index is needed
        lines.append(f"RUN ({install} >/dev/null 2>&1 || (apt-get update && {install})) && rm -rf /var/lib/apt/lists/*")
    certificates = local_ca_files() if local_ca and (packages.python or packages.npm) else []
    if certificates:
        (environment_dir / CA_DIR).mkdir(exist_ok=True)
        for path in certificates:
            shutil.copy2(path, environment_dir / CA_DIR / path.name)
        lines += [f"COPY {CA_DIR}/ /usr/local/share/ca-certificates/",
                  "RUN update-ca-certificates >/dev/null",
                  "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt"]
    if packages.python:
        lines.append("RUN python3 -m pip install --no-cache-dir --break-system-packages "
                     + " ".join(shell_quote(p) for p in packages.python))
    if packages.npm:
        lines.append("RUN npm install -g " + " ".join(shell_quote(p) for p in packages.npm) + " && npm cache clean --force")
    return lines


def public_base(cfg: DictConfig) -> str:
    """``export.harbor.base_image``, else the Debian release the base image is made from."""
    return cfg.export.harbor.base_image or f"debian:{cfg.sandbox.get('suite') or 'bookworm'}"
