"""The Docker sandbox: containers on a real engine through the ``docker`` SDK.

Safe by default: no network unless a stage asks for one (``none``, ``registries``: the
package registries through an allowlist proxy, ``full``), CPU, memory, process and file-size
limits, no privileges, no new privileges, no host mounts, no Docker socket. Containers start
from the run's image: the domain's toolchain image (``toolchain``) or the bare base image.
Everything litecoder creates carries the ``litecoder.run`` label with the run's id (unique per
run directory, see ``names``), so whatever a killed run left behind is removed when the same
run starts again (and at its end, and on Ctrl-C), and nothing of another run is.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import posixpath
import signal
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Optional

from .. import hookimpl
from .base import NETWORKS, Change, ExecResult, HeadTail, SandboxError
from .base_image import ensure_base_image
from .names import LABEL_ITEM, LABEL_RUN
from .proxy import RegistryProxy, default_allow_hosts, remove_run_networks
from .toolchain import ensure_manifest, ensure_toolchain_image, is_empty

if TYPE_CHECKING:
    from docker.models.containers import Container
    from omegaconf import DictConfig
    from ..registry import Registry

log = logging.getLogger(__name__)

KEEPALIVE = ["sleep", "infinity"]
#: chunks of an image copied between engines (``save_image``/``load_image``)
IMAGE_CHUNK_BYTES = 8 << 20

#: Runs $1 in its own process group with a deadline of $2 seconds, then kills whatever is
#: left of that group, so neither a timeout nor a stray background job outlives the command.
#: The watchdog takes its timer down with it and holds no output stream: a process that still
#: holds the exec's stdout keeps the engine waiting for seconds after the command ended.
RUNNER = r"""
setsid bash -c "$1" &
pid=$!
(
  trap 'kill "$timer" 2>/dev/null; exit 0' TERM
  sleep "$2" & timer=$!
  wait "$timer"
  kill -9 -"$pid" 2>/dev/null
) >/dev/null 2>&1 </dev/null &
watchdog=$!
wait "$pid" 2>/dev/null
status=$?
kill -9 -"$pid" 2>/dev/null
kill "$watchdog" 2>/dev/null
exit "$status"
"""
START_HINT = "start one with `bash scripts/setup.sh` (installs Debian's docker.io and starts dockerd) or run `dockerd &` as root"


@dataclass
class DockerSandboxConfig:
    type: str = "docker"
    #: base image; made by ``builder`` when it is missing locally
    image: str = "litecoder-base:bookworm"
    #: ``debootstrap`` (offline, from Debian packages), ``pull`` or ``dockerfile``
    builder: str = "debootstrap"
    #: packages of the debootstrap image
    packages: list[str] = field(default_factory=lambda: [
        "bash", "coreutils", "git", "python3", "procps", "tmux", "curl", "ca-certificates",
        "less", "nano", "file", "patch", "diffutils", "findutils", "grep", "sed", "gawk",
    ])
    suite: str = "bookworm"
    #: Debian mirror for debootstrap; null: the first one in the host's apt sources
    mirror: Optional[str] = None
    #: Dockerfile directory for ``builder=dockerfile``
    dockerfile_dir: Optional[str] = None
    #: start containers from the domain's toolchain image (``stage=image``) rather than the
    #: bare base image
    toolchain: bool = True
    #: hosts the ``registries`` network reaches through the proxy; null: the hosts of this
    #: machine's apt sources and pip configuration, PyPI and the npm registry
    registries: Optional[list[str]] = None
    cpus: float = 1.0
    memory: str = "2g"
    pids_limit: int = 256
    #: largest single file a command may write (RLIMIT_FSIZE)
    max_file_bytes: int = 1 << 30
    #: a container whose writable layer grows past this fails its item
    max_disk_bytes: int = 4 << 30
    #: containers running at once
    max_containers: int = 4
    #: output kept per command (head and tail)
    max_output_bytes: int = 16_000
    #: Docker API timeout in seconds
    api_timeout: float = 120.0


#: ``docker diff``'s kinds
CHANGE_KINDS = {0: "modified", 1: "added", 2: "deleted"}


def engine_errors(method):
    """The engine's errors (docker-py's, and the HTTP connection's under it) as
    ``SandboxError``, which fails the item at hand and not the run."""

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except SandboxError:
            raise
        except Exception as exc:
            import docker
            import requests

            if isinstance(exc, (docker.errors.DockerException, requests.exceptions.RequestException)):
                raise SandboxError(f"docker: {exc}") from exc
            raise

    return wrapper


def docker_client(timeout: float = 120.0):
    """A client for the local engine, or one clear line saying how to start one."""
    import docker

    try:
        client = docker.from_env(timeout=int(timeout))
        client.ping()
    except Exception as exc:  # noqa: BLE001 - every failure here means "no engine"
        raise SandboxError(f"no Docker engine is reachable ({type(exc).__name__}); {START_HINT}") from exc
    return client


class DockerSession:
    """One container for one item."""

    def __init__(self, sandbox: "DockerSandbox", container: Container, item: str, env: dict[str, str] | None = None) -> None:
        self.sandbox = sandbox
        self.container = container
        self.id = container.id
        self.item = item
        self.host: str | None = None
        #: per-command environment (the proxy's address), so a committed image keeps none of it
        self.env = dict(env or {})
        self._removed = False

    @engine_errors
    def exec(self, command: str, *, timeout: float, max_output_bytes: int | None = None) -> ExecResult:
        """Run ``command`` with bash; background processes it leaves are killed with it."""
        config = self.sandbox.config
        api = self.sandbox.client.api
        seconds = max(1, int(round(timeout)))
        exec_id = api.exec_create(self.id, ["bash", "-c", RUNNER, "litecoder", command, str(seconds)],
                                  stdout=True, stderr=True, workdir="/root", environment=self.env or None)["Id"]
        keeper = HeadTail(max_output_bytes or config.max_output_bytes)
        pids_hit_before = self._pids_limit_hits()
        started = time.monotonic()

        def pump() -> None:
            try:
                for chunk in api.exec_start(exec_id, stream=True, demux=False):
                    keeper.feed(chunk)
            except Exception as exc:  # noqa: BLE001 - a broken stream ends the command
                keeper.feed(f"\n[output stream ended: {type(exc).__name__}]\n".encode())

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        reader.join(seconds + 15)
        escaped = reader.is_alive()
        if escaped:  # something outlived the timeout (it left the process group)
            self._kill_strays()
            reader.join(10)
        elapsed = time.monotonic() - started
        exit_code = api.exec_inspect(exec_id).get("ExitCode")
        timed_out = escaped or (exit_code == 137 and elapsed >= seconds - 0.5)
        notes = []
        if timed_out:
            notes.append(f"[command stopped after {seconds}s]")
        elif exit_code == 137:
            notes.append(f"[command killed: out of memory (sandbox.memory={config.memory}) or signalled]")
        if self._pids_limit_hits() > pids_hit_before:
            notes.append(f"[process limit sandbox.pids_limit={config.pids_limit} reached]")
            exit_code = exit_code or 1
        if exit_code == 153:  # 128 + SIGXFSZ
            notes.append(f"[file size limit sandbox.max_file_bytes={config.max_file_bytes} reached]")
        used = self.disk_usage()
        if used is not None and used > config.max_disk_bytes:
            notes.append(f"[container disk use {used} bytes exceeds sandbox.max_disk_bytes={config.max_disk_bytes}]")
            exit_code = exit_code or 1
        output = keeper.text() + ("\n" + "\n".join(notes) if notes else "")
        return ExecResult(exit_code, output, keeper.cut, timed_out, elapsed)

    def _pids_limit_hits(self) -> int:
        """How often the container hit its process limit (cgroup ``pids.events``), if readable."""
        for path in (f"/sys/fs/cgroup/pids/docker/{self.id}/pids.events",
                     f"/sys/fs/cgroup/system.slice/docker-{self.id}.scope/pids.events"):
            try:
                for line in open(path):
                    name, _, value = line.partition(" ")
                    if name == "max":
                        return int(value)
            except OSError:
                continue
        return 0

    def disk_usage(self) -> int | None:
        """Bytes the container wrote (``SizeRw``); docker-py's inspect cannot ask for sizes, the
        container list can."""
        try:
            (entry,) = self.sandbox.client.api.containers(all=True, size=True, filters={"id": self.id})
        except ValueError:
            return None  # gone
        except Exception as exc:  # noqa: BLE001 - an engine error here must not end the command
            log.debug("disk usage of %s: %s", self.id[:12], exc)
            return None
        return entry.get("SizeRw")

    def _kill_strays(self) -> None:
        """Kill every process in the container except its init and keep-alive, from the host."""
        try:
            top = self.container.top(ps_args="-eo pid,args")
        except Exception:  # noqa: BLE001
            top = {"Processes": []}
        for pid, args in (row[:2] for row in top.get("Processes") or []):
            if args.startswith(("/sbin/docker-init", "/dev/init", "sleep infinity")):
                continue
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, PermissionError, ValueError):
                pass

    @engine_errors
    def write_files(self, files: dict[str, bytes | str], *, mode: int = 0o644) -> None:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            for path, content in files.items():
                data = content.encode() if isinstance(content, str) else content
                info = tarfile.TarInfo(posixpath.normpath(path).lstrip("/"))
                info.size, info.mode, info.mtime = len(data), mode, int(time.time())
                archive.addfile(info, io.BytesIO(data))
        self.container.put_archive("/", buffer.getvalue())

    @engine_errors
    def read_file(self, path: str, *, max_bytes: int = 1_000_000) -> bytes:
        stream, _ = self.container.get_archive(path)
        data = b"".join(stream)
        with tarfile.open(fileobj=io.BytesIO(data)) as archive:
            member = archive.next()
            content = archive.extractfile(member) if member is not None and member.isfile() else None
            if content is None:
                raise FileNotFoundError(path)
            return content.read(max_bytes)

    @engine_errors
    def read_archive(self, path: str, *, max_bytes: int) -> bytes | None:
        import docker

        try:
            stream, _ = self.container.get_archive(path)
        except docker.errors.NotFound:
            return None
        data = bytearray()
        for chunk in stream:
            data += chunk
            if len(data) > max_bytes:
                raise SandboxError(f"{path} holds more than {max_bytes} bytes (verification.max_output_bytes)")
        return bytes(data)

    @engine_errors
    def write_archive(self, directory: str, data: bytes) -> None:
        self.container.put_archive(directory, data)

    @engine_errors
    def snapshot(self, repository: str, tag: str, labels: dict[str, str] | None = None) -> str:
        changes = [f"LABEL {k}={_quoted(v)}" for k, v in {LABEL_RUN: self.sandbox.run_id, **(labels or {})}.items()]
        image = self.container.commit(repository=repository, tag=tag, changes=changes)
        return image.id

    @engine_errors
    def changes(self) -> list[Change]:
        return [Change(c["Path"], CHANGE_KINDS.get(c["Kind"], "modified")) for c in self.container.diff() or []]

    @engine_errors
    def go_offline(self) -> None:
        """Take every network away from the container (before a verifier runs, say)."""
        self.container.reload()
        for network in (self.container.attrs.get("NetworkSettings", {}).get("Networks") or {}):
            if network != "none":
                self.sandbox.client.api.disconnect_container_from_network(self.id, network, force=True)
        self.env = {}

    def remove(self) -> None:
        if self._removed:
            return
        self._removed = True
        try:
            self.container.remove(force=True)
        except Exception as exc:  # noqa: BLE001 - already gone is fine
            log.debug("removing %s: %s", self.id[:12], exc)
        finally:
            self.sandbox._slots.release()


class DockerSandbox:
    """Opens containers for a run, bounded in number, and cleans up after it."""

    def __init__(self, config: DictConfig, run_id: str) -> None:
        self.config = config
        self.run_id = run_id
        self.client = docker_client(config.api_timeout)
        self._slots = threading.BoundedSemaphore(max(1, int(config.max_containers)))
        #: the image containers start from unless told otherwise (``ensure_image`` sets it)
        self.image = str(config.image)
        self.image_reused: bool | None = None
        self._proxy: RegistryProxy | None = None
        self._proxy_lock = threading.Lock()
        left = self.cleanup()
        if left:
            log.warning("removed %d containers a previous attempt of run %s left behind", left, run_id)

    @engine_errors
    def ensure_image(self, builders: Registry, toolchain: dict | None = None) -> str:
        """Make the run's image ready and return its name: the base image, with the domain's
        toolchain (``{"name", "debian", "python", "npm"}``) on it when that lists packages.
        Its installed package versions are recorded (``toolchain.manifest_path``)."""
        base_id = ensure_base_image(self.config, self.client, builders)
        if self.config.get("toolchain", True) and toolchain and not is_empty(toolchain):
            self.image, self.image_reused = ensure_toolchain_image(self.client, toolchain["name"], self.config.image,
                                                                   base_id, toolchain)
        else:
            self.image, self.image_reused = str(self.config.image), True
            ensure_manifest(self.client, self.image, {"base": base_id})
        return self.image

    @engine_errors
    def network_for(self, network: str) -> tuple[str, dict[str, str]]:
        """Docker's network mode for a stage's ``network`` choice, and the commands' environment."""
        if network not in NETWORKS:
            raise SandboxError(f"unknown network {network!r}; choose one of {', '.join(NETWORKS)}")
        if network == "none":
            return "none", {}
        if network == "full":
            return "bridge", {}
        with self._proxy_lock:
            if self._proxy is None:
                hosts = list(self.config.registries) if self.config.get("registries") else default_allow_hosts()
                proxy = RegistryProxy(self.client, self.run_id, str(self.config.image), hosts)
                proxy.start()
                self._proxy = proxy
        return self._proxy.network, self._proxy.env()

    def open(self, item: str, image: str | None = None, network: str = "none") -> DockerSession:
        mode, env = self.network_for(network)
        self._slots.acquire()
        try:
            container = self.client.containers.run(
                image or self.image,
                KEEPALIVE,
                detach=True,
                init=True,
                network_mode=mode,
                nano_cpus=int(float(self.config.cpus) * 1e9),
                mem_limit=self.config.memory,
                memswap_limit=self.config.memory,
                pids_limit=int(self.config.pids_limit),
                ulimits=[_ulimit("fsize", int(self.config.max_file_bytes))],
                privileged=False,
                security_opt=["no-new-privileges"],
                labels={LABEL_RUN: self.run_id, LABEL_ITEM: item},
                working_dir="/root",
                hostname="sandbox",
            )
        except Exception as exc:
            self._slots.release()
            raise SandboxError(f"cannot start a container from {image or self.image}: {exc}") from exc
        return DockerSession(self, container, item, env)

    @engine_errors
    def has_image(self, image: str) -> bool:
        import docker

        try:
            self.client.images.get(image)
        except docker.errors.ImageNotFound:
            return False
        return True

    @engine_errors
    def build_image(self, context: Path | bytes, *, tag: str, labels: dict[str, str], timeout: float,
                    network: str = "registries") -> str:
        """Build a Dockerfile; its RUN steps get ``network`` (the proxy's address comes in as
        the build arguments Docker predefines for proxies)."""
        if isinstance(context, (bytes, bytearray)):
            source = {"fileobj": io.BytesIO(context), "custom_context": True}
        else:
            source = {"path": str(context)}
        mode, env = self.network_for(network)
        image, _ = self.client.images.build(**source, tag=tag, rm=True, forcerm=True, labels=labels,
                                            timeout=int(timeout), network_mode=mode, buildargs=env or None)
        return image.id

    def save_image(self, image: str) -> Iterator[bytes]:
        """The image as a ``docker save`` tar, in chunks (for copying it to another engine)."""
        return self.client.api.get_image(image, chunk_size=IMAGE_CHUNK_BYTES)

    @engine_errors
    def load_image(self, chunks: Iterable[bytes]) -> None:
        """Load a ``docker save`` tar streamed in chunks (the body is sent chunked)."""
        self.client.api.load_image(chunks)

    @engine_errors
    def remove_image(self, image: str) -> None:
        """Remove an image; one that is already gone (engines shared by two nodes) is fine."""
        import docker

        try:
            self.client.images.remove(image, force=True)
        except docker.errors.ImageNotFound:
            pass

    def cleanup(self) -> int:
        """Remove the run's containers (the proxy's among them) and its networks."""
        removed = 0
        for container in self.client.containers.list(all=True, filters={"label": f"{LABEL_RUN}={self.run_id}"}):
            try:
                container.remove(force=True)
                removed += 1
            except Exception as exc:  # noqa: BLE001
                log.warning("could not remove container %s: %s", container.short_id, exc)
        remove_run_networks(self.client, self.run_id)
        return removed

    def close(self) -> None:
        if self._proxy is not None:
            self._proxy.stop()
            self._proxy = None
        self.cleanup()
        self.client.close()


def _quoted(value: str) -> str:
    """A Dockerfile word for ``value``: labels such as a run's directory may hold quotes or ``$``."""
    return '"' + "".join("\\" + c if c in '\\"$' else c for c in str(value)) + '"'


def _ulimit(name: str, value: int):
    from docker.types import Ulimit

    return Ulimit(name=name, soft=value, hard=value)


@hookimpl
def litecoder_register_sandboxes(register):
    register("docker", DockerSandbox, config=DockerSandboxConfig)
