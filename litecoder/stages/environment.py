"""Environment preparation: an agent builds each accepted task's starting state in Docker.

The agent acts in turns (a JSON reply with commands, validated against a schema; the
commands' output comes back) until it declares the state ready and hands over a verifier
script. The container is then committed as the task's image. The verifier is kept outside
that image and run once, in a fresh container from it: it must report "not solved" on the
prepared state, or the task is trivial (or the verifier wrong) and is rejected.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2
from omegaconf import OmegaConf

from .. import hookimpl
from ..errors import ConfigError, RequestError
from ..replies import ReplyError, parse_reply
from ..records import READY, REJECTED, Environment, backend_identity, polars_schema
from ..runner import Done, open_items, run_items
from ..sandboxes import packages
from ..sandboxes.base import check_network, clip, item_failure, run_verifier
from ..sandboxes.names import LABEL_RUN_DIR, image_tag, run_id
from ..store import DONE, FAILED
from ..tables import records_frame, write_parquet_atomic

log = logging.getLogger(__name__)

ENVIRONMENTS_FILE = "environments.parquet"
IMAGE_REPOSITORY = "litecoder-env"

REPLY_SCHEMA = {
    "type": "object",
    "properties": {
        "analysis": {"type": "string", "maxLength": 2000},
        "commands": {"type": "array", "items": {"type": "string", "maxLength": 8000}, "maxItems": 20},
        "verifier": {"type": "string", "maxLength": 12000},
        "ready": {"type": "boolean"},
        "give_up": {"type": "boolean"},
    },
    "required": ["analysis", "commands", "verifier", "ready", "give_up"],
    "additionalProperties": False,
}

SCHEMA = polars_schema(Environment)

#: paths every container changes by itself (the shell's history, litecoder's own files, the
#: init binary the engine puts in with ``init=True``); not part of "what the agent created"
NOISE = ("/root/.bash_history", "/tmp/.litecoder", "/usr/sbin/docker-init", "/sbin/docker-init")


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

        async def one(task: dict, client: Any) -> Done:
            record = await self._prepare(run, sandbox, backend, client, task)
            state = DONE if record["status"] in (READY, REJECTED) else FAILED
            return Done([(task["task_id"], state, record["status"], record["reason"], record)], record["usage"],
                        record.pop("request_error", None))

        await run_items(run, self.name, tasks, one, total=len(tasks), label="environment", unit="task",
                        limit=int(run.cfg.sandbox.max_containers), table=run.path(ENVIRONMENTS_FILE))

    @staticmethod
    def _conversation(env: Any, backend: Any, task: dict) -> tuple[list[dict], dict]:
        """The agent's first messages and the request parameters."""
        render = jinja2.Environment(undefined=jinja2.StrictUndefined)
        system = render.from_string(env.system_prompt).render(max_steps=env.max_steps, command_timeout=env.command_timeout,
                                                              network=env.network)
        messages = [{"role": "system", "content": system},
                    {"role": "user", "content": render.from_string(env.instruction).render(task=task["text"])}]
        params: dict[str, Any] = {"temperature": env.temperature, "max_tokens": env.max_tokens}
        if env.structured_output == "auto" and backend.supports_structured_output:
            params["response_format"] = {"type": "json_schema", "json_schema": {"name": "environment_step", "schema": REPLY_SCHEMA}}
        return messages, params

    async def _prepare(self, run: Any, sandbox: Any, backend: Any, client: Any, task: dict) -> dict:
        """Prepare one task's environment: the agent's turns in a container, the commit, the
        check of the prepared state; returns its record (``request_error`` when a model
        request failed)."""
        env = run.cfg.environment
        messages, params = self._conversation(env, backend, task)
        record: dict[str, Any] = {
            "task_id": task["task_id"], "text": task["text"], "status": FAILED, "reason": None, "commands": [],
            "changed_paths": [], "steps": 0, "model": backend.describe().get("model") or "",
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
            verifier = await self._converse(run, client, session, messages, params, record, started)
            record["verifier"] = verifier
            owned = await asyncio.to_thread(self._record_installs, session, before, record)
            record["image"], record["image_id"] = await self._commit(run, sandbox, session, task["task_id"])
            changes = await asyncio.to_thread(session.changes)
            changes = packages.without_package_files([c for c in changes or [] if not c.path.startswith(NOISE)], owned)
            record["changed_paths"] = sorted(c.path for c in changes)
            # the Harbor export rebuilds the state from these
            record["added_paths"] = sorted(c.path for c in changes if c.kind == "added")
            record["deleted_paths"] = sorted(c.path for c in changes if c.kind == "deleted")
            await asyncio.to_thread(session.remove)
            session = None
            exit_code, output = await asyncio.to_thread(self._verify_prepared, sandbox, record["image_id"], task["task_id"], verifier, env)
            record["verifier_exit_code"], record["verifier_output"] = exit_code, output
            self._save_verifier(run, task["task_id"], verifier)
            if exit_code == 0:
                record["status"], record["reason"] = REJECTED, "the verifier reports the task solved on the prepared state"
                await asyncio.to_thread(sandbox.remove_image, record["image_id"])
            else:
                record["status"] = READY
        except ItemFailed as exc:
            record["reason"] = str(exc)
        except Exception as exc:  # noqa: BLE001 - sandbox and Docker errors end the item, not the run
            record["reason"] = item_failure(exc)
            if record["reason"] is None:
                raise
        finally:
            if session is not None:
                await asyncio.to_thread(session.remove)
        usage = record["usage"]
        record["prompt_tokens"], record["completion_tokens"] = usage["prompt_tokens"], usage["completion_tokens"]
        record["wall_s"] = round(time.monotonic() - started, 2)
        record["prepared_at"] = datetime.now(timezone.utc).isoformat()
        return record

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

    async def _converse(self, run, client, session, messages, params, record, started) -> str:
        """Turns until the agent is ready; returns the verifier or raises ``ItemFailed``."""
        env = run.cfg.environment
        for step in range(1, int(env.max_steps) + 1):
            if time.monotonic() - started > env.max_wall_time:
                raise ItemFailed(f"wall-time limit of {env.max_wall_time:.0f}s reached after {step - 1} steps")
            record["steps"] = step
            try:
                result = await client.chat(messages, n=1, **params)
            except RequestError as exc:
                record["request_error"] = str(exc)
                raise ItemFailed(f"request failed: {exc}") from exc
            usage = record["usage"]
            usage["requests"] += 1
            usage["prompt_tokens"] += result.prompt_tokens or 0
            usage["completion_tokens"] += result.completion_tokens or 0
            text = result.choices[0].text if result.choices else ""
            messages.append({"role": "assistant", "content": text})
            try:
                reply = parse_reply(text, REPLY_SCHEMA, max_chars=int(env.max_reply_chars))
            except ReplyError as exc:
                messages.append({"role": "user", "content": f"Your reply was not usable: {exc}. Reply with one JSON object as described."})
                continue
            if reply["give_up"]:
                raise ItemFailed(f"the agent gave up: {reply['analysis'][:300]}")
            observations = []
            for command in reply["commands"][: int(env.max_commands_per_step)]:
                outcome = await asyncio.to_thread(session.exec, command, timeout=float(env.command_timeout))
                record["commands"].append({"command": command, "exit_code": outcome.exit_code,
                                           "timed_out": outcome.timed_out, "duration_s": round(outcome.duration_s, 2)})
                observations.append(f"$ {command}\n{outcome.output}\n[exit code {outcome.exit_code}]")
            if reply["ready"]:
                if not reply["verifier"].strip():
                    messages.append({"role": "user", "content": "You are ready but gave no verifier. Reply again with the verifier script."})
                    continue
                return reply["verifier"]
            observation, _ = clip("\n\n".join(observations) or "(no commands)", int(env.max_observation_bytes))
            messages.append({"role": "user", "content": observation})
        raise ItemFailed(f"step limit of {env.max_steps} reached before the agent declared the state ready")

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
    register("environment", EnvironmentStage)
