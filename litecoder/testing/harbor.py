"""Run Harbor itself (``pip install harbor``) against exported tasks, for tests.

Harbor needs Python >= 3.12; litecoder supports 3.10+. So Harbor lives in a Debian trixie root
built with debootstrap (cached under ``$LITECODER_HOME/harbor-root/``) and runs there with
``chroot``, talking to the host's Docker engine through its socket.

Every chroot runs inside ``unshare --mount``: its bind mounts (``/proc``, ``/dev``, the Docker
socket, the task and job directories) live in a private mount namespace that the kernel drops
when the process ends, even if it is killed, so no mount can outlive a run on the host.
Directories a container may see are bound at their host path, because the engine resolves the
bind volumes Harbor asks for (``JOBS/NAME/TRIAL/{verifier,agent,artifacts}``) on the host.
Harbor also runs without network (``unshare --net``; only building the root uses Debian's and
PyPI's servers): it needs none, and so cannot send its PostHog telemetry.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

from litecoder.paths import litecoder_home
from litecoder.sandboxes.base_image import host_debian_mirror

log = logging.getLogger(__name__)

__all__ = ["HarborError", "harbor_root", "parse_task_toml", "run_oracle", "validate_trajectory"]

SUITE = "trixie"
PACKAGES = ("python3", "python3-venv", "docker-cli", "docker-compose", "ca-certificates")
VENV = "/opt/h"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
#: bump when the way the root is built changes; it is part of the cache key
RECIPE_REVISION = 1
NETWORK_MODE = re.compile(r"^([ \t]*)network_mode[ \t]*=.*$", re.M)


class HarborError(RuntimeError):
    """Harbor's root could not be built, or Harbor failed; the message is one line."""


def _key(version: str) -> str:
    recipe = json.dumps([RECIPE_REVISION, SUITE, PACKAGES, VENV, version])
    return f"{SUITE}-harbor{version}-{hashlib.sha256(recipe.encode()).hexdigest()[:10]}"


def _env() -> dict[str, str]:
    """A clean environment for the chroot: the host's PIP_* (e.g. PIP_FIND_LINKS) point at
    host paths; LiteLLM must not fetch its price list, nor Harbor send telemetry (PostHog)."""
    env = {"PATH": f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "HOME": "/root", "LANG": "C.UTF-8", "PIP_CERT": CA_BUNDLE, "SSL_CERT_FILE": CA_BUNDLE,
           "REQUESTS_CA_BUNDLE": CA_BUNDLE, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_DEFAULT_TIMEOUT": "180",
           "LITELLM_LOCAL_MODEL_COST_MAP": "True", "HARBOR_TELEMETRY": "0", "PYTHONDONTWRITEBYTECODE": "1"}
    env.update({k: v for k, v in os.environ.items() if k.lower() in ("http_proxy", "https_proxy", "no_proxy")})
    return env


def _docker_socket() -> Path:
    host = os.environ.get("DOCKER_HOST", "unix:///run/docker.sock")
    if not host.startswith("unix://"):
        raise HarborError(f"DOCKER_HOST={host} is not a unix socket; Harbor's chroot needs the engine's socket")
    return Path(os.path.realpath(host.removeprefix("unix://")))


def mounts_under(root: Path) -> list[str]:
    """Mount points at or below ``root`` in this mount namespace, deepest first."""
    prefix = str(root.resolve())
    points = [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[1])  # "\040" is a space
              for line in Path("/proc/mounts").read_text().splitlines()]
    return sorted((p for p in points if p == prefix or p.startswith(prefix + "/")), key=len, reverse=True)


def detach_mounts(root: Path) -> None:
    """Detach mounts under ``root`` left in this namespace by an earlier process (this module's
    own live in private namespaces); raises if any remains."""
    for point in mounts_under(root):
        log.warning("detaching %s, left mounted by an earlier process", point)
        subprocess.run(["umount", "-l", point], capture_output=True)
    left = mounts_under(root)
    if left:
        raise HarborError(f"{root} is still mounted at {', '.join(left)}; unmount it by hand")


def remove_root(root: Path) -> None:
    """Delete a root, first detaching what is mounted in it: deleting through a bind of /dev or
    /proc would delete host files."""
    detach_mounts(root)
    shutil.rmtree(root, ignore_errors=True)
    if root.exists():
        raise HarborError(f"could not delete {root}")


def _in_root(root: Path, command: list[str], *, binds: tuple[Path, ...] = (), docker: bool = False,
             network: bool = False, input: str | None = None, timeout: float | None = None) -> subprocess.CompletedProcess:
    """``command`` chrooted into ``root``, inside a private mount namespace (see the module doc)
    and, unless ``network``, a network namespace with no interface up: Harbor reaches the engine
    through its socket (a file), so it needs no network, and then cannot send any (telemetry).
    ``binds`` are host directories bound at the same path in the root; runs with binds take
    turns (a lock), so one never removes a mount point another is using."""
    r = shlex.quote(str(root))
    lines = ["set -e", f"mount -t proc proc {r}/proc", f"mount --rbind /dev {r}/dev"]
    if docker:  # at /run itself: /var/run is a symlink to /run, which outside the chroot is the host's
        (root / "run/docker.sock").touch()
        lines.append(f"mount --bind {shlex.quote(str(_docker_socket()))} {r}/run/docker.sock")
    lines += [f"mount --bind {shlex.quote(str(host))} {r}{shlex.quote(str(host))}" for host in binds]
    lines.append(f'exec chroot {r} "$@"')
    argv = ["unshare", "--mount", *([] if network else ["--net"]), "--propagation", "private",
            "sh", "-c", "\n".join(lines), "sh", *command]
    with _locked(root.parent / f".{root.name}.binds.lock") if binds else contextlib.nullcontext():
        made = [_make_mount_point(root, host) for host in binds]
        try:
            return _run(argv, command, input, timeout)
        finally:
            for point, top in made:  # the mounts died with the namespace; drop the dirs made for them
                _remove_empty_dirs(point, top)


def _run(argv: list[str], command: list[str], input: str | None, timeout: float | None) -> subprocess.CompletedProcess:
    """On a timeout the process group gets SIGINT (Harbor then stops its containers), later SIGKILL."""
    with subprocess.Popen(argv, env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, start_new_session=True) as process:
        try:
            out, err = process.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            _stop(process)
            raise HarborError(f"{' '.join(command[:2])} took longer than {timeout:.0f} s and was stopped") from None
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def _stop(process: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGINT, 60), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.communicate(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _make_mount_point(root: Path, host: Path) -> tuple[Path, Path | None]:
    """Create ``host``'s path in the root; returns it with the topmost directory this created.
    Refuses a path through a symlink in the root: outside the chroot it points at the host."""
    point, top = root, None
    for part in host.parts[1:]:
        point = point / part
        if point.is_symlink():
            raise HarborError(f"cannot bind {host} into Harbor's root: {point} is a symlink there")
        if top is None and not point.exists():
            top = point
    point.mkdir(parents=True, exist_ok=True)
    return point, top


def _remove_empty_dirs(point: Path, top: Path | None) -> None:
    """Remove the empty directories from ``point`` up to ``top`` (those _make_mount_point made)."""
    while top is not None and point.is_relative_to(top) and not mounts_under(point):
        try:
            point.rmdir()
        except OSError:
            return
        point = point.parent


def _tail(result: subprocess.CompletedProcess, lines: int = 4) -> str:
    return " | ".join((result.stdout.strip().splitlines() + result.stderr.strip().splitlines())[-lines:])


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def harbor_root(version: str = "0.25.0") -> Path:
    """The cached root with Harbor ``version`` in ``/opt/h``, built on first use (minutes).

    Built in a temp dir next to its final place and renamed when complete, so a killed build
    never leaves a root that looks ready; a lock keeps two processes from building at once.
    """
    cache = litecoder_home() / "harbor-root"
    cache.mkdir(parents=True, exist_ok=True)
    key = _key(version)
    final = cache / key
    with _locked(cache / f".{key}.lock"):
        if (final / "litecoder-harbor.json").is_file():
            detach_mounts(final)
            return final
        for stale in cache.glob(f".{key}.building-*"):
            remove_root(stale)
        building = Path(tempfile.mkdtemp(prefix=f".{key}.building-", dir=cache))
        try:
            _build(building, version)
            (building / "litecoder-harbor.json").write_text(json.dumps({"key": key, "suite": SUITE, "packages": PACKAGES,
                                                                        "harbor": version}) + "\n")
            building.rename(final)
        finally:
            if building.exists():
                remove_root(building)
    log.info("Harbor %s is ready in %s", version, final)
    return final


def _build(root: Path, version: str) -> None:
    mirror = host_debian_mirror() or "http://deb.debian.org/debian"
    started = time.monotonic()
    log.info("building Harbor's root in %s: debootstrap %s from %s (a few minutes)", root, SUITE, mirror)
    # inside unshare too: the /proc and /sys debootstrap mounts in its target vanish with it
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "debootstrap", "--variant=minbase",
                             f"--include={','.join(PACKAGES)}", SUITE, str(root), mirror], capture_output=True, text=True)
    if result.returncode != 0:
        raise HarborError(f"debootstrap {SUITE} failed (exit {result.returncode}): {_tail(result)}")
    shutil.copyfile(CA_BUNDLE, root / CA_BUNDLE.lstrip("/"))  # the host's CAs (a proxy's CA among them)
    for leftover in (root / "var/cache/apt/archives").glob("*.deb"):
        leftover.unlink()
    log.info("debootstrap took %.0f s; installing harbor==%s with pip", time.monotonic() - started, version)
    result = _in_root(root, ["sh", "-c", f"python3 -m venv {VENV} && {VENV}/bin/pip install -q harbor=={version}"],
                      network=True)
    if result.returncode != 0:
        raise HarborError(f"pip install harbor=={version} failed (exit {result.returncode}): {_tail(result)}")
    log.info("Harbor's root took %.0f s in all", time.monotonic() - started)


def relax_network_mode(task_toml: Path) -> None:
    """Set every ``network_mode`` in ``task_toml`` to "public". Harbor's Docker environment
    enforces any other mode with an egress-control sidecar, and first probes the engine's kernel
    by running a pinned alpine image pulled from Docker Hub, which an offline machine (and the
    tests' network rule) does not allow; with "public" everywhere it skips the probe. "public"
    rather than deleting the line: it means the same in [environment] (the default) and in
    [agent]/[verifier], where a missing key would inherit whatever [environment] says."""
    text = task_toml.read_text()
    task_toml.write_text(NETWORK_MODE.sub(r'\1network_mode = "public"', text))


def run_oracle(tasks_dir: Path, jobs_dir: Path, job_name: str, relax_network: bool = True,
               timeout: float = 900) -> dict[str, float]:
    """Run Harbor's ``oracle`` agent (each task's solution/solve.sh) on the tasks in
    ``tasks_dir`` (or on ``tasks_dir`` itself if it is a task) with the host's Docker engine.

    Runs on copies in a staging dir, relaxed by :func:`relax_network_mode` when
    ``relax_network``. Returns ``{task directory name: reward}`` read from each trial's
    ``JOBS/NAME/<trial>/result.json`` (``verifier_result.rewards``); raises HarborError with
    the tail of Harbor's output when it fails, or names the task whose trial has no reward.
    """
    root = harbor_root()
    tasks_dir, jobs_dir = Path(tasks_dir).resolve(), Path(jobs_dir).resolve()
    tasks = [tasks_dir] if (tasks_dir / "task.toml").is_file() else sorted(
        p for p in tasks_dir.iterdir() if (p / "task.toml").is_file())
    if not tasks:
        raise HarborError(f"no task directories (with a task.toml) in {tasks_dir}")
    jobs_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="litecoder-harbor-tasks-") as tmp:
        staging = Path(tmp).resolve() / tasks_dir.name  # Harbor names the dataset after it
        for task in tasks:
            shutil.copytree(task, staging / task.name, symlinks=True)
            if relax_network:
                relax_network_mode(staging / task.name / "task.toml")
        command = ["harbor", "run", "-p", str(staging), "-a", "oracle", "-e", "docker", "-y", "-o", str(jobs_dir),
                   "--job-name", job_name]
        log.info("harbor run: %d task(s) from %s%s", len(tasks), tasks_dir, " (network_mode relaxed to public)" * relax_network)
        started = time.monotonic()
        result = _in_root(root, command, binds=(staging.parent, jobs_dir), docker=True, timeout=timeout)
    if result.returncode != 0:
        raise HarborError(f"harbor run failed (exit {result.returncode}): {_tail(result, 8)}")
    rewards = trial_rewards(jobs_dir / job_name)
    log.info("harbor run took %.0f s: %s", time.monotonic() - started, rewards)
    missing = sorted({t.name for t in tasks} - set(rewards))
    if missing:
        raise HarborError(f"Harbor wrote no trial for {', '.join(missing)} in {jobs_dir / job_name}: {_tail(result, 8)}")
    return rewards


def trial_rewards(job_dir: Path) -> dict[str, float]:
    """``{task directory name: reward}`` from a Harbor job directory: each trial directory holds
    a ``result.json`` (a TrialResult) next to the job's own ``result.json``."""
    rewards: dict[str, float] = {}
    for path in sorted(job_dir.glob("*/result.json")):
        trial = json.loads(path.read_text())
        name = Path(trial["task_id"].get("path") or trial["task_name"]).name
        scores = (trial.get("verifier_result") or {}).get("rewards")
        if not scores:
            error = trial.get("exception_info") or {}
            message = " ".join(str(error.get("exception_message", "")).split())[-1500:]  # the cause is at the end
            raise HarborError(f"trial {path.parent.name} of {name} has no reward: {error.get('exception_type', '?')}: {message}")
        rewards[name] = float(scores["reward"] if "reward" in scores else next(iter(scores.values())))
    return rewards


_VALIDATE = """
import json, sys
from pydantic import ValidationError
from {module} import {cls}
text = sys.stdin.read()
try:
    print({parse}.model_dump_json())
except (ValidationError, ValueError) as exc:
    print(exc, file=sys.stderr)
    sys.exit(3)
"""


def _harbor_python(module: str, cls: str, parse: str, text: str, version: str) -> dict:
    """``parse`` (an expression of ``text``) run by Harbor's Python in its root; exit 3 means
    Harbor's model rejected the input."""
    script = _VALIDATE.format(module=module, cls=cls, parse=parse)
    result = _in_root(harbor_root(version), ["python", "-c", script], input=text, timeout=120)
    if result.returncode == 3:
        raise ValueError(f"Harbor's {cls} rejects it: {result.stderr.strip()}")
    if result.returncode != 0:
        raise HarborError(f"Harbor's python failed (exit {result.returncode}): {_tail(result)}")
    return json.loads(result.stdout)


def validate_trajectory(trajectory: Path | str | dict, version: str = "0.25.0") -> None:
    """Check an ATIF trajectory (a path or the parsed dict) with Harbor's own model, so the
    exporter is held to what Harbor accepts rather than to litecoder's reading of the spec.
    Raises ValueError carrying Harbor's validation error."""
    text = json.dumps(trajectory) if isinstance(trajectory, dict) else Path(trajectory).read_text()
    _harbor_python("harbor.models.trajectories.trajectory", "Trajectory", "Trajectory.model_validate(json.loads(text))", text,
                   version)


def parse_task_toml(path: Path | str, version: str = "0.25.0") -> dict:
    """A task.toml parsed by Harbor's TaskConfig (``model_validate_toml``), dumped to JSON:
    what Harbor will make of the file. Raises ValueError carrying Harbor's validation error."""
    return _harbor_python("harbor.models.task.config", "TaskConfig", "TaskConfig.model_validate_toml(text)",
                          Path(path).read_text(), version)
