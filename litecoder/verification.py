"""How an episode is verified, so that no agent gets the reward by tampering with the system.

A verifier is a script, and a script trusts the programs and files it runs with. An agent in
control of a container can replace any of them (``python3``, ``cat``, a data file), so the
verifier never runs on what the agent changed, apart from what decides the task:

- ``separate`` (a task that declared its outputs, the paths whose final content decides it):
  the engine, not a program in the agent's container, copies those paths out; the agent's
  container goes; a fresh offline container from the task's pristine image receives them, and
  the verifier runs there.
- ``shared`` (a task whose outcome is the system itself, such as a running service, and
  imported tasks, whose outputs nobody declared): the verifier runs in the agent's container
  behind an integrity guard. Before the agent starts, the pristine container gives a baseline
  (the Debian packages' md5sums, the Python wheels' RECORD hashes, the commands on ``PATH``,
  the start state's files); afterwards the engine's list of changed paths is held against it,
  and each changed file is read back by the engine and hashed on the host. A replaced package
  file, a command shadowed earlier on ``PATH``, a start-up hook (``*.pth``, ``sitecustomize``,
  ``ld.so.preload``) or an edited start file that is not a declared output marks the episode
  ``tampered``: never solved, and the record names the paths.
"""

from __future__ import annotations

import base64
import hashlib
import io
import posixpath
import tarfile
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

from .errors import SandboxError
from .sandboxes.base import Change, Sandbox, Session, run_verifier, shell_quote

if TYPE_CHECKING:
    from omegaconf import DictConfig

SEPARATE, SHARED = "separate", "shared"
MODES = (SEPARATE, SHARED)

#: paths every container changes by itself (the shell's history, litecoder's own files, the
#: init binary the engine puts in with ``init=True``, tmux's socket directory)
NOISE = ("/root/.bash_history", "/tmp/.litecoder", "/usr/sbin/docker-init", "/sbin/docker-init", "/tmp/tmux-")
#: the directories of a container's default ``PATH``, in lookup order
PATH_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
#: files that run code before any Python program or any dynamically linked program starts
PYTHON_HOOKS = ("sitecustomize.py", "usercustomize.py")
LOADER_HOOKS = ("/etc/ld.so.preload",)
#: declared outputs may name files anywhere but these, and no directory this wide
OFF_LIMITS = ("/proc", "/sys", "/dev", "/var/lib/dpkg")
TOO_WIDE = {"/", "/usr", "/usr/bin", "/usr/sbin", "/usr/lib", "/usr/local", "/usr/local/bin", "/usr/local/sbin",
            "/usr/local/lib", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/var", "/var/lib",
            "/root", "/home", "/opt", "/srv", "/tmp", "/boot"}
MAX_OUTPUTS = 50
#: start files hashed for the guard, at most
MAX_START_FILES = 5000
START_LIST = "/tmp/.litecoder-start-files"

BASELINE_SCRIPT = rf"""
cat /var/lib/dpkg/info/*.md5sums 2>/dev/null
echo '--- record'
find /usr /opt /root /home /srv -path '*-packages/*.dist-info/RECORD' 2>/dev/null | while IFS= read -r f; do
  echo "## $f"; cat "$f"; echo
done
echo '--- links'
find {' '.join(d + '/' for d in PATH_DIRS)} /etc/alternatives/ -maxdepth 1 -type l -printf '%p\t%l\n' 2>/dev/null
echo '--- commands'
find {' '.join(d + '/' for d in PATH_DIRS)} -maxdepth 1 ! -type d -printf '%f\n' 2>/dev/null | sort -u | while IFS= read -r n; do
  printf '%s\t%s\n' "$n" "$(type -P -- "$n")"
done
echo '--- files'
if [ -s {START_LIST} ]; then
  tr '\n' '\0' < {START_LIST} | while IFS= read -r -d '' p; do
    if [ -f "$p" ] && [ ! -L "$p" ]; then sha256sum -- "$p"; fi
  done
fi
"""


@dataclass
class VerificationConfig:
    """How every episode's outcome is verified (teacher and eval rollouts, certification's
    checks, cheat trials): ``verification.py``."""

    #: largest size of one declared output copied into the verifier's container
    max_output_bytes: int = 256 << 20
    #: the integrity guard of ``shared`` tasks (false trusts the agent's container: a replaced
    #: ``python3`` or ``cat`` then earns the reward)
    guard: bool = True


@dataclass
class Verdict:
    """What verifying one episode found."""

    mode: str
    exit_code: Optional[int]
    output: str
    #: the paths the agent changed that the verifier relies on, each with why
    tampered: list[str] = field(default_factory=list)
    #: containers the episode took: its own, and the verifier's when that was a fresh one
    containers: int = 1

    @property
    def solved(self) -> bool:
        return self.exit_code == 0 and not self.tampered


def mode_of(task: dict) -> str:
    """A task's verification: ``separate`` when it declared outputs and is not about the system itself."""
    declared = task.get("verification")
    if declared in MODES:
        return declared
    return SEPARATE if task.get("outputs") else SHARED


def check_outputs(paths: list[str]) -> str | None:
    """Why a list of declared outputs is unusable, or None."""
    if len(paths) > MAX_OUTPUTS:
        return f"at most {MAX_OUTPUTS} outputs, got {len(paths)}"
    for path in paths:
        clean = posixpath.normpath(path) if path else ""
        if not clean.startswith("/"):
            return f"{path!r} is not an absolute path"
        if clean in TOO_WIDE:
            return f"{path!r} is too wide: name the files or the project directory that decide the task"
        if any(clean == p or clean.startswith(p + "/") for p in OFF_LIMITS):
            return f"{path!r} is under {next(p for p in OFF_LIMITS if clean.startswith(p))}, which a task cannot own"
    return None


def normal_outputs(paths: list[str]) -> list[str]:
    """Declared outputs, normalized, without those inside another."""
    kept: list[str] = []
    for path in sorted({posixpath.normpath(p) for p in paths if p}):
        if not any(path.startswith(parent + "/") for parent in kept):
            kept.append(path)
    return kept


def covered(path: str, outputs: list[str]) -> bool:
    return any(path == o or path.startswith(o.rstrip("/") + "/") for o in outputs)


@dataclass
class Baseline:
    """What the pristine container had that a verifier may rely on."""

    #: path -> (algorithm, digest): ``md5`` hex (dpkg), ``record`` (a wheel's urlsafe base64
    #: sha256), ``sha256`` hex (start files)
    hashes: dict[str, tuple[str, str]]
    #: symbolic links on PATH and in /etc/alternatives -> their targets
    links: dict[str, str]
    #: names of the commands on PATH
    commands: set[str]
    #: each command's path as bash resolves it (``type -P``)
    resolved: dict[str, str] = field(default_factory=dict)

    def guard_files(self, outputs: list[str]) -> dict[str, str]:
        """The files a shared verifier's ``test.sh`` checks before it trusts the container
        (``GUARD_SH``): the md5sums of the package files on PATH, the start files' sha256,
        where each command resolves, the links on PATH; declared outputs are left out."""
        def on_path(path: str) -> bool:
            return posixpath.dirname(path) in PATH_DIRS[:4] and not covered(path, outputs)

        return {
            "integrity.md5": "".join(f"{d}  {p}\n" for p, (a, d) in sorted(self.hashes.items()) if a == "md5" and on_path(p)),
            "integrity.sha256": "".join(f"{d}  {p}\n" for p, (a, d) in sorted(self.hashes.items())
                                        if a == "sha256" and not covered(p, outputs)),
            "commands.tsv": "".join(f"{n}\t{p}\n" for n, p in sorted(self.resolved.items()) if not covered(p, outputs)),
            "links.tsv": "".join(f"{p}\t{t}\n" for p, t in sorted(self.links.items()) if on_path(p)),
        }

    def judge(self, change: Change, session: Session, max_bytes: int) -> str | None:
        """Why this change is tampering, or None."""
        path = change.path
        expected = self.hashes.get(path)
        if expected is not None or path in self.links:
            if change.kind == "deleted":
                return "deleted"
            member, data = read_member(session, path, max_bytes)
            if expected is None:
                return None if member is not None and member.issym() and member.linkname == self.links[path] \
                    else "link replaced"
            if member is None or not member.isfile():
                return "replaced by something that is not a file"
            return None if digest(expected[0], data) == expected[1] else "content changed"
        directory, name = posixpath.split(path)
        if change.kind == "added" and directory in PATH_DIRS and name in self.commands:
            return f"shadows the command {name!r}"
        if change.kind != "deleted" and (name in PYTHON_HOOKS or path in LOADER_HOOKS
                                         or (name.endswith(".pth") and "-packages/" in path)):
            return "a start-up hook that runs before the verifier's programs"
        return None


def digest(algorithm: str, data: bytes) -> str:
    if algorithm == "md5":
        return hashlib.md5(data).hexdigest()  # noqa: S324 - dpkg's own checksums
    if algorithm == "record":
        return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return hashlib.sha256(data).hexdigest()


def read_member(session: Session, path: str, max_bytes: int) -> tuple[tarfile.TarInfo | None, bytes]:
    """The archive entry of ``path`` as the engine reads it, and a regular file's bytes."""
    try:
        data = session.read_archive(path, max_bytes=max_bytes)
    except Exception:  # noqa: BLE001 - unreadable counts as replaced
        return None, b""
    if data is None:
        return None, b""
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        member = archive.next()
        if member is None:
            return None, b""
        handle = archive.extractfile(member) if member.isfile() else None
        return member, handle.read() if handle else b""


def parse_baseline(text: str) -> Baseline:
    sums, _, rest = text.partition("--- record\n")
    records, _, rest = rest.partition("--- links\n")
    links, _, rest = rest.partition("--- commands\n")
    commands, _, files = rest.partition("--- files\n")
    hashes: dict[str, tuple[str, str]] = {}
    for line in sums.splitlines():
        value, _, relative = line.partition("  ")
        if relative:
            for path in merged_usr("/" + relative.strip().lstrip("/")):
                hashes[path] = ("md5", value.strip())
    base = ""
    for line in records.splitlines():
        if line.startswith("## "):
            base = posixpath.dirname(posixpath.dirname(line[3:].strip()))
            continue
        parts = line.rsplit(",", 2)
        if base and len(parts) == 3 and parts[1].startswith("sha256="):
            for path in merged_usr(posixpath.normpath(posixpath.join(base, parts[0]))):
                hashes[path] = ("record", parts[1][len("sha256="):])
    for line in files.splitlines():
        value, _, path = line.partition("  ")
        if path.startswith("/"):
            hashes[path] = ("sha256", value)
    pairs = (line.split("\t", 1) for line in links.splitlines() if "\t" in line)
    found = [line.split("\t", 1) for line in commands.splitlines() if "\t" in line]
    return Baseline(hashes, {merged: target for path, target in pairs for merged in merged_usr(path)},
                    {name for name, _ in found},
                    {name: path for name, path in found if path.startswith("/") and not path.startswith(NOISE)})


def merged_usr(path: str) -> list[str]:
    """``path`` and, for the top directories Debian links into /usr, the path the engine reports."""
    top = path.split("/", 2)[1] if path.count("/") > 1 else ""
    return [path, "/usr" + path] if top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32") else [path]


def start_files(task: dict) -> list[str]:
    """The start state's files a verifier may read: what the environment agent added or changed."""
    paths = set(task.get("added_paths") or []) | set(task.get("changed_paths") or [])
    return sorted(paths - set(task.get("deleted_paths") or []))[:MAX_START_FILES]


class Verifier:
    """Verifies the episodes of one stage; keeps each image's baseline (shared mode)."""

    def __init__(self, sandbox: Sandbox, config: DictConfig) -> None:
        self.sandbox = sandbox
        self.config = config
        self._baselines: dict[str, Baseline] = {}
        self._lock = threading.Lock()

    def before(self, session: Session, task: dict) -> Baseline | None:
        """Read the baseline from the agent's container while it is still pristine (a shared
        task with the guard on); None otherwise."""
        if mode_of(task) != SHARED or not self.config.guard:
            return None
        key = image_of(task)
        with self._lock:
            if key in self._baselines:
                return self._baselines[key]
        baseline = capture(session, task)
        with self._lock:
            self._baselines[key] = baseline
        return baseline

    def verify(self, session: Session, task: dict, *, timeout: float, name: str,
               baseline: Baseline | None = None) -> Verdict:
        """Verify what the episode in ``session`` left. In separate mode ``session`` is removed
        on the way (before the verifier's container starts, so a run never holds two per item)."""
        if mode_of(task) == SEPARATE:
            return self._separate(session, task, timeout, name)
        return self._shared(session, task, timeout, baseline)

    def _shared(self, session: Session, task: dict, timeout: float, baseline: Baseline | None) -> Verdict:
        tampered = []
        if baseline is not None:
            outputs = normal_outputs(task.get("outputs") or [])
            for change in session.changes():
                if change.path.startswith(NOISE) or covered(change.path, outputs):
                    continue
                why = baseline.judge(change, session, int(self.config.max_output_bytes))
                if why:
                    tampered.append(f"{change.path}: {why}")
        if tampered:
            return Verdict(SHARED, None, "the verifier was not run: the agent changed what it relies on", tampered[:50])
        code, output = run_verifier(session, task["verifier"], timeout)
        return Verdict(SHARED, code, output)

    def _separate(self, session: Session, task: dict, timeout: float, name: str) -> Verdict:
        archives = collect(session, normal_outputs(task.get("outputs") or []), int(self.config.max_output_bytes))
        hooks = [f"{path}: {why}" for path, data in archives.items() if data for why in archive_hooks(path, data)]
        if hooks:
            return Verdict(SEPARATE, None, "the verifier was not run: an output holds a start-up hook", hooks)
        fresh = receive(self.sandbox, image_of(task), f"{name}-verify", archives)
        try:
            code, output = run_verifier(fresh, task["verifier"], timeout)
        finally:
            fresh.remove()
        return Verdict(SEPARATE, code, output, containers=2)


def collect(session: Session, paths: list[str], max_bytes: int) -> dict[str, bytes | None]:
    """The outputs as the engine reads them from ``session``, which is then removed (before the
    verifier's container starts, so an item never holds two)."""
    archives = {path: session.read_archive(path, max_bytes=max_bytes) for path in paths}
    session.remove()
    return archives


def receive(sandbox: Sandbox, image: str, name: str, archives: dict[str, bytes | None]) -> Session:
    """A fresh offline container from ``image`` with the outputs where they were."""
    session = sandbox.open(name, image=image, network="none")
    try:
        restore(session, archives)
    except BaseException:
        session.remove()
        raise
    return session


def capture(session: Session, task: dict) -> Baseline:
    """The baseline of a pristine container from the task's image."""
    session.write_files({START_LIST: "\n".join(start_files(task))})
    result = session.exec(BASELINE_SCRIPT, timeout=300, max_output_bytes=64_000_000)
    return parse_baseline(result.output)


#: the start of an exported shared verifier's ``test.sh``: the guard on the files that
#: ``Baseline.guard_files`` wrote beside it (they arrive after the agent, like every test);
#: the container's own tools do the checking, so this guard is best effort
GUARD_SH = r"""
guard() {
  local here="$1" bad=0 name path link target
  (cd / && md5sum --quiet --strict -c "$here/integrity.md5") || bad=1
  if [ -s "$here/integrity.sha256" ]; then (cd / && sha256sum --quiet -c "$here/integrity.sha256") || bad=1; fi
  while IFS=$'\t' read -r name path; do
    if [ "$(type -P -- "$name")" != "$path" ]; then echo "tampered: $name is $(type -P -- "$name"), was $path"; bad=1; fi
  done < "$here/commands.tsv"
  while IFS=$'\t' read -r link target; do
    if [ "$(readlink -- "$link")" != "$target" ]; then echo "tampered: $link points elsewhere"; bad=1; fi
  done < "$here/links.tsv"
  return "$bad"
}
"""


def image_of(task: dict) -> str:
    return task.get("image_id") or task["image"]


def restore(session: Session, archives: dict[str, bytes | None]) -> None:
    """Put each output where it was; an output the agent removed (or never made) is absent."""
    script = "set -e\n" + "".join(f"rm -rf -- {shell_quote(p)}\nmkdir -p -- {shell_quote(posixpath.dirname(p))}\n"
                                  for p in archives)
    result = session.exec(script, timeout=120)
    if not result.ok:  # an engine-side failure: it ends the item, not the run
        raise SandboxError(f"could not make room for the outputs: {result.output[-300:]}")
    for path, data in archives.items():
        if data:
            session.write_archive(posixpath.dirname(path), data)


def archive_hooks(path: str, data: bytes) -> list[str]:
    """Start-up hooks inside an output directory (a declared hook file itself is the task's)."""
    found = []
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        for index, member in enumerate(archive):
            name = posixpath.basename(member.name)
            if index and (name in PYTHON_HOOKS or name.endswith(".pth")):
                found.append(f"{member.name} is a Python start-up hook")
    return found
