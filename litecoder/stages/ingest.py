"""``stage=ingest``: existing task collections become this run's task set.

``ingest.paths`` names Harbor and Terminal-Bench 1 task directories (or directories holding
them). Each task's image is built from its own Dockerfile through the sandbox's
``build_image`` (so it works under Ray too), its tests become its verifier and its solution,
if it has one, its reference solution (``litecoder.task_dirs``). Then it is certified like a
prepared task, in fresh offline containers: the verifier must fail on the start state and,
with a solution, pass after it, every time over ``certify.repeats`` runs (wrong solutions are
written only for synthesized tasks). A task that cannot be read or built ends failed with the
reason, one that fails its checks rejected; the rest are ready, with their origin recorded,
and flow through trajectory, eval and export like synthesized tasks. ``imported.parquet``
holds one row per task.
"""

from __future__ import annotations

import asyncio
import io
import logging
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING


from .. import hookimpl
from ..config import as_dict
from ..certification import Certifier, certificate, rejection
from ..verification import SHARED, Verifier
from ..errors import ConfigError
from ..outcomes import READY, REJECTED
from ..records import Environment, Origin, polars_schema, to_record
from ..runner import Done
from ..stage import ItemStage, Plan, nothing_to_do
from ..sandboxes.base import SandboxError, check_network
from ..sandboxes.names import LABEL_RUN_DIR, TASK_IMAGES, image_tag, run_id, tag_safe
from ..store import DONE, FAILED
from ..tables import records_frame, write_parquet_atomic
from ..task_dirs import ForeignTask, read_collections

if TYPE_CHECKING:
    from omegaconf import DictConfig
    from ..run import Run
    from ..sandboxes.base import Sandbox

log = logging.getLogger(__name__)

IMPORTED_FILE = "imported.parquet"
SCHEMA = polars_schema(Environment)


@dataclass
class IngestConfig:
    """Existing task collections to take in as this run's tasks."""

    #: Harbor or Terminal-Bench 1 task directories, or directories holding them
    paths: list[str] = field(default_factory=list)
    #: seconds for one task's image build
    build_timeout: float = 1800.0
    #: what a build's RUN steps reach (``registries``, ``full``, ``none``)
    build_network: str = "registries"
    #: tests and solution files of one task, at most (they travel inside its scripts)
    max_file_bytes: int = 8 << 20
    #: seconds for the verifier when the task's own metadata sets none
    verifier_timeout: float = 600.0


def task_ids(names: list[str]) -> list[str]:
    """A stable, tag-safe id per task name; repeated names get ``-2``, ``-3``... in order."""
    ids: list[str] = []
    seen: dict[str, int] = {}
    for name in names:
        base = tag_safe(name.replace("/", "-"), 100) or "task"
        seen[base] = seen.get(base, 0) + 1
        ids.append(base if seen[base] == 1 else f"{base}-{seen[base]}")
    return ids


class IngestStage(ItemStage):
    name, produces_tasks = "ingest", True
    unit, what, table = "task", "imported tasks", IMPORTED_FILE
    #: the tasks found under ingest.paths, by id (``inputs`` reads them, ``plan`` works on them)
    _found: dict[str, tuple]

    def identity(self, cfg: DictConfig, backend_config: DictConfig) -> dict:
        own = as_dict(cfg.ingest)
        own["paths"] = sorted(str(Path(p).expanduser().resolve()) for p in own["paths"])
        return {"ingest": own, "certify": {k: cfg.certify.get(k) for k in ("enabled", "repeats", "solution_timeout")}}

    def inputs(self, run: Run) -> set[str]:
        settings = run.cfg.ingest
        if not settings.paths:
            raise ConfigError("ingest.paths is empty; name Harbor or Terminal-Bench task directories, "
                              "e.g. ingest.paths=[path/to/tasks]")
        check_network(settings.build_network, "ingest.build_network")
        found = read_collections(list(settings.paths), "ingest.paths", max_bytes=int(settings.max_file_bytes))
        self._found = dict(zip(task_ids([name for _, name, _ in found]), found))
        return set(self._found)

    def plan(self, run: Run, finished: set[str]) -> Plan:
        todo = [(key, item) for key, item in self._found.items() if key not in finished]
        if not todo:
            return nothing_to_do(tasks=len(self._found))
        sandbox = run.sandbox()
        slots = asyncio.Semaphore(self.limit(run))  # builds and certification containers alike
        certifier = Certifier(run.cfg.certify, Verifier(sandbox, run.cfg.verification), slots,
                              float(run.cfg.ingest.verifier_timeout))

        async def one(job: tuple[str, tuple], client: None) -> Done:
            key, (task, name, problem) = job
            record = await self._ingest(run, sandbox, certifier, key, task, name, problem)
            state = FAILED if record["status"] == FAILED else DONE
            return Done([(key, state, record["status"], record["reason"], record)])

        return Plan(todo, one, total=len(todo), facts={"tasks": len(self._found)})

    async def _ingest(self, run: Run, sandbox: Sandbox, certifier: Certifier, key: str, task: ForeignTask | None,
                      name: str, problem: str) -> dict:
        """One task: build its image, certify it; returns its record."""
        started = time.monotonic()
        record = blank_record(key, task, name)
        if task is None:
            record["reason"] = f"cannot read the task: {problem}"
            return record
        try:
            record["image"], record["image_id"] = await self._build(run, sandbox, key, task)
        except SandboxError as exc:
            record["reason"] = f"image build failed: {str(exc).removeprefix('docker: ')[:1500]}"
            log.warning("ingest: %s: %s", name, record["reason"])
            return record
        if run.cfg.certify.enabled:
            await self._certify(sandbox, certifier, record)
        else:
            record["status"] = READY
        record["wall_s"] = round(time.monotonic() - started, 2)
        return record

    async def _build(self, run: Run, sandbox: Sandbox, key: str, task: ForeignTask) -> tuple[str, str]:
        settings = run.cfg.ingest
        tag = image_tag(run_id(run.dir), key)
        context: Path | bytes = Path(task.context) if task.context else from_image(task.image)
        labels = {"litecoder.task": key, LABEL_RUN_DIR: str(Path(run.dir).resolve())}
        image_id = await asyncio.to_thread(sandbox.build_image, context, tag=f"{TASK_IMAGES}:{tag}", labels=labels,
                                           timeout=float(settings.build_timeout), network=str(settings.build_network))
        return f"{TASK_IMAGES}:{tag}", image_id

    @staticmethod
    async def _certify(sandbox: Sandbox, certifier: Certifier, record: dict) -> None:
        """nop (and oracle, with a solution) over ``certify.repeats`` runs; ready or rejected."""
        started = time.monotonic()
        checks = await certifier.checks(record, [])
        cert = certificate(checks, [], wanted_wrong=0)
        ready = cert["certified"]
        if record["solution"] is None:  # nothing to prove the oracle with; the teacher may still solve it
            cert["oracle"], cert["certified"] = None, False
        cert.update(repairs=0, container_runs=sum(c.containers for c in checks), seconds=round(sum(c.seconds for c in checks), 2),
                    wall_s=round(time.monotonic() - started, 2))
        nop: dict = next((c for c in cert["checks"] if c["check"] == "nop"), {})
        record.update(certificate=cert, verifier_exit_code=nop.get("verifier_exit_code"),
                      verifier_output=nop.get("verifier_output"))
        if ready:
            record["status"] = READY
        else:
            record["status"], record["reason"] = REJECTED, rejection(cert)
            await asyncio.to_thread(sandbox.remove_image, record["image_id"])

    def export(self, run: Run) -> None:
        frame = records_frame([i.record for i in run.store.items(self.name)], SCHEMA, "prepared_at")
        write_parquet_atomic(frame, run.path(IMPORTED_FILE))


def from_image(image: str | None) -> bytes:
    """A build context (a tar) whose Dockerfile only starts from ``image``."""
    dockerfile = f"FROM {image}\n".encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    return buffer.getvalue()


def blank_record(key: str, task: ForeignTask | None, name: str) -> dict:
    """An imported task's record before its build: failed until it is proven otherwise. Nobody
    declared its outputs: its tests run where the agent worked, behind the integrity guard."""
    if task is None:
        return {**to_record(Environment(task_id=key, text="", verification=SHARED)), "name": name}
    origin = Origin(format=task.format, name=task.name, path=task.path, context=task.context, image=task.image,
                    difficulty=task.difficulty, tags=task.tags)
    record = Environment(task_id=key, text=task.instruction, verifier=task.verifier, solution=task.solution,
                         origin=origin, category=task.category, workdir=task.workdir,
                         verifier_timeout=task.verifier_timeout, verification=SHARED)
    return {**to_record(record), "name": name}


@hookimpl
def litecoder_register_stages(register):
    register("ingest", IngestStage, config=IngestConfig)
