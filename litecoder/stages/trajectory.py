"""Teacher trajectories: the agent solves each prepared task in a fresh container.

Per ready environment, ``trajectory.rollouts`` independent rollouts. Each starts a container
from the task's image, opens a tmux session, and lets the configured agent (``agent=``) work.
When the agent stops, the task's verifier is copied in (the agent never saw it) and run:
exit 0 means reward 1. Every rollout is written as an ATIF trajectory and summarized in
``trajectories.parquet``; the filters then mark which rollouts are training data, each
dropped one with its reasons. Filters are re-applied on every run, so changing them
never repeats a rollout.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from pathlib import Path
from datetime import datetime, timezone
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import polars as pl

from .. import atif, hookimpl
from ..config import as_dict
from ..difficulty import LABELS, DifficultyConfig, pass_rates
from ..agents.base import LOOPING, REQUEST_ERROR, Episode, repeats
from ..agents.loop import bind_chat, chat_params
from ..budget import request_cost
from ..records import Rollout, TaskPassRate, backend_identity, polars_schema
from ..page import Section, empty, table
from ..runner import Done
from ..stage import ItemStage, Plan, nothing_to_do
from ..errors import ConfigError, RequestError
from ..sandboxes.base import check_network, item_failure
from ..review import review
from ..usage import add_usage, of_turns
from ..verification import Verifier
from ..sandboxes.terminals import open_terminal
from ..store import DONE, FAILED, RunStore
from ..ready_tasks import has_environments, ready_environments
from ..tables import records_frame, write_parquet_atomic, write_text_atomic

if TYPE_CHECKING:
    from omegaconf import DictConfig
    from ..agents.base import Chat
    from ..agents.loop import TurnAgent
    from ..backends.base import LLMClient
    from ..run import Run

log = logging.getLogger(__name__)


@dataclass
class TrajectoryFilters:
    """Which rollouts become training data; each dropped rollout records the filter and why."""

    #: drop rollouts whose verifier did not pass (reward 0)
    unsuccessful: bool = True
    #: drop rollouts that sent the same commands, or got the same output back, more than
    #: this many times in a row (null: keep them)
    max_repeats: Optional[int] = 3
    #: drop rollouts with more turns than this (null: no limit)
    max_turns: Optional[int] = 300
    #: drop rollouts whose conversation is longer than this many tokens (null: no limit)
    max_tokens: Optional[int] = 65_536
    #: drop rollouts with more unusable (malformed) replies than this (null: keep them)
    max_malformed_turns: Optional[int] = 0


@dataclass
class RolloutConfig:
    """What every stage that rolls the agent out on a task set shares (trajectory, eval)."""

    #: independent rollouts per task (the k of pass@k, recorded per task)
    rollouts: int = 1
    #: a run directory whose ready tasks are the task set; null: this run's
    tasks: Optional[str] = None
    #: seconds for the task's verifier after the agent stopped
    verifier_timeout: float = 300.0
    #: what the agent's container reaches (``none``, ``registries``, ``full``); the verifier
    #: always runs with the container's networks taken away
    network: str = "none"
    #: the stage's own model; null: the run's backend
    backend: Optional[Any] = None


@dataclass
class TrajectoryConfig(RolloutConfig):
    """Teacher rollouts: the agent (``agent=...``) solves each prepared task in its image."""

    filters: TrajectoryFilters = field(default_factory=TrajectoryFilters)
    #: review each solved rollout for reward hacking (``review.trajectory_criteria``, on the
    #: teacher's model); a flagged one is dropped. Applies to rollouts made while it is on
    review: bool = True
    #: pass-rate thresholds of each task's difficulty label
    difficulty: DifficultyConfig = field(default_factory=DifficultyConfig)

TRAJECTORIES_FILE = "trajectories.parquet"
TASKS_FILE = "trajectory_tasks.parquet"
TRAJECTORY_DIR = "trajectories"
from ..outcomes import DROPPED, KEPT, TAMPERED

SCHEMA = polars_schema(Rollout)
TASK_SCHEMA = polars_schema(TaskPassRate)


def rollout_key(task_id: str, rollout: int) -> str:
    return f"{task_id}-r{rollout}"


def tamper_reason(record: dict) -> str:
    return "tampered: the agent changed what the verifier relies on: " + "; ".join(record["tampered"][:3])


def drop_reasons(record: dict, filters: DictConfig) -> list[str]:
    """Why a finished rollout is not training data (empty: keep it)."""
    reasons = []
    if record.get("tampered"):
        reasons.append(tamper_reason(record))
    if record.get("review"):
        reasons.append(f"reward hacking: {record['review']} (trajectory.review)")
    if not record.get("turns"):
        reasons.append("empty: the agent made no turn")
    if filters.unsuccessful and record.get("reward") != 1:
        reasons.append(f"unsuccessful: the verifier exited {record.get('verifier_exit_code')} (reward 0)")
    limit = filters.max_repeats
    most = max(record.get("repeated_commands") or 0, record.get("repeated_output") or 0)
    if limit is not None and (most > limit or record.get("stop_reason") == LOOPING):
        what = "commands" if (record.get("repeated_commands") or 0) >= (record.get("repeated_output") or 0) else "output"
        reasons.append(f"looping: the same {what} {most} times in a row (trajectory.filters.max_repeats={limit})")
    if filters.max_turns is not None and (record.get("turns") or 0) > filters.max_turns:
        reasons.append(f"too long: {record['turns']} turns (trajectory.filters.max_turns={filters.max_turns})")
    if filters.max_tokens is not None and (record.get("conversation_tokens") or 0) > filters.max_tokens:
        reasons.append(f"too long: {record['conversation_tokens']} tokens (trajectory.filters.max_tokens={filters.max_tokens})")
    if filters.max_malformed_turns is not None and (record.get("malformed_turns") or 0) > filters.max_malformed_turns:
        reasons.append(f"malformed: {record['malformed_turns']} unusable replies "
                       f"(trajectory.filters.max_malformed_turns={filters.max_malformed_turns})")
    return reasons


class TrajectoryStage(ItemStage):
    """Rollouts of the configured agent on every ready environment; ``eval`` shares the machinery
    and changes where its tasks come from, how a finished rollout is classified and what it writes."""

    name, calls_model = "trajectory", True
    order: int | None = 40
    unit, what = "rollout", "rollouts"
    #: per-rollout table and ATIF directory under the run
    rollouts_file, trajectory_dir, tasks_file = TRAJECTORIES_FILE, TRAJECTORY_DIR, TASKS_FILE
    table = rollouts_file
    #: the ready tasks and their rollouts (``inputs`` lists them, ``plan`` works on them)
    _ready: list[dict]
    _jobs: list[tuple[dict, int]]

    def settings(self, cfg: DictConfig) -> DictConfig:
        return cfg[self.name]

    def identity(self, cfg: DictConfig, backend_config: DictConfig) -> dict:
        own = as_dict(self.settings(cfg))
        for key in ("backend", "filters", "difficulty", "rollouts", "review"):
            # filters are re-applied and labels recomputed from finished rollouts; more rollouts
            # add items, fewer retire the extra ones: none of them is a reason to redo rollouts
            own.pop(key, None)
        if own.get("tasks"):
            own["tasks"] = str(Path(own["tasks"]).resolve())
        sandbox = as_dict(cfg.sandbox)
        return {"agent": as_dict(cfg.agent), self.name: own,
                "sandbox": {k: sandbox.get(k) for k in ("type", "cpus", "memory")},
                "backend": backend_identity(backend_config)}

    def environments(self, run: Run) -> list[dict]:
        """The ready environments to roll out on: this run's, or those of the run directory
        that ``<stage>.tasks`` names (so a sweep's jobs share one task set)."""
        source = self.settings(run.cfg).get("tasks")
        if not source:
            if not has_environments(run.store):
                raise ConfigError(f"no prepared environments in {run.dir}; run stage=environment (or stage=ingest) first")
            return ready_environments(run.store)
        key, path = f"{self.name}.tasks={source}", Path(source)
        if not (path / "store.sqlite").is_file():
            raise ConfigError(f"{key}: no run directory there (no store.sqlite); name a run directory that ran "
                              "stage=environment or stage=ingest")
        store = RunStore(path / "store.sqlite")
        try:
            if not has_environments(store):
                raise ConfigError(f"{key}: no prepared environments there; run stage=environment (or stage=ingest) in it first")
            return ready_environments(store)
        finally:
            store.close()

    def inputs(self, run: Run) -> set[str]:
        settings = self.settings(run.cfg)
        if int(settings.rollouts) < 1:
            raise ConfigError(f"{self.name}.rollouts must be at least 1, got {settings.rollouts}")
        run.plugins.registry("agent").get(run.cfg.agent.type)  # a wrong agent name fails before any work
        check_network(settings.network, f"{self.name}.network")
        self._ready = self.environments(run)
        self._jobs = [(env, r) for env in self._ready for r in range(int(settings.rollouts))]
        return {rollout_key(env["task_id"], r) for env, r in self._jobs}

    def plan(self, run: Run, finished: set[str]) -> Plan:
        self._reclassify(run)
        todo = [(env, r) for env, r in self._jobs if rollout_key(env["task_id"], r) not in finished]
        facts = {"environments": len(self._ready), "rollouts": len(self._jobs)}
        if not todo:
            return nothing_to_do(**facts)
        cfg = run.cfg
        backend = run.backend(self.name)
        agent = run.plugins.registry("agent").get(cfg.agent.type)(cfg.agent)
        params = chat_params(agent, backend)
        verifier = Verifier(run.sandbox(), cfg.verification)

        async def one(job: tuple[dict, int], client: LLMClient) -> Done:
            chat = bind_chat(client, agent, params)
            record = await self._rollout(run, verifier, agent, chat, backend.context_limit, *job, client=client)
            state = FAILED if record["status"] == FAILED else DONE
            failed = (record["stop_detail"] or "request failed") if record["stop_reason"] == REQUEST_ERROR else None
            return Done([(record["rollout_id"], state, record["status"], record["reason"], record)], record["usage"],
                        failed, tally={record["status"]: 1, "solved": record["reward"] == 1})

        return Plan(todo, one, total=len(todo), facts=facts)

    def summary(self, run: Run) -> dict:
        settings = self.settings(run.cfg)
        tasks = pass_rates([i.record for i in run.store.items(self.name, DONE)], settings.difficulty)
        summary = {"solved": sum(t["solved"] for t in tasks)}
        if tasks:
            summary[f"pass@{settings.rollouts}"] = round(sum(t["pass_at_k"] for t in tasks) / len(tasks), 3)
        return summary

    def report_section(self, run: Run) -> Section | None:
        """How hard the tasks were for the teacher: tasks per difficulty label."""
        records = (i.record for i in run.store.items(self.name, DONE, fields=("task_id", "reward", "status", "tampered")))
        rates = pass_rates(records, self.settings(run.cfg).difficulty)
        if not rates:
            body = empty("No rollouts yet, so no pass rates: run stage=trajectory (trajectory.rollouts=k).")
        else:
            counts = Counter(r["difficulty"] for r in rates)
            rows = [[name, counts.get(name, 0)] for name in reversed(LABELS)]
            body = (f"<p>Difficulty of {len(rates)} tasks from the teacher's pass rate (pass@1 over their rollouts; "
                    "thresholds: trajectory.difficulty).</p>" + table(["difficulty", "tasks"], rows, "table-difficulty"))
        return Section("Difficulty", "difficulty", body)

    def classify(self, run: Run, record: dict) -> tuple[str, list[str]]:
        """A finished rollout's status and the reasons for it: the filters keep or drop it."""
        reasons = drop_reasons(record, self.settings(run.cfg).filters)
        if record.get("tampered"):  # never training data, never a solution, never a pass
            return TAMPERED, reasons
        return (DROPPED if reasons else KEPT), reasons

    def _reclassify(self, run: Run) -> None:
        """Apply the current filters to rollouts finished earlier."""
        changed = []
        for item in run.store.items(self.name, DONE):
            record = dict(item.record)
            status, reasons = self.classify(run, record)
            if status != item.outcome or reasons != record.get("filters"):
                record.update(status=status, filters=reasons, reason="; ".join(reasons) or None)
                changed.append((item.key, DONE, status, record["reason"], record))
        run.store.put(self.name, changed)

    async def _rollout(self, run: Run, verifier: Verifier, agent: TurnAgent, chat: Chat, context_limit: int | None,
                       env: dict, index: int, *, client: LLMClient) -> dict:
        settings = self.settings(run.cfg)
        rollout_id = rollout_key(env["task_id"], index)
        started_at = datetime.now(timezone.utc).isoformat()
        record: dict = {
            "rollout_id": rollout_id, "task_id": env["task_id"], "rollout": index, "status": FAILED, "reason": None,
            "filters": [], "reward": None, "stop_reason": None, "turns": 0, "model": "",
        }
        started = time.monotonic()
        episode = Episode(prompt="")
        session = None
        try:
            session = await asyncio.to_thread(verifier.sandbox.open, rollout_id, image=env.get("image_id") or env["image"],
                                              network=str(settings.network))
            record["host"] = session.host
            baseline = await asyncio.to_thread(verifier.before, session, env)
            workdir = env.get("workdir")  # an imported task starts where its own harness starts it
            episode = await agent.run(env["text"], open_terminal(agent, session, workdir), chat,
                                      context_limit=context_limit, workdir=workdir or "/root")
            if episode.stop_reason == REQUEST_ERROR:
                record["reason"] = f"request failed: {episode.detail}"
            else:
                if settings.network != "none":
                    await asyncio.to_thread(session.go_offline)
                timeout = float(env.get("verifier_timeout") or settings.verifier_timeout)  # an imported task's own
                verdict = await asyncio.to_thread(verifier.verify, session, env, timeout=timeout, name=rollout_id,
                                                  baseline=baseline)
                record.update(verifier_exit_code=verdict.exit_code, verifier_output=verdict.output,
                              verification=verdict.mode, tampered=verdict.tampered, reward=int(verdict.solved))
        except Exception as exc:  # noqa: BLE001 - sandbox and Docker errors end the rollout, not the run
            record["reason"] = item_failure(exc)
            if record["reason"] is None:
                raise
        finally:
            if session is not None:
                await asyncio.to_thread(session.remove)
        backend_config = run.backend_config(self.name)
        for turn in episode.turns:
            turn.cost_usd = request_cost(backend_config, turn.prompt_tokens, turn.completion_tokens)
        model = run.backend(self.name).describe().get("model") or ""
        self._summarize(record, episode, model)
        if record.get("reward") == 1 and settings.get("review"):
            try:
                await self._review(run, client, env, episode, record)
            except RequestError as exc:  # unreviewed is not kept: the rollout is tried again
                record["reason"] = f"request failed: trajectory review: {exc}"
        record["wall_s"] = round(time.monotonic() - started, 2)
        record["finished_at"] = datetime.now(timezone.utc).isoformat()
        if episode.prompt:
            record["trajectory"] = self._write_trajectory(run, agent, episode, record, model, started_at)
        if record["reason"] is None:  # finished: the filters decide
            record["status"], record["filters"] = self.classify(run, record)
            record["reason"] = "; ".join(record["filters"]) or None
        return record

    def _write_trajectory(self, run: Run, agent: TurnAgent, episode: Episode, record: dict, model: str, started_at: str) -> str:
        """The rollout as an ATIF file; returns its path in the run directory."""
        rollout_id = record["rollout_id"]
        trajectory = atif.from_episode(
            episode, session_id=f"{run.name}/{rollout_id}", agent_name=f"litecoder-{run.cfg.agent.type}", model=model,
            started_at=started_at, tools=agent.request_params().get("tools"),
            extra={"task_id": record["task_id"], "rollout": record["rollout"], "reward": record["reward"],
                   "verifier_exit_code": record.get("verifier_exit_code"), "run": run.name},
        )
        atif.validate(trajectory)
        path = run.path(self.trajectory_dir) / f"{rollout_id}.json"
        write_text_atomic(path, json.dumps(trajectory, indent=1, ensure_ascii=False))
        return str(path.relative_to(run.dir))

    async def _review(self, run: Run, client: LLMClient, env: dict, episode: Episode, record: dict) -> None:
        """Ask the stage's model whether a solved rollout gamed its check; a flagged one says why
        in ``review``. An unreadable verdict flags nothing."""
        commands = "\n".join(c.keystrokes.rstrip("\n") for t in episode.turns for c in t.commands if c.keystrokes.strip())
        verdicts, usage, error = await review(client, run.cfg.review, list(run.cfg.review.trajectory_criteria),
                                              "trajectory_instruction", task=env["text"].strip(),
                                              commands=commands or "(none)",
                                              structured=run.backend(self.name).supports_structured_output)
        if error:
            log.warning("trajectory review of %s: %s", record["rollout_id"], error)
        failed = [f"{v.criterion}: {v.reason}" for v in verdicts if not v.passed]
        record["review"] = "; ".join(failed) or None
        add_usage(record["usage"], usage)
        record["prompt_tokens"], record["completion_tokens"] = record["usage"]["prompt_tokens"], record["usage"]["completion_tokens"]

    @staticmethod
    def _summarize(record: dict, episode: Episode, model: str) -> None:
        turns = episode.turns
        same_commands, same_output = repeats(turns)
        last = next((t for t in reversed(turns) if t.prompt_tokens is not None), None)
        usage = {**of_turns(turns), "cost_usd": sum(t.cost_usd for t in turns)}
        record.update(
            model=model, stop_reason=episode.stop_reason, stop_detail=episode.detail, turns=len(turns),
            commands=sum(len(t.commands) for t in turns), malformed_turns=episode.malformed_turns,
            repeated_commands=same_commands, repeated_output=same_output, usage=usage,
            prompt_tokens=usage["prompt_tokens"], completion_tokens=usage["completion_tokens"],
            cached_tokens=sum(t.cached_tokens or 0 for t in turns), cost_usd=round(usage["cost_usd"], 6),
            conversation_tokens=((last.prompt_tokens or 0) + (last.completion_tokens or 0)) if last else 0,
        )

    def export(self, run: Run) -> None:
        records = [i.record for i in run.store.items(self.name)]
        write_parquet_atomic(records_frame(records, SCHEMA, "finished_at"), run.path(self.rollouts_file))
        done = [r for r in records if r["status"] != FAILED]
        frame = pl.DataFrame(pass_rates(done, self.settings(run.cfg).difficulty), schema=TASK_SCHEMA)
        write_parquet_atomic(frame, run.path(self.tasks_file))


@hookimpl
def litecoder_register_stages(register):
    register("trajectory", TrajectoryStage, config=TrajectoryConfig)
