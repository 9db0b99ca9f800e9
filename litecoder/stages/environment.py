"""Environment preparation: an agent builds each accepted task's starting state in Docker.

The agent (``environment.agent``, by default the ``preparer``) acts in turns until it
declares the state ready and hands over a verifier and a reference solution, both kept
outside the image. The container is then committed as the task's image, and the task is
certified (``certification.py``): in fresh offline containers from that image the verifier
must fail on the start state, pass after the reference solution, refuse wrong solutions and
answer the same every time. What certification finds goes back to the agent for a few
repair rounds; the task ends ready (certified) or rejected with the findings.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from omegaconf import MISSING, OmegaConf

from .. import hookimpl
from ..config import as_dict
from ..agents.base import COMPLETED, GAVE_UP, MAX_TURNS, REQUEST_ERROR, WALL_TIME, Episode
from ..agents.loop import bind_chat, chat_params
from ..adversarial import AdversarialChecks
from ..certification import Certifier, certificate, rejection, repairable, wrong_solutions
from ..cheating import CheatTrials
from ..usage import add_usage, new_usage, of_turns
from ..verification import NOISE, Verifier, mode_of, normal_outputs
from ..errors import ConfigError, RequestError
from ..outcomes import ACCEPTED, READY, REJECTED
from ..records import Environment, backend_identity, polars_schema
from ..runner import Done
from ..stage import ItemStage, Plan, nothing_to_do
from ..sandboxes import packages
from ..sandboxes.base import check_network, item_failure, run_verifier
from ..sandboxes.terminals import open_terminal
from ..sandboxes.names import LABEL_RUN_DIR, TASK_IMAGES, image_tag, run_id
from ..store import DONE, FAILED
from ..tables import records_frame, write_parquet_atomic

if TYPE_CHECKING:
    from omegaconf import DictConfig
    from ..agents.base import Chat
    from ..agents.loop import TurnAgent
    from ..backends.base import LLMClient
    from ..run import Run
    from ..sandboxes.base import Sandbox, Session

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

SCHEMA = polars_schema(Environment)


def unprepared_reason(episode: Episode, agent: TurnAgent) -> str:
    """Why an episode left no prepared state, in the words of the environment record."""
    steps, detail = len(episode.turns), episode.detail or ""
    return {
        GAVE_UP: f"the agent gave up: {detail}",
        MAX_TURNS: f"step limit of {agent.config.max_turns} reached before the agent declared the state ready",
        WALL_TIME: f"wall-time limit of {agent.config.max_wall_time:.0f}s reached after {steps} steps",
        REQUEST_ERROR: f"request failed: {detail}",
        COMPLETED: f"agent {agent.name!r} finished without a verifier",
    }.get(episode.stop_reason or "", f"the agent stopped ({episode.stop_reason}): {detail}")


class ItemFailed(Exception):
    """The item ends failed with this reason (not a run failure)."""


@dataclass
class Kit:
    """What one task's preparation works with."""

    run: Run
    sandbox: Sandbox
    agent: TurnAgent
    #: the stage's model client (for requests outside the agent's episode) and the agent's chat
    client: LLMClient
    chat: Chat
    #: one per container the stage may run at once (``sandbox.max_containers``)
    slots: asyncio.Semaphore
    certifier: Certifier
    #: the review and the cheat trials (none when ``certify.review`` and ``certify.cheat_trials`` are off)
    adversaries: AdversarialChecks | None = None


def merge_changes(earlier: dict | None, changes: list) -> dict:
    """The changed, added and deleted paths against the run's image, from ``changes`` against
    the session's image and, for a repair, the paths the task's image had changed already."""
    added = {c.path for c in changes if c.kind == "added"}
    deleted = {c.path for c in changes if c.kind == "deleted"}
    changed = {c.path for c in changes}
    if earlier is not None:
        before_added, before_deleted = set(earlier["added_paths"] or []), set(earlier["deleted_paths"] or [])
        gone_again = deleted & before_added  # made by the first episode, removed by the repair
        added, deleted = (before_added - deleted) | (added - before_deleted), (before_deleted - added) | (deleted - before_added)
        changed = (set(earlier["changed_paths"] or []) | changed) - gone_again
    # the Harbor export rebuilds the state from these
    return {"changed_paths": sorted(changed), "added_paths": sorted(added), "deleted_paths": sorted(deleted)}


#: the review settings that decide a task review's verdicts
REVIEW_KEYS = ("task_criteria", "system", "task_instruction", "temperature", "max_tokens")


class EnvironmentStage(ItemStage):
    name, order, calls_model, produces_tasks = "environment", 30, True, True
    unit, table = "task", ENVIRONMENTS_FILE

    def __init__(self) -> None:
        #: installed packages of a pristine container, per image
        self._baselines: dict[str | None, dict] = {}
        self._accepted: list[dict] = []

    def identity(self, cfg: DictConfig, backend_config: DictConfig) -> dict:
        env = as_dict(cfg.environment)
        env.pop("backend", None)
        sandbox = as_dict(cfg.sandbox)
        toolchain = as_dict(cfg.domain.toolchain) if sandbox.get("toolchain", True) else None
        certify = as_dict(cfg.certify)
        certify["backend"] = backend_identity(cfg.certify.backend) if cfg.certify.backend is not None else None
        review = ({k: as_dict(cfg.review)[k] for k in REVIEW_KEYS}
                  if cfg.certify.review else None)
        return {"environment": env, "certify": certify, "review": review, "verification": as_dict(cfg.verification),
                "sandbox": {k: sandbox.get(k) for k in ("type", "image", "registries")},
                "toolchain": toolchain, "backend": backend_identity(backend_config)}

    def inputs(self, run: Run) -> set[str]:
        if not run.store.stage_started("judge"):
            raise ConfigError(f"no judged tasks in {run.dir}; run stage=[sample,judge] first")
        check_network(run.cfg.environment.network, "environment.network")
        self.agent(run)  # a wrong agent name fails before any work
        self._accepted = [i.record for i in run.store.items("judge", DONE) if i.outcome == ACCEPTED]
        return {t["task_id"] for t in self._accepted}

    def plan(self, run: Run, finished: set[str]) -> Plan:
        todo = [t for t in self._accepted if t["task_id"] not in finished]
        facts: dict = {"inputs": len(self._accepted)}
        if not todo:
            return nothing_to_do(**facts)
        sandbox = run.sandbox()
        facts["image"] = sandbox.image
        agent = self.agent(run)
        params = chat_params(agent, run.backend(self.name))
        slots = asyncio.Semaphore(self.limit(run))  # every container of the stage, preparing or checking
        verifier = Verifier(sandbox, run.cfg.verification)
        certifier = Certifier(run.cfg.certify, verifier, slots, float(run.cfg.environment.verifier_timeout))
        # cheat trials and the review on a model of their own, if certify.backend is set
        adversary_client = run.client("certify") if run.cfg.certify.backend is not None else None

        async def one(task: dict, client: LLMClient) -> Done:
            kit = Kit(run, sandbox, agent, client, bind_chat(client, agent, params), slots, certifier)
            kit.adversaries = self.adversaries(run, verifier, slots, adversary_client or client)
            record = await self.prepare(kit, task)
            state = DONE if record["status"] in (READY, REJECTED) else FAILED
            return Done([(task["task_id"], state, record["status"], record["reason"], record)], record["usage"],
                        record.pop("request_error", None))

        return Plan(todo, one, total=len(todo), facts=facts, aclose=adversary_client.aclose if adversary_client else None)

    def adversaries(self, run: Run, verifier: Verifier, slots: asyncio.Semaphore, client: LLMClient) -> AdversarialChecks | None:
        """The review and the cheat trials, on ``client``; the teacher's agent plays the cheater."""
        config = run.cfg.certify
        if not config.review and int(config.cheat_trials) < 1:
            return None
        backend = run.backend("certify" if config.backend is not None else self.name)
        cheats = None
        if int(config.cheat_trials) > 0:
            agent_config = OmegaConf.merge(run.cfg.agent, {"max_turns": int(config.cheat_max_turns)})
            cheater = run.plugins.registry("agent").get(agent_config.type)(agent_config)
            cheats = CheatTrials(config, verifier, cheater, bind_chat(client, cheater, chat_params(cheater, backend)),
                                 slots, float(run.cfg.environment.verifier_timeout))
        return AdversarialChecks(config, run.cfg.review, client, backend.supports_structured_output, cheats)

    @staticmethod
    def agent(run: Run) -> TurnAgent:
        """The configured agent (``environment.agent``)."""
        config = run.cfg.environment.agent
        if not OmegaConf.is_config(config) or "type" not in config:
            raise ConfigError(f"environment.agent must be an agent's config, got {config!r}; "
                              "choose another agent with agent@environment.agent=NAME")
        return run.plugins.registry("agent").get(config.type)(config)

    async def prepare(self, kit: "Kit", task: dict) -> dict:
        """Prepare one task's environment: the agent's episode in a container, the commit,
        certification (with repair rounds); returns its record (``request_error`` when a
        model request failed)."""
        run, env = kit.run, kit.run.cfg.environment
        record: dict = {
            "task_id": task["task_id"], "text": task["text"], "status": FAILED, "reason": None, "commands": [],
            "changed_paths": [], "steps": 0, "model": run.backend(self.name).describe().get("model") or "",
            "usage": new_usage(), "wrong_solutions": [],
            "base_image": kit.sandbox.image, "network": str(env.network),
        }
        started = time.monotonic()
        try:
            messages = await self._episode(kit, task, record)
            if run.cfg.certify.enabled:
                await self._certify(kit, task, record, messages)
            else:
                await self._check(kit, task, record)
        except ItemFailed as exc:
            record["reason"] = str(exc)
        except RequestError as exc:
            record["reason"] = record["request_error"] = f"request failed: {exc}"
        except Exception as exc:  # noqa: BLE001 - sandbox and Docker errors end the item, not the run
            record["reason"] = item_failure(exc)
            if record["reason"] is None:
                raise
        record["prompt_tokens"], record["completion_tokens"] = record["usage"]["prompt_tokens"], record["usage"]["completion_tokens"]
        record["wall_s"] = round(time.monotonic() - started, 2)
        record["prepared_at"] = datetime.now(timezone.utc).isoformat()
        return record

    async def _episode(self, kit: "Kit", task: dict, record: dict, messages: list[dict] | None = None) -> list[dict]:
        """One episode of the agent in a container, then the commit; returns the conversation.
        The first starts from the run's image; a repair (``messages``) from the task's own."""
        run, sandbox = kit.run, kit.sandbox
        name = task["task_id"] if messages is None else f"{task['task_id']}-repair{record['steps']}"
        async with kit.slots:
            session = await asyncio.to_thread(sandbox.open, name, image=record.get("image_id"),
                                              network=str(run.cfg.environment.network))
            try:
                record["host"] = session.host
                before = self._baselines.get(record["base_image"])
                if before is None:  # every container of the run starts from the same image
                    before = self._baselines[record["base_image"]] = await asyncio.to_thread(packages.snapshot, session)
                episode = await self._converse(kit, session, task, record, messages)
                await self._capture(run, sandbox, session, task, record, before, episode.result)
            finally:
                await asyncio.to_thread(session.remove)
        return episode.messages

    async def _certify(self, kit: "Kit", task: dict, record: dict, messages: list[dict]) -> None:
        """Certify the task, giving the findings back to the agent for up to
        ``certify.max_repairs`` rounds; the task ends ready (certified) or rejected."""
        config, backend = kit.run.cfg.certify, kit.run.backend(self.name)
        started = time.monotonic()
        wrong, usage, wrong_error = await wrong_solutions(kit.client, config, task["text"], record["verifier"],
                                                          record["solution"], structured=backend.supports_structured_output)
        add_usage(record["usage"], usage)
        record["wrong_solutions"] = [asdict(w) for w in wrong]
        repairs, runs, seconds = 0, 0, 0.0
        while True:
            checks = await kit.certifier.checks(record, wrong)
            cert = certificate(checks, wrong, wanted_wrong=int(config.wrong_solutions), wrong_error=wrong_error)
            runs, seconds = runs + sum(c.containers for c in checks), seconds + sum(c.seconds for c in checks)
            if not cert["findings"] and kit.adversaries is not None:
                spent, containers = await kit.adversaries.run(record, cert)
                add_usage(record["usage"], spent)
                runs += containers
            if cert["certified"] or repairs >= int(config.max_repairs) or not repairable(cert):
                break
            repairs += 1
            try:
                messages = await self._episode(kit, task, record, [*messages, {"role": "user", "content": kit.agent.repair_message(cert["findings"])}])
            except ItemFailed as exc:
                if record.get("request_error"):
                    raise
                cert["findings"].append(f"repair failed: {exc}")
                break
        cert.update(repairs=repairs, container_runs=runs, seconds=round(seconds, 2),
                    wall_s=round(time.monotonic() - started, 2))
        await self._settle(kit, task, record, cert)

    async def _settle(self, kit: "Kit", task: dict, record: dict, cert: dict) -> None:
        """Record the certificate and the task's outcome; a rejected task's image goes."""
        record["certificate"] = cert
        nop: dict = next((c for c in cert["checks"] if c["check"] == "nop"), {})
        record["verifier_exit_code"], record["verifier_output"] = nop.get("verifier_exit_code"), nop.get("verifier_output")
        self._save_scripts(kit.run, task["task_id"], record)
        if cert["certified"]:
            record["status"] = READY
        else:
            record["status"], record["reason"] = REJECTED, rejection(cert)
            await asyncio.to_thread(kit.sandbox.remove_image, record["image_id"])

    async def _capture(self, run: Run, sandbox: Sandbox, session: Session, task: dict, record: dict, before: dict,
                       result: dict) -> None:
        """Commit the container as the task's image and record its scripts, changes and
        installs (a repair's changes add to the first episode's)."""
        record["verifier"], record["solution"] = result["verifier"], result.get("solution")
        record["outputs"] = normal_outputs(result.get("outputs") or [])
        record["verification"] = mode_of(result)  # an agent that declares nothing gets the guard
        owned = await asyncio.to_thread(self._record_installs, session, before, record)
        earlier = {k: record.get(k) for k in ("changed_paths", "added_paths", "deleted_paths")} if "image_id" in record else None
        record["image"], record["image_id"] = await self._commit(run, sandbox, session, task["task_id"], earlier is None)
        changes = await asyncio.to_thread(session.changes)
        changes = packages.without_package_files([c for c in changes or [] if not c.path.startswith(NOISE)], owned)
        record.update(merge_changes(earlier, changes))

    async def _check(self, kit: "Kit", task: dict, record: dict) -> None:
        """Without certification: the verifier must report the prepared state unsolved, or
        the task is rejected."""
        run, sandbox = kit.run, kit.sandbox
        async with kit.slots:
            exit_code, output = await asyncio.to_thread(self._verify_prepared, sandbox, record["image_id"], task["task_id"],
                                                        record["verifier"], run.cfg.environment)
        record["verifier_exit_code"], record["verifier_output"] = exit_code, output
        self._save_scripts(run, task["task_id"], record)
        if exit_code == 0:
            record["status"], record["reason"] = REJECTED, "the verifier reports the task solved on the prepared state"
            await asyncio.to_thread(sandbox.remove_image, record["image_id"])
        else:
            record["status"] = READY

    async def _converse(self, kit: "Kit", session: Session, task: dict, record: dict, messages: list[dict] | None) -> Episode:
        """The agent's episode; returns it when it handed over a verifier, or raises
        ``ItemFailed`` with why not."""
        run, agent = kit.run, kit.agent
        terminal = open_terminal(agent, session)
        context_limit = run.backend(self.name).context_limit
        episode = await agent.run(task["text"], terminal, kit.chat, context_limit=context_limit,
                                  network=str(run.cfg.environment.network), messages=messages)
        turns = episode.turns
        record["steps"] += len(turns) + (episode.stop_reason == REQUEST_ERROR)
        record["commands"] += [asdict(r) for r in terminal.runs]
        add_usage(record["usage"], of_turns(turns))
        if episode.stop_reason == COMPLETED and episode.result.get("verifier", "").strip():
            return episode
        if episode.stop_reason == REQUEST_ERROR:
            record["request_error"] = episode.detail
        raise ItemFailed(unprepared_reason(episode, agent))

    @staticmethod
    def _record_installs(session: Session, before: dict, record: dict) -> set[str]:
        """Record the packages installed while preparing; returns the paths they own, which
        an export installs again rather than copying."""
        added = packages.installed(before, packages.snapshot(session))
        record["installed_debian"], record["installed_python"] = added["debian"], added["python"]
        record["apt_history"] = packages.apt_history(session, before["apt_log_bytes"]) if added["debian"] else ""
        return packages.owned_paths(session, added)

    async def _commit(self, run: Run, sandbox: Sandbox, session: Session, task_id: str, replace: bool) -> tuple[str, str]:
        """Commit the container as the task's image: (name, id). With ``replace``, an image
        under that name is from an earlier attempt at this task in this run (a resume, a
        changed config); it goes first, or it would be left untagged for ``docker image prune``
        to find. A repair's container runs from the task's image, the new one's parent."""
        tag = image_tag(run_id(run.dir), task_id)
        image = f"{TASK_IMAGES}:{tag}"
        try:
            if replace:
                await asyncio.to_thread(sandbox.remove_image, image)
        except Exception as exc:  # noqa: BLE001 - an image kept in use is no reason to fail the item
            log.warning("could not remove %s, which task %s replaces: %s", image, task_id, exc)
        labels = {"litecoder.task": task_id, LABEL_RUN_DIR: str(Path(run.dir).resolve())}
        return image, await asyncio.to_thread(session.snapshot, TASK_IMAGES, tag, labels)

    @staticmethod
    def _verify_prepared(sandbox: Sandbox, image_id: str, task_id: str, verifier: str, env: DictConfig) -> tuple[int | None, str]:
        session = sandbox.open(f"{task_id}-verify", image=image_id, network="none")
        try:
            return run_verifier(session, verifier, float(env.verifier_timeout))
        finally:
            session.remove()

    @staticmethod
    def _save_scripts(run: Run, task_id: str, record: dict) -> None:
        """``environments/<task>/verifier.sh`` and ``solution.sh``: kept outside the image."""
        directory = run.path("environments") / task_id
        directory.mkdir(parents=True, exist_ok=True)
        for name in ("verifier", "solution"):
            if record.get(name):
                (directory / f"{name}.sh").write_text(record[name])

    def export(self, run: Run) -> None:
        frame = records_frame([i.record for i in run.store.items(self.name)], SCHEMA, "prepared_at")
        write_parquet_atomic(frame, run.path(ENVIRONMENTS_FILE))


@hookimpl
def litecoder_register_stages(register):
    register("environment", EnvironmentStage, config=EnvironmentConfig)
