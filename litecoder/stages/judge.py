"""Feasibility judging: keep benchmark copies out, de-duplicate the sampled tasks, then let
an LLM score the rest.

Criteria, scales, the aggregation rule and the threshold are config (``conf/judge/``). The
judge replies with one JSON object that must fit a schema built from the criteria; where
the backend supports it, decoding is constrained to that schema. A reply that never fits
after ``judge.max_attempts`` requests is recorded as failed with its raw text: never
dropped, never accepted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterator, Optional

from omegaconf import MISSING

from .. import hookimpl
from ..config import as_dict
from ..decontaminate import DecontaminateConfig, find_contaminated
from ..dedup import find_duplicates
from ..errors import ConfigError, RequestError
from ..replies import ReplyError, json_schema_format, parse_reply
from ..templates import render
from ..usage import add_usage, new_usage, of_request
from ..records import TASK_ORDER, Judgment, SampledTask, backend_identity, polars_schema
from ..runner import Done
from ..stage import ItemStage, Plan
from ..outcomes import ACCEPTED, CONTAMINATED, DUPLICATE, REJECTED
from ..store import DONE, FAILED
from ..tables import write_records_parquet

if TYPE_CHECKING:
    from omegaconf import DictConfig
    from ..backends.base import LLMClient
    from ..run import Run

log = logging.getLogger(__name__)


@dataclass
class CriterionConfig:
    name: str = MISSING
    description: str = MISSING
    scale_min: int = 1
    scale_max: int = 5
    weight: float = 1.0
    #: a score below this rejects the task whatever the aggregate (a veto)
    min_score: Optional[int] = None


@dataclass
class JudgeConfig:
    name: str = MISSING
    criteria: list[CriterionConfig] = field(default_factory=list)
    #: how per-criterion scores combine: ``mean`` (weighted) or ``min``
    aggregation: str = "mean"
    #: accept when the aggregate score is at least this
    threshold: float = 3.5
    #: Jinja template of the judge's system message; sees ``criteria``
    system_prompt: str = MISSING
    temperature: float = 0.0
    max_tokens: int = 1024
    #: requests per task until a reply parses and validates
    max_attempts: int = 3
    #: replies longer than this are not parsed (recorded as failed)
    max_reply_chars: int = 20_000
    #: ``auto``: JSON-schema constrained decoding where the backend has it; ``off``
    structured_output: str = "auto"
    #: cap on each rationale (JSON-schema maxLength); null for APIs whose strict mode lacks it
    rationale_max_chars: Optional[int] = 400
    #: benchmark collections whose tasks are kept out (``decontaminate.py``)
    decontaminate: DecontaminateConfig = field(default_factory=DecontaminateConfig)
    backend: Optional[Any] = None

JUDGMENTS_FILE = "judgments.parquet"
FEASIBLE_FILE = "feasible.parquet"
#: prefiltered results are written in batches of this many
PUT_BATCH = 500
#: what judging needs of a sampled task
TASK_FIELDS = ("id", "text", "status", "domain", "subtopic", "prompt_variant", "request_index", "choice_index")

JUDGMENT_SCHEMA = polars_schema(Judgment)
#: ``feasible.parquet``: the accepted tasks as sampled, with their scores
FEASIBLE_SCHEMA = {**polars_schema(SampledTask), "aggregate": JUDGMENT_SCHEMA["aggregate"], "scores": JUDGMENT_SCHEMA["scores"]}


def judgment_schema(judge: DictConfig) -> dict:
    """The JSON schema a judgment must fit: one {rationale, score} object per criterion."""
    properties = {}
    for criterion in judge.criteria:
        rationale: dict = {"type": "string"}
        if judge.rationale_max_chars:
            rationale["maxLength"] = int(judge.rationale_max_chars)
        properties[criterion.name] = {
            "type": "object",
            "properties": {
                "rationale": rationale,
                "score": {"type": "integer", "minimum": int(criterion.scale_min), "maximum": int(criterion.scale_max)},
            },
            "required": ["rationale", "score"],
            "additionalProperties": False,
        }
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def decide(judgment: dict, judge: DictConfig) -> tuple[list[dict], float, str, str | None]:
    """Scores, aggregate, verdict and (for rejections) the reason."""
    scores = [{"criterion": c.name, "score": int(judgment[c.name]["score"]), "rationale": judgment[c.name]["rationale"]}
              for c in judge.criteria]
    by_name = {s["criterion"]: s["score"] for s in scores}
    if judge.aggregation == "mean":
        total_weight = sum(float(c.weight) for c in judge.criteria)
        aggregate = sum(float(c.weight) * by_name[c.name] for c in judge.criteria) / total_weight
    elif judge.aggregation == "min":
        aggregate = float(min(by_name.values()))
    else:
        raise ConfigError(f"judge.aggregation={judge.aggregation!r} is not one of mean, min")
    vetoes = [f"{c.name}={by_name[c.name]}<{c.min_score}" for c in judge.criteria
              if c.min_score is not None and by_name[c.name] < c.min_score]
    if vetoes:
        return scores, aggregate, REJECTED, "below the minimum on " + ", ".join(vetoes)
    if aggregate < float(judge.threshold):
        return scores, aggregate, REJECTED, f"aggregate {aggregate:.2f} below the threshold {judge.threshold}"
    return scores, aggregate, ACCEPTED, None


@dataclass
class JudgeRequest:
    """What every judge request of a run shares."""

    config: DictConfig
    system: str
    schema: dict
    params: dict
    model: str

    @classmethod
    def for_run(cls, run: Run, stage: str) -> "JudgeRequest":
        judge, backend = run.cfg.judge, run.backend(stage)
        schema = judgment_schema(judge)
        system = render(judge.system_prompt, keep_trailing_newline=False, criteria=judge.criteria, judge=judge)
        params: dict = {"temperature": judge.temperature, "max_tokens": judge.max_tokens}
        if judge.structured_output == "auto" and backend.supports_structured_output:
            params["response_format"] = json_schema_format("judgment", schema)
        return cls(judge, system, schema, params, backend.describe().get("model") or "")


class JudgeStage(ItemStage):
    name, order, calls_model = "judge", 20, True
    unit, table = "task", JUDGMENTS_FILE
    _inputs = 0

    def identity(self, cfg: DictConfig, backend_config: DictConfig) -> dict:
        judge = as_dict(cfg.judge)
        judge.pop("backend", None)
        return {"judge": judge, "dedup": as_dict(cfg.dedup), "backend": backend_identity(backend_config)}

    def inputs(self, run: Run) -> set[str]:
        if not run.cfg.judge.criteria:
            raise ConfigError(f"judge {run.cfg.judge.name!r} has no criteria")
        ids = {task["id"] for task in self._sampled(run)}
        if not ids and not run.store.counts("sample"):
            raise ConfigError(f"no sampled tasks in {run.dir}; run stage=sample first (or stage=[sample,judge])")
        self._inputs = len(ids)
        return ids

    @staticmethod
    def _sampled(run: Run) -> Iterator[dict]:
        """The sampled tasks, streamed from the store a batch at a time, with only the fields
        judging needs (the prompts and token counts stay in the store)."""
        for batch in run.store.iter_records("sample", state=DONE, order=TASK_ORDER):
            yield from ({k: r.get(k) for k in TASK_FIELDS} for r in batch)

    def plan(self, run: Run, finished: set[str]) -> Plan:
        to_judge = self._prefilter(run, finished)
        tasks = (task for task in self._sampled(run) if task["id"] in to_judge)
        judge = JudgeRequest.for_run(run, self.name)
        target = run.cfg.sample.target_accepted
        accepted = run.store.counts(self.name).get(ACCEPTED, 0)

        async def one(task: dict, client: LLMClient) -> Done:
            nonlocal accepted
            done = await self.judge_one(judge, task, client)
            accepted += done.entries[0][2] == ACCEPTED
            return done

        def stop() -> str | None:
            return "target" if target is not None and accepted >= target else None

        def blocked(in_flight: int) -> bool:
            # Never have more judgments in flight than acceptances still needed.
            return target is not None and accepted + in_flight >= target

        return Plan(tasks, one, total=len(to_judge), facts={"inputs": self._inputs},
                    label=f"judge {run.cfg.domain.name}", stop=stop, blocked=blocked)

    def limit(self, run: Run) -> int:
        return int(run.backend_config(self.name).max_in_flight)

    def _prefilter(self, run: Run, finished: set[str]) -> set[str]:
        """Record the duplicates, the contaminated and the cut-off tasks without a request;
        returns the ids left to judge."""
        cfg = run.cfg
        duplicates = find_duplicates(((t["id"], t["text"]) for t in self._sampled(run)), cfg.dedup)
        contaminated = find_contaminated(((t["id"], t["text"]) for t in self._sampled(run) if t["id"] not in finished),
                                         cfg.judge.decontaminate, int(cfg.dedup.shingle_size))
        prefiltered: list[tuple] = []
        to_judge: set[str] = set()
        for task in self._sampled(run):
            if task["id"] in finished:
                continue
            record = self._prefiltered(task, contaminated, duplicates)
            if record is None:
                to_judge.add(task["id"])
            else:
                prefiltered.append((task["id"], DONE, record["verdict"], record["reason"], record))
            if len(prefiltered) >= PUT_BATCH:
                run.store.put(self.name, prefiltered)
                prefiltered = []
        run.store.put(self.name, prefiltered)
        return to_judge

    def _prefiltered(self, task: dict, contaminated: dict, duplicates: dict) -> dict | None:
        if task["id"] in contaminated:
            match = contaminated[task["id"]]
            return self._record(task, CONTAMINATED, match.reason(), contaminated_by=match.benchmark_task,
                                contamination_kind=match.kind, similarity=match.similarity)
        if task["id"] in duplicates:
            dup = duplicates[task["id"]]
            return self._record(task, DUPLICATE, f"{dup.kind} duplicate of {dup.of}", duplicate_of=dup.of,
                                duplicate_kind=dup.kind, similarity=dup.similarity)
        if task["status"] == "truncated":
            return self._record(task, REJECTED, "task text was cut off at sample.max_tokens")
        return None

    async def judge_one(self, judge: "JudgeRequest", task: dict, client: LLMClient) -> Done:
        """Judge one task: up to ``judge.max_attempts`` requests until a reply fits the schema."""
        messages = [{"role": "system", "content": judge.system}, {"role": "user", "content": task["text"]}]
        usage = new_usage()
        raws: list[str] = []
        errors: list[str] = []
        for _ in range(int(judge.config.max_attempts)):
            try:
                result = await client.chat(messages, n=1, **judge.params)
            except RequestError as exc:
                record = self._record(task, FAILED, f"request failed: {exc}", model=judge.model, error=str(exc),
                                      raw=raws[-1] if raws else None, attempts=len(raws) + 1, usage=usage)
                return Done([(task["id"], FAILED, "error", record["reason"], record)], usage, str(exc), tally={"failed": 1})
            add_usage(usage, of_request(result))
            raws.append(result.choices[0].text if result.choices else "")
            try:
                judgment = parse_reply(raws[-1], judge.schema, max_chars=int(judge.config.max_reply_chars))
            except ReplyError as exc:
                errors.append(str(exc))
                continue
            scores, aggregate, verdict, reason = decide(judgment, judge.config)
            record = self._record(task, verdict, reason, model=judge.model, raw=raws[-1], attempts=len(raws), usage=usage,
                                  scores=scores, aggregate=aggregate)
            return Done([(task["id"], DONE, verdict, reason, record)], usage,
                        tally={"accepted": verdict == ACCEPTED, "rejected": verdict == REJECTED})
        reason = f"no valid judgment after {len(raws)} attempts: {errors[-1]}"
        record = self._record(task, FAILED, reason, model=judge.model, error="; ".join(errors), raw=raws[-1],
                              attempts=len(raws), usage=usage)
        return Done([(task["id"], FAILED, "unparsed", reason, record)], usage, tally={"failed": 1})

    @staticmethod
    def _record(task: dict, verdict: str, reason: str | None, **fields: Any) -> dict:
        record = {
            "task_id": task["id"],
            "domain": task["domain"],
            "subtopic": task["subtopic"],
            "prompt_variant": task["prompt_variant"],
            "text": task["text"],
            "verdict": verdict,
            "reason": reason,
            "judged_at": datetime.now(timezone.utc).isoformat(),
        }
        usage = fields.pop("usage", None)
        if usage is not None:
            record["usage"] = usage
            record["prompt_tokens"] = usage["prompt_tokens"]
            record["completion_tokens"] = usage["completion_tokens"]
        record.update(fields)
        return record

    def export(self, run: Run) -> None:
        """Rebuild ``judgments.parquet`` and ``feasible.parquet`` from the store."""
        write_records_parquet(run.path(JUDGMENTS_FILE), run.store.iter_records(self.name), JUDGMENT_SCHEMA, "judged_at")

        def feasible() -> Iterator[list[dict]]:
            # a batch of sampled tasks at a time, with the verdicts the store has for them
            for tasks in run.store.iter_records("sample", state=DONE, order=TASK_ORDER):
                verdicts = {v["task_id"]: v for v in run.store.records(self.name, [t["id"] for t in tasks])
                            if v.get("verdict") == ACCEPTED}
                yield [{**t, "aggregate": v.get("aggregate"), "scores": v.get("scores")}
                       for t in tasks if (v := verdicts.get(t["id"])) is not None]

        write_records_parquet(run.path(FEASIBLE_FILE), feasible(), FEASIBLE_SCHEMA, "created_at")


@hookimpl
def litecoder_register_stages(register):
    register("judge", JudgeStage, config=JudgeConfig)
