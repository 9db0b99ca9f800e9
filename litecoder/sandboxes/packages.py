"""What an agent installed in a container: package lists before and after, and their files.

The environment stage records the Debian and Python packages installed while a task was
prepared, with exact versions, so that an export can install them again from the registries
(pinned) instead of copying their files into the task's starting state. Those files are
therefore left out of the paths the stage records as the state.
"""

from __future__ import annotations

import json
import shlex
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..sandboxes.base import Session
    from .base import Change

#: Debian packages, Python distributions outside Debian's own directory (pip's, not apt's),
#: and the size of apt's history log; needs no network
SNAPSHOT_SCRIPT = r"""
dpkg-query -W -f '${Package}=${Version}\n' 2>/dev/null
echo '--- python'
python3 - <<'PY' 2>/dev/null
import importlib.metadata as metadata
for dist in metadata.distributions():
    if not str(dist.locate_file("")).startswith("/usr/lib/python3/"):
        print(f"{dist.metadata['Name']}=={dist.version}")
PY
echo '--- apt-history'
stat -c %s /var/log/apt/history.log 2>/dev/null || echo 0
"""
#: files of the given Python distributions, one per line
PYTHON_FILES = r"""
import importlib.metadata as metadata, sys
wanted = {name.lower() for name in sys.argv[1:]}
for dist in metadata.distributions():
    if dist.metadata["Name"].lower() in wanted:
        for path in dist.files or []:
            print(dist.locate_file(path))
"""
#: where package managers keep their own books; never part of a task's starting state
PACKAGE_STATE = ("/var/lib/dpkg", "/var/lib/apt", "/var/cache/apt", "/var/cache/debconf", "/var/cache/ldconfig",
                 "/var/log/apt", "/var/log/dpkg.log", "/var/log/alternatives.log", "/etc/ld.so.cache",
                 "/etc/alternatives", "/root/.cache/pip", "/var/lib/ucf")
SYSTEM_DIRS = ("/usr/", "/etc/", "/var/", "/opt/", "/lib", "/bin/", "/sbin/")


def snapshot(session: Session, timeout: float = 60) -> dict:
    """``{"debian": {name: version}, "python": {name: version}, "apt_log_bytes": n}``."""
    output = session.exec(SNAPSHOT_SCRIPT, timeout=timeout, max_output_bytes=4_000_000).output
    debian_part, _, rest = output.partition("--- python\n")
    python_part, _, history = rest.partition("--- apt-history\n")
    pairs = lambda text, sep: dict(line.split(sep, 1) for line in text.splitlines() if sep in line)  # noqa: E731
    digits = history.strip().splitlines()[-1:] or ["0"]
    return {"debian": pairs(debian_part, "="), "python": pairs(python_part, "=="),
            "apt_log_bytes": int(digits[0]) if digits[0].isdigit() else 0}


def installed(before: dict, after: dict) -> dict[str, list[str]]:
    """Packages new or at another version after preparation: ``name=version`` (Debian) and
    ``name==version`` (Python), the pins an export installs."""
    new = lambda kind: {n: v for n, v in after[kind].items() if before[kind].get(n) != v}  # noqa: E731
    return {"debian": [f"{n}={v}" for n, v in sorted(new("debian").items())],
            "python": [f"{n}=={v}" for n, v in sorted(new("python").items())]}


def apt_history(session: Session, since_bytes: int, timeout: float = 30) -> str:
    """What apt wrote to its history log after ``since_bytes`` (the agent's installs)."""
    result = session.exec(f"tail -c +{int(since_bytes) + 1} /var/log/apt/history.log 2>/dev/null", timeout=timeout)
    return result.output.strip()[-20_000:]


def owned_paths(session: Session, packages: dict[str, list[str]], timeout: float = 60) -> set[str]:
    """Files and directories that the given packages installed."""
    names = [p.split("=", 1)[0] for p in packages["debian"]]
    python = [p.split("==", 1)[0] for p in packages["python"]]
    commands = []
    if names:
        quoted = " ".join(shlex.quote(n) for n in names)
        # files changed since they were installed (an edited config) belong to the state
        commands.append(f"dpkg -L {quoted} 2>/dev/null; echo '--- changed'; dpkg -V {quoted} 2>/dev/null; echo '--- python'")
    if python:
        commands.append(f"python3 -c {shlex.quote(PYTHON_FILES)} " + " ".join(shlex.quote(n) for n in python))
    if not commands:
        return set()
    output = session.exec("; ".join(commands), timeout=timeout, max_output_bytes=16_000_000).output
    listed, _, rest = output.partition("--- changed\n")
    changed, _, python_files = rest.partition("--- python\n")
    edited = {line.split()[-1] for line in changed.splitlines() if " /" in line}
    owned = {line.rstrip("/") for line in (listed + python_files).splitlines() if line.startswith("/")}
    return owned - edited


def without_package_files(changes: list[Change], owned: set[str]) -> list[Change]:
    """Changes (``sandboxes.base.Change``) less the package managers' books, the packages' own files, and
    new system directories that only hold such files."""
    parents = {p.rsplit("/", i)[0] for p in owned for i in range(1, p.count("/"))}
    kept = []
    for change in changes:
        path = change.path
        if path.startswith(PACKAGE_STATE) or path in owned:
            continue
        if path in parents and path.startswith(SYSTEM_DIRS):
            continue
        kept.append(change)
    return kept


def as_json(packages: dict[str, list[str]]) -> str:
    return json.dumps(packages, sort_keys=True)
