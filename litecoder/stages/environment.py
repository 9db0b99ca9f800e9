"""Environment preparation: an agent builds each accepted task's starting state in Docker.

The agent (``environment.agent``, by default the ``preparer``) acts in turns until it
declares the state ready and hands over a verifier script. The container is then committed as the task's image. The verifier is kept outside
that image and run once, in a fresh container from it: it must report "not solved" on the
prepared state, or the task is trivial (or the verifier wrong) and is rejected.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, OmegaConf

from .. import hookimpl
from ..agents.base import COMPLETED, GAVE_UP, MAX_TURNS, REQUEST_ERROR, WALL_TIME
from ..agents.loop import bind_chat, chat_params
from ..errors import ConfigError
from ..records import READY, REJECTED, Environment, backend_identity, polars_schema
from ..runner import Done, open_items, run_items
from ..sandboxes import packages
from ..sandboxes.base import check_network, clip, item_failure, run_verifier
from ..sandboxes.terminals import open_terminal
from ..sandboxes.names import LABEL_RUN_DIR, image_tag, run_id
from ..store import DONE, FAILED
from ..tables import records_frame, write_parquet_atomic

log = logging.getLogger(__name__)


@dataclass
class EnvironmentConfig:
    """Environment preparation: an agent builds each accepted task's starting state."""

    name: str = MISSING
    #: the agent that prepares each task (``environment/agent=...``; default ``preparer``)
    #: with its limits and texts; it must hand over a ``verifier``
    agent: Any = MISSING
    #: seconds for the verifier's check of the prepared state
    verifier_timeout: float = 120.0
    #: what the agent's container reaches: ``registries`` (Debian's and PyPI's, through an
    #: allowlist proxy; what it installs is recorded), ``none`` or ``full``. The check of the
    #: prepared state has no network.
    network: str = "registries"
    backend: Optional[Any] = None

ENVIRONMENTS_FILE = "environments.parquet"
IMAGE_REPOSITORY = "litecoder-env"

SCHEMA = polars_schema(Environment)

#: paths every container changes by itself (the shell's history, litecoder's own files, the
#: init binary the engine puts in with ``init=True``); not part of "what the agent created"
NOISE = ("/root/.bash_history", "/tmp/.litecoder", "/usr/sbin/docker-init", "/sbin/docker-init")


def unprepared_reason(episode: Any, agent: Any) -> str:
    """Why an episode left no prepared state, in the words of the environment record."""
    steps, detail = len(episode.turns), episode.detail or ""
    return {
        GAVE_UP: f"the agent gave up: {detail}",
        MAX_TURNS: f"step limit of {agent.config.max_turns} reached before the agent declared the state ready",
        WALL_TIME: f"wall-time limit of {agent.config.max_wall_time:.0f}s reached after {steps} steps",
        REQUEST_ERROR: f"request failed: {detail}",
        COMPLETED: f"agent {agent.name!r} finished without a verifier",
    }.get(episode.stop_reason, f"the agent stopped ({episode.stop_reason}): {detail}")


class ItemFailed(Exception):
    """The item ends failed with this reason (not a run failure)."""


class EnvironmentStage:
    name = "environment"

    def __init__(self) -> None:
        #: installed packages of a pristine container, per image
        self._baselines: dict[str | None, dict] = {}

    def identity(self, cfg: Any, backend_config: Any) -> dict:
        env = OmegaConf.to_container(cfg.environment, resolve=True)
        env.pop("backend", None)
        sandbox = OmegaConf.to_container(cfg.sandbox, resolve=True)
        toolchain = OmegaConf.to_container(cfg.domain.toolchain, resolve=True) if sandbox.get("toolchain", True) else None
        return {"environment": env, "sandbox": {k: sandbox.get(k) for k in ("type", "image", "registries")},
                "toolchain": toolchain, "backend": backend_identity(backend_config)}

    def run(self, run: Any) -> dict:
        cfg, store = run.cfg, run.store
        if not store.stage_started("judge"):
            raise ConfigError(f"no judged tasks in {run.dir}; run stage=[sample,judge] first")
        check_network(cfg.environment.network, "environment.network")
        self.agent(run)  # a wrong agent name fails before any work
        accepted = [i.record for i in store.items("judge", DONE) if i.outcome == "accepted"]
        finished = open_items(run, self, {t["task_id"] for t in accepted})
        todo = [t for t in accepted if t["task_id"] not in finished]
        try:
            if todo:
                sandbox = run.sandbox()
                asyncio.run(self._prepare_all(run, sandbox, todo))
        finally:
            self.export(run)
        counts = store.counts(self.name)
        summary = {"inputs": len(accepted), **{k: v for k, v in counts.items() if k != DONE}}
        if todo:
            summary["image"] = run.sandbox().image
        return summary

    async def _prepare_all(self, run: Any, sandbox: Any, tasks: list[dict]) -> None:
        backend = run.backend(self.name)
        agent = self.agent(run)
        params = chat_params(agent, backend)

        async def one(task: dict, client: Any) -> Done:
            record = await self.prepare(run, sandbox, agent, bind_chat(client, agent, params), task)
            state = DONE if record["status"] in (READY, REJECTED) else FAILED
            return Done([(task["task_id"], state, record["status"], record["reason"], record)], record["usage"],
                        record.pop("request_error", None))

        await run_items(run, self.name, tasks, one, total=len(tasks), label="environment", unit="task",
                        limit=int(run.cfg.sandbox.max_containers), table=run.path(ENVIRONMENTS_FILE))

    @staticmethod
    def agent(run: Any) -> Any:
        """The configured agent (``environment.agent``)."""
        config = run.cfg.environment.agent
        if not OmegaConf.is_config(config) or "type" not in config:
            raise ConfigError(f"environment.agent must be an agent's config, got {config!r}; "
                              "choose another agent with agent@environment.agent=NAME")
        return run.plugins.registry("agent").get(config.type)(config)

    async def prepare(self, run: Any, sandbox: Any, agent: Any, chat: Any, task: dict) -> dict:
        """Prepare one task's environment: the agent's episode in a container, the commit,
        the check of the prepared state; returns its record (``request_error`` when a model
        request failed)."""
        env = run.cfg.environment
        record: dict[str, Any] = {
            "task_id": task["task_id"], "text": task["text"], "status": FAILED, "reason": None, "commands": [],
            "changed_paths": [], "steps": 0, "model": run.backend(self.name).describe().get("model") or "",
            "usage": {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0},
        }
        started = time.monotonic()
        session = None
        try:
            record["base_image"], record["network"] = getattr(sandbox, "image", None), str(env.network)
            session = await asyncio.to_thread(sandbox.open, task["task_id"], network=str(env.network))
            record["host"] = getattr(session, "host", None)  # plugins' sandboxes may not say
            before = self._baselines.get(record["base_image"])
            if before is None:  # every container of the run starts from the same image
                before = self._baselines[record["base_image"]] = await asyncio.to_thread(packages.snapshot, session)
            verifier = await self._converse(run, agent, chat, session, task, record)
            await self._capture(run, sandbox, session, task, record, before, verifier)
            await asyncio.to_thread(session.remove)
            session = None
            await self._check(run, sandbox, task, record)
        except ItemFailed as exc:
            record["reason"] = str(exc)
        except Exception as exc:  # noqa: BLE001 - sandbox and Docker errors end the item, not the run
            record["reason"] = item_failure(exc)
            if record["reason"] is None:
                raise
        finally:
            if session is not None:
                await asyncio.to_thread(session.remove)
        record["prompt_tokens"], record["completion_tokens"] = record["usage"]["prompt_tokens"], record["usage"]["completion_tokens"]
        record["wall_s"] = round(time.monotonic() - started, 2)
        record["prepared_at"] = datetime.now(timezone.utc).isoformat()
        return record

    async def _capture(self, run: Any, sandbox: Any, session: Any, task: dict, record: dict, before: dict,
                       verifier: str) -> None:
        """Commit the prepared container and record its changes and installs."""
        record["verifier"] = verifier
        owned = await asyncio.to_thread(self._record_installs, session, before, record)
        record["image"], record["image_id"] = await self._commit(run, sandbox, session, task["task_id"])
        changes = await asyncio.to_thread(session.changes)
        changes = packages.without_package_files([c for c in changes or [] if not c.path.startswith(NOISE)], owned)
        record["changed_paths"] = sorted(c.path for c in changes)
        # the Harbor export rebuilds the state from these
        record["added_paths"] = sorted(c.path for c in changes if c.kind == "added")
        record["deleted_paths"] = sorted(c.path for c in changes if c.kind == "deleted")

    async def _check(self, run: Any, sandbox: Any, task: dict, record: dict) -> None:
        """The verifier must report the prepared state unsolved, or the task is rejected."""
        verifier = record["verifier"]
        exit_code, output = await asyncio.to_thread(self._verify_prepared, sandbox, record["image_id"], task["task_id"],
                                                    verifier, run.cfg.environment)
        record["verifier_exit_code"], record["verifier_output"] = exit_code, output
        self._save_verifier(run, task["task_id"], verifier)
        if exit_code == 0:
            record["status"], record["reason"] = REJECTED, "the verifier reports the task solved on the prepared state"
            await asyncio.to_thread(sandbox.remove_image, record["image_id"])
        else:
            record["status"] = READY

    async def _converse(self, run: Any, agent: Any, chat: Any, session: Any, task: dict, record: dict) -> str:
        """The agent's episode; returns its verifier or raises ``ItemFailed`` with why not."""
        terminal = open_terminal(agent, session)
        context_limit = getattr(run.backend(self.name).config, "max_model_len", None)
        episode = await agent.run(task["text"], terminal, chat, context_limit=context_limit,
                                  network=str(run.cfg.environment.network))
        turns = episode.turns
        record["steps"] = len(turns) + (episode.stop_reason == REQUEST_ERROR)
        record["commands"] = [asdict(r) for r in getattr(terminal, "runs", [])]
        record["usage"] = {"requests": len(turns), "prompt_tokens": sum(t.prompt_tokens or 0 for t in turns),
                           "completion_tokens": sum(t.completion_tokens or 0 for t in turns)}
        if episode.stop_reason == COMPLETED and episode.result.get("verifier", "").strip():
            return episode.result["verifier"]
        if episode.stop_reason == REQUEST_ERROR:
            record["request_error"] = episode.detail
        raise ItemFailed(unprepared_reason(episode, agent))

    @staticmethod
    def _record_installs(session: Any, before: dict, record: dict) -> set[str]:
        """Record the packages installed while preparing; returns the paths they own, which
        an export installs again rather than copying."""
        added = packages.installed(before, packages.snapshot(session))
        record["installed_debian"], record["installed_python"] = added["debian"], added["python"]
        record["apt_history"] = packages.apt_history(session, before["apt_log_bytes"]) if added["debian"] else ""
        return packages.owned_paths(session, added)

    async def _commit(self, run: Any, sandbox: Any, session: Any, task_id: str) -> tuple[str, str]:
        """Commit the container as the task's image: (name, id). An image under that name is
        from an earlier attempt at this task in this run (a resume, a changed config); it goes
        first, or it would be left untagged for ``docker image prune`` to find."""
        tag = image_tag(run_id(run.dir), task_id)
        image = f"{IMAGE_REPOSITORY}:{tag}"
        try:
            await asyncio.to_thread(sandbox.remove_image, image)
        except Exception as exc:  # noqa: BLE001 - an image kept in use is no reason to fail the item
            log.warning("could not remove %s, which task %s replaces: %s", image, task_id, exc)
        labels = {"litecoder.task": task_id, LABEL_RUN_DIR: str(Path(run.dir).resolve())}
        return image, await asyncio.to_thread(session.snapshot, IMAGE_REPOSITORY, tag, labels)

    @staticmethod
    def _verify_prepared(sandbox: Any, image_id: str, task_id: str, verifier: str, env: Any) -> tuple[int | None, str]:
        session = sandbox.open(f"{task_id}-verify", image=image_id, network="none")
        try:
            return run_verifier(session, verifier, float(env.verifier_timeout))
        finally:
            session.remove()

    @staticmethod
    def _save_verifier(run: Any, task_id: str, verifier: str) -> Path:
        path = run.path("environments") / task_id / "verifier.sh"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(verifier)
        return path

    def export(self, run: Any) -> None:
        frame = records_frame([i.record for i in run.store.items(self.name)], SCHEMA, "prepared_at")
        write_parquet_atomic(frame, run.path(ENVIRONMENTS_FILE))


@hookimpl
def litecoder_register_stages(register):
    register("environment", EnvironmentStage, config=EnvironmentConfig)
