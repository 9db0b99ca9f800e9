"""``executor=ray``: model requests and container work on a Ray cluster.

The stages run unchanged in the driver (this process); what they hand to the executor runs
on the cluster:

- **Model requests** go to a pool of Ray actors (``executor.llm_workers``), each with its own
  HTTP connections to the backend's endpoints (``backend.more_urls`` / ``more_base_urls``
  spread them over several servers). A worker that dies is restarted and its requests are
  sent again; when that fails too, the item fails with a recorded reason and is retried on
  resume.
- **Containers** run on every node that offers the ``executor.docker_resource`` resource
  (``ray start --resources='{"docker": 1}'``), through one actor per node that owns that
  node's Docker engine. A new container goes to the least busy node. A container from a
  task's image goes there too: if that node lacks the image, it is copied from a node that
  has it, node to node in chunks (``executor.copy_images=false``: to the least busy node
  that has it).
  A node actor that dies takes its sessions with it: those items fail with a recorded reason
  and are retried on resume, and the containers are removed by the run's cleanup.

The run store, budgets and dispatch stay in the driver, so every result is written once,
by one process, whatever happens to the workers. ``executor.address`` joins a running
cluster; without it a local one is started inside this process (handy for trying it out).
Ray is an optional dependency: ``pip install 'litecoder[ray]'``.
"""

from __future__ import annotations

import io
import logging
import os
import tarfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional

from omegaconf import OmegaConf, DictConfig

from .. import hookimpl
from ..errors import ConfigError, RequestError
from ..sandboxes.base import SandboxError
from .base import ExecutorConfig

if TYPE_CHECKING:
    from ..backends.base import Backend, ClientRecipe, Completion, LLMClient
    from ..registry import Registry
    from ..sandboxes.base import ExecResult, Sandbox

log = logging.getLogger(__name__)


@dataclass
class RayExecutorConfig(ExecutorConfig):
    type: str = "ray"
    #: the cluster to join, e.g. ``10.0.0.5:6379`` (what ``ray start --head`` prints); null: a
    #: local cluster started in this process
    address: Optional[str] = None
    namespace: str = "litecoder"
    #: actors that send model requests, spread over the cluster
    llm_workers: int = 2
    #: the custom resource of nodes that may run containers
    docker_resource: str = "docker"
    #: restarts of a worker that died; its requests in flight are sent again after a restart
    max_restarts: int = 3
    #: when the least busy Docker node lacks a task's image, copy it there from a node that has
    #: it (node to node, in chunks); false: such containers wait for the nodes that have it
    copy_images: bool = True


def _ray():
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("executor=ray needs Ray: pip install 'litecoder[ray]' (or `pip install ray`)") from exc
    return ray


class LLMWorker:
    """Holds one client for a backend, made from its ``ClientRecipe``, and sends the driver's
    requests through it."""

    def __init__(self, recipe: ClientRecipe) -> None:
        self.client: LLMClient | None = None
        self._make = lambda: recipe.make(**recipe.kwargs)

    async def call(self, method: str, args: tuple, kwargs: dict) -> Any:
        if self.client is None:
            self.client = self._make()  # made inside the actor's event loop
        return await getattr(self.client, method)(*args, **kwargs)

    def pid(self) -> int:
        return os.getpid()


class DockerNode:
    """Owns one node's sandbox (its Docker engine) and the sessions open on it."""

    def __init__(self, sandbox_type: str, config: dict, run_id: str) -> None:
        from ..plugins import get_plugins

        plugins = get_plugins()
        self.sandbox = plugins.registry("sandbox").get(sandbox_type)(OmegaConf.create(config), run_id)
        self.builders = plugins.registry("image_builder")
        self.sessions: dict = {}
        self.transfers: dict = {}

    def ensure_image(self, toolchain: dict | None) -> str:
        return self.sandbox.ensure_image(self.builders, toolchain)

    def open(self, item: str, image: str | None, network: str) -> str:
        session = self.sandbox.open(item, image, network)
        self.sessions[session.id] = session
        return session.id

    def session_call(self, session_id: str, method: str, args: tuple, kwargs: dict) -> Any:
        session = self.sessions.get(session_id)
        if session is None:
            raise SandboxError(f"container {session_id[:12]} is gone: its node's sandbox worker restarted")
        try:
            return getattr(session, method)(*args, **kwargs)
        finally:
            if method == "remove":
                self.sessions.pop(session_id, None)

    def call(self, method: str, args: tuple = (), kwargs: dict | None = None) -> Any:
        return getattr(self.sandbox, method)(*args, **(kwargs or {}))

    def export_image(self, image: str) -> str:
        """Start sending an image; the receiving node pulls it with ``next_chunk``."""
        transfer = uuid.uuid4().hex
        self.transfers[transfer] = iter(self.sandbox.save_image(image))
        return transfer

    def next_chunk(self, transfer: str) -> bytes | None:
        chunk = next(self.transfers[transfer], None)
        if chunk is None:
            del self.transfers[transfer]
        return chunk

    def import_image(self, source: Any, image: str) -> None:
        """Load ``image`` from the node actor ``source``, a chunk at a time: the image never
        passes through the driver, and never whole through this process's memory."""
        import ray

        transfer = ray.get(source.export_image.remote(image))

        def chunks():
            while (chunk := ray.get(source.next_chunk.remote(transfer))) is not None:
                yield chunk

        self.sandbox.load_image(chunks())

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        self.sandbox.close()


class RayLLMClient:
    """The driver's side of the worker pool: the same calls as ``OpenAIClient``."""

    def __init__(self, workers: list[Any]) -> None:
        self.workers = workers
        self._next = 0

    async def complete(self, prompt: str, *, n: int = 1, stop: list[str] | None = None, **params: object) -> Completion:
        return await self._call("complete", (prompt,), {"n": n, "stop": stop, **params})

    async def chat(self, messages: list[dict], *, n: int = 1, **params: object) -> Completion:
        return await self._call("chat", (messages,), {"n": n, **params})

    async def _call(self, method: str, args: tuple, kwargs: dict) -> Any:
        ray = _ray()
        worker = self.workers[self._next % len(self.workers)]
        self._next += 1
        try:
            return await worker.call.remote(method, args, kwargs)
        except RequestError:
            raise
        except ray.exceptions.RayError as exc:
            raise RequestError(f"the Ray worker sending this request failed: {type(exc).__name__}: {_first_line(exc)}") from exc

    async def aclose(self) -> None:
        pass


class RaySession:
    def __init__(self, sandbox: "RaySandbox", node: int, session_id: str) -> None:
        self.sandbox = sandbox
        self.node = node
        self.id = session_id
        self.host = sandbox.node_ids[node]
        self._removed = False

    def _call(self, method: str, *args: object, **kwargs: object) -> Any:
        return self.sandbox._get(self.sandbox.nodes[self.node].session_call.remote(self.id, method, args, kwargs))

    def exec(self, command: str, *, timeout: float, max_output_bytes: int | None = None) -> ExecResult:
        return self._call("exec", command, timeout=timeout, max_output_bytes=max_output_bytes)

    def write_files(self, files: dict, *, mode: int = 0o644) -> None:
        self._call("write_files", files, mode=mode)

    def read_file(self, path: str, *, max_bytes: int = 1_000_000) -> bytes:
        return self._call("read_file", path, max_bytes=max_bytes)

    def read_archive(self, path: str, *, max_bytes: int) -> bytes | None:
        return self._call("read_archive", path, max_bytes=max_bytes)

    def write_archive(self, directory: str, data: bytes) -> None:
        self._call("write_archive", directory, data)

    def snapshot(self, repository: str, tag: str, labels: dict | None = None) -> str:
        return self._call("snapshot", repository, tag, labels)

    def changes(self) -> list[dict]:
        return self._call("changes")

    def go_offline(self) -> None:
        self._call("go_offline")

    def remove(self) -> None:
        if self._removed:  # verification removes the agent's container early
            return
        self._removed = True
        try:
            self._call("remove")
        finally:
            self.sandbox.release(self.node)


class RaySandbox:
    """Containers on the cluster's Docker nodes, behind the same calls as a local sandbox."""

    def __init__(self, nodes: list[Any], node_ids: list[str], config: DictConfig, copy_images: bool = False) -> None:
        self.nodes = nodes
        self.node_ids = node_ids
        self.config = config
        self.busy = [0] * len(nodes)
        self.copy_images = bool(copy_images)
        #: the image containers start from unless told otherwise (the nodes' ``ensure_image``)
        self.image = str(config.image)
        #: the nodes build or find the image each on its own engine; which did is theirs to say
        self.image_reused: bool | None = None
        self._lock = threading.Lock()
        self._copying: dict[tuple[str, int], threading.Lock] = {}

    def _get(self, ref: Any) -> Any:
        ray = _ray()
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.as_instanceof_cause()
            raise cause from None
        except ray.exceptions.RayError as exc:
            raise SandboxError(f"the Ray sandbox worker failed: {type(exc).__name__}: {_first_line(exc)}") from exc

    def _holding(self, image: str) -> list[int]:
        return [i for i, node in enumerate(self.nodes) if self._get(node.call.remote("has_image", (image,)))]

    def open(self, item: str, image: str | None = None, network: str = "none") -> RaySession:
        holders = self._holding(image) if image else None
        if holders == []:
            raise SandboxError(f"no Docker node of the Ray cluster has the image {image}")
        copy_from = None
        with self._lock:  # choose and reserve at once, so containers opened together spread
            node = min(range(len(self.nodes)), key=lambda i: self.busy[i])
            if holders is not None and node not in holders:
                holder = min(holders, key=lambda i: self.busy[i])
                if self.copy_images and self.busy[holder] > self.busy[node]:
                    copy_from = holder
                else:
                    node = holder
            self.busy[node] += 1
        try:
            if copy_from is not None and image is not None:
                node = self._copy(image, copy_from, node)
            session_id = self._get(self.nodes[node].open.remote(item, image, network))
        except BaseException:
            self.release(node)
            raise
        return RaySession(self, node, session_id)

    def release(self, node: int) -> None:
        with self._lock:
            self.busy[node] -= 1

    def _copy(self, image: str, source: int, target: int) -> int:
        """Copy ``image`` to node ``target`` (reserved by the caller); returns the node to use:
        ``source`` if the copy fails, with the reservation moved there."""
        with self._copying.setdefault((image, target), threading.Lock()):
            if self._get(self.nodes[target].call.remote("has_image", (image,))):
                return target  # another container of this task copied it meanwhile
            started = time.monotonic()
            try:
                self._get(self.nodes[target].import_image.remote(self.nodes[source], image))
            except Exception as exc:  # noqa: BLE001 - the holder can still run it
                log.warning("copying image %s to Ray node %s failed, using node %s: %s", image[:24],
                            self.node_ids[target][:8], self.node_ids[source][:8], exc)
                with self._lock:
                    self.busy[target] -= 1
                    self.busy[source] += 1
                return source
            log.info("copied image %s from Ray node %s to %s in %.1fs", image[:24], self.node_ids[source][:8],
                     self.node_ids[target][:8], time.monotonic() - started)
            return target

    def has_image(self, image: str) -> bool:
        return bool(self._holding(image))

    def build_image(self, context: Path | bytes, *, tag: str, labels: dict[str, str], timeout: float,
                    network: str = "registries") -> str:
        """Built on the least busy node: the directory travels as a tar, so the driver needs
        no Docker engine."""
        if not isinstance(context, (bytes, bytearray)):
            context = directory_tar(Path(context))
        node = min(range(len(self.nodes)), key=lambda i: self.busy[i])
        return self._get(self.nodes[node].call.remote("build_image", (context,), {"tag": tag, "labels": labels,
                                                                                    "timeout": timeout, "network": network}))

    def remove_image(self, image: str) -> None:
        for node in self._holding(image):
            self._get(self.nodes[node].call.remote("remove_image", (image,)))

    def cleanup(self) -> int:
        return sum(self._get(node.call.remote("cleanup")) for node in self.nodes)

    def close(self) -> None:
        ray = _ray()
        try:
            for node in self.nodes:
                try:
                    self._get(node.close.remote())
                except Exception as exc:  # noqa: BLE001 - every node gets its turn
                    log.warning("closing a Docker node's sandbox failed: %s", exc)
        finally:
            for node in self.nodes:
                ray.kill(node, no_restart=True)


def directory_tar(directory: Path) -> bytes:
    """A directory as an uncompressed tar, paths relative to it (a Docker build context)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(directory, arcname=".")
    return buffer.getvalue()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


class RayExecutor:
    def __init__(self, config: DictConfig) -> None:
        self.config = config
        self._pools: dict[str, list[Any]] = {}
        self._connected = False

    def _connect(self) -> Any:
        ray = _ray()
        if not ray.is_initialized():
            self._connected = True
            if self.config.address:
                log.info("joining the Ray cluster at %s", self.config.address)
                try:
                    ray.init(address=self.config.address, namespace=self.config.namespace, log_to_driver=False)
                except (ConnectionError, RuntimeError, ValueError) as exc:
                    raise ConfigError(f"cannot join the Ray cluster at executor.address={self.config.address}: "
                                      f"{_first_line(exc)}; `ray start --head` prints the address to use") from exc
            else:
                log.info("starting a local Ray cluster in this process")
                ray.init(namespace=self.config.namespace, include_dashboard=False, log_to_driver=False,
                         resources={self.config.docker_resource: 1})
        return ray

    def client(self, backend: Backend) -> RayLLMClient:
        ray = self._connect()
        recipe = backend.client_recipe()
        key = recipe.key()
        if key not in self._pools:
            actor = ray.remote(LLMWorker).options(
                num_cpus=0, max_concurrency=max(1, int(OmegaConf.select(backend.config, "max_in_flight", default=64))),
                max_restarts=int(self.config.max_restarts), max_task_retries=int(self.config.max_restarts),
            )
            self._pools[key] = [actor.remote(recipe) for _ in range(max(1, int(self.config.llm_workers)))]
            ray.get([w.pid.remote() for w in self._pools[key]])  # up before the first request
        return RayLLMClient(self._pools[key])

    def sandbox(self, factory: Callable[..., Sandbox], config: DictConfig, run_id: str, builders: Registry, toolchain: dict | None = None) -> RaySandbox:
        ray = self._connect()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        resource = self.config.docker_resource
        node_ids = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get(resource, 0) >= 1]
        if not node_ids:
            raise ConfigError(f"no node of the Ray cluster offers the {resource!r} resource; start the nodes that have "
                              f"Docker with `ray start ... --resources='{{\"{resource}\": 1}}'`")
        sandbox_type = str(config.type)
        settings = OmegaConf.to_container(config, resolve=True)
        concurrency = 4 * int(config.max_containers) + 8
        nodes = [
            ray.remote(DockerNode).options(
                num_cpus=0, max_concurrency=concurrency, max_restarts=int(self.config.max_restarts), max_task_retries=0,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
            ).remote(sandbox_type, settings, run_id)  # factory and builders are looked up on the node
            for node_id in node_ids
        ]
        sandbox = RaySandbox(nodes, node_ids, config, copy_images=bool(self.config.copy_images))
        try:
            for node in nodes:  # each node builds (or reuses) the image on its own engine
                sandbox.image = sandbox._get(node.ensure_image.remote(toolchain))
        except BaseException:
            sandbox.close()
            raise
        log.info("containers on %d Ray node(s) with the %r resource", len(nodes), resource)
        return sandbox

    def close(self) -> None:
        """Stop this run's workers, and leave the cluster (a local one stops with it)."""
        if not self._connected:
            return
        ray = _ray()
        for pool in self._pools.values():
            for worker in pool:
                ray.kill(worker, no_restart=True)
        self._pools.clear()
        ray.shutdown()
        self._connected = False


@hookimpl
def litecoder_register_executors(register):
    register("ray", RayExecutor, config=RayExecutorConfig)
