"""Throughput of litecoder's ``sample`` stage against a plain concurrent OpenAI-client loop.

Both sides send the same requests to the same vLLM server: litecoder's stage runs in
process (Hydra compose + ``litecoder.run.execute``, timed around ``execute`` only, so
interpreter and server start-up are excluded), and the plain loop replays the prompts, ``n``
and seeds it recorded in ``tasks.parquet`` with ``openai.AsyncOpenAI().completions.create``
under an ``asyncio.Semaphore`` of the same concurrency. Tokens/s is completion tokens over
wall time: litecoder's per-sample ``completion_tokens`` for the stage, the responses'
``usage.completion_tokens`` for the loop.

Requests are unseeded by default (``sample.seed=null``): vLLM 0.32 on CPU kills its engine
("RuntimeError: CPU Generator does not use offset") as soon as a seeded request's prefill is
chunked, which this much concurrency causes. ``--seed N`` sends litecoder's per-request
seeds (N, N+1, ...) on a server where that is safe.

After a short warm-up, the two alternate for ``--repeats`` rounds (L,P then P,L, ...) so
that drift on a noisy machine hits both alike; the per-round figures, the medians and the
ratio of medians (target: litecoder >= 0.95x the plain loop) are printed, ending with a
markdown table.

Usage::

    # against a running server
    .venv/bin/python bench/sample_throughput.py --url http://127.0.0.1:8011
    # let litecoder start (and stop) its own vLLM server first
    .venv/bin/python bench/sample_throughput.py
    # other settings; --override passes any Hydra override to the stage
    .venv/bin/python bench/sample_throughput.py --url http://127.0.0.1:8011 \\
        --num-tasks 256 --n 8 --max-tokens 256 --concurrency 32 --repeats 5 --out bench-out
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import openai
import polars as pl
from omegaconf import DictConfig, OmegaConf

from common import run_benchmark

from litecoder.backends.vllm import VLLMBackend, VLLMBackendConfig
from litecoder.cli import setup
from litecoder.config import register_configs
from litecoder.run import execute
from litecoder.stages.sample import RAW, TASKS_FILE, SampleStage

#: litecoder must reach this fraction of the plain loop's tokens/s
TARGET = 0.95


@dataclass(frozen=True)
class Replay:
    """One request of the stage as it was sent, to send again with the OpenAI client."""

    prompt: str
    n: int
    seed: int | None


@dataclass
class Result:
    tokens: int
    wall_s: float
    failed: int = 0

    @property
    def tok_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else 0.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="running vLLM server (e.g. http://127.0.0.1:8011); default: start one with litecoder's VLLMBackend")
    p.add_argument("--num-tasks", type=int, default=128, help="sample.num_tasks (default: %(default)s)")
    p.add_argument("--n", type=int, default=4, help="sample.n, completions per request (default: %(default)s)")
    p.add_argument("--max-tokens", type=int, default=128, help="sample.max_tokens (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.9, help="sample.temperature (default: %(default)s)")
    p.add_argument("--concurrency", type=int, default=64, help="requests in flight, backend.max_in_flight (default: %(default)s)")
    p.add_argument("--seed", type=int, help="sample.seed, the first request's seed (default: unseeded; seeded requests crash vLLM 0.32 on CPU under load)")
    p.add_argument("--domain", default="networking", help="domain config (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="measured rounds of litecoder + plain loop (default: %(default)s)")
    p.add_argument("--warmup-tasks", type=int, default=16, help="sample.num_tasks of the warm-up run; 0 skips it (default: %(default)s)")
    p.add_argument("--out", type=Path, help="directory for run outputs (default: a temporary directory, removed afterwards)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="extra Hydra override for the stage (repeatable)")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    return args


# -- litecoder ------------------------------------------------------------------------------


def compose(args: argparse.Namespace, url: str, num_tasks: int) -> DictConfig:
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = [
        "stage=sample",
        f"domain={args.domain}",
        f"backend.url={url}",
        f"backend.max_in_flight={args.concurrency}",
        f"sample.num_tasks={num_tasks}",
        f"sample.n={args.n}",
        f"sample.max_tokens={args.max_tokens}",
        f"sample.temperature={args.temperature}",
        f"sample.seed={'null' if args.seed is None else args.seed}",
        "run.progress=false",
        *args.override,
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=setup(), version_base=None):
        return hydra_compose(config_name="config", overrides=overrides)


def run_litecoder(cfg: DictConfig, run_dir: Path) -> Result:
    started = time.perf_counter()
    summary = execute(cfg, run_dir)["sample"]
    wall = time.perf_counter() - started
    return Result(int(summary["completion_tokens"]), wall, int(summary.get("failed", 0)))


def stop_strings(cfg: DictConfig) -> list[str]:
    """The stop strings the stage sends (derived from the chat template; not in tasks.parquet)."""
    if cfg.sample.mode == "chat":
        raise SystemExit("this benchmark replays raw completions; sample.mode=chat is not supported")
    backend = VLLMBackend(cfg.backend)  # plan() reads only its config; nothing is started
    requests = SampleStage().plan_requests(cfg, backend, RAW)
    stops = {r.stop for r in requests}
    if len(stops) != 1:
        raise SystemExit(f"expected one set of stop strings, the stage plans {sorted(stops)}")
    return list(stops.pop())


def load_replay(run_dir: Path) -> tuple[str, list[Replay]]:
    """The model and the requests the stage sent, one per request_index, from tasks.parquet."""
    frame = pl.read_parquet(run_dir / TASKS_FILE)
    requests = (
        frame.group_by("request_index")
        .agg(pl.col("prompt").first(), pl.col("n").first(), pl.col("seed").first())
        .sort("request_index")
    )
    models = frame["model"].drop_nulls().unique().to_list()
    replay = [Replay(row["prompt"], int(row["n"]), row["seed"]) for row in requests.iter_rows(named=True)]
    return (models[0] if models else ""), replay


# -- plain OpenAI-client loop ---------------------------------------------------------------


async def plain_loop(base_url: str, model: str, requests: list[Replay], stop: list[str], args: argparse.Namespace, top_p: float) -> Result:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="none", timeout=600.0)
    slots = asyncio.Semaphore(args.concurrency)
    tokens = failed = 0

    async def one(request: Replay) -> None:
        nonlocal tokens, failed
        params = {"seed": request.seed} if request.seed is not None else {}
        async with slots:
            try:
                response = await client.completions.create(
                    model=model,
                    prompt=request.prompt,
                    n=request.n,
                    stop=stop or None,
                    temperature=args.temperature,
                    top_p=top_p,
                    max_tokens=args.max_tokens,
                    extra_body={"return_token_ids": True},  # litecoder asks for them too
                    **params,
                )
            except openai.OpenAIError as exc:
                failed += 1
                print(f"plain loop: request failed: {exc}", file=sys.stderr)
                return
        tokens += response.usage.completion_tokens if response.usage else 0

    started = time.perf_counter()
    try:
        await asyncio.gather(*(one(r) for r in requests))
    finally:
        await client.close()
    return Result(tokens, time.perf_counter() - started, failed)


# -- driver ---------------------------------------------------------------------------------


def start_server(run_dir: Path) -> VLLMBackend:
    register_configs()  # the ${litecoder.home:} resolver of the default model_path
    backend = VLLMBackend(OmegaConf.structured(VLLMBackendConfig), run_dir)
    print("starting a vLLM server with litecoder's VLLMBackend ...", file=sys.stderr)
    started = time.perf_counter()
    backend.start()
    print(f"vLLM up at {backend.base_url} ({backend.model_name}) after {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return backend


def benchmark(args: argparse.Namespace, out: Path) -> None:
    server = None
    try:
        if args.url:
            url = args.url.rstrip("/").removesuffix("/v1")
        else:
            server = start_server(out / "server")
            url = server.base_url.removesuffix("/v1")
        base_url = url + "/v1"
        cfg = compose(args, url, args.num_tasks)
        stop = stop_strings(cfg)
        top_p = float(cfg.sample.top_p)
        print(f"server {url}; {args.num_tasks} tasks, n={args.n}, max_tokens={args.max_tokens}, "
              f"temperature={args.temperature}, top_p={top_p}, seed={args.seed}, concurrency={args.concurrency}, stop={stop!r}")

        if args.warmup_tasks > 0:
            warm_dir = out / "warmup"
            warm = run_litecoder(compose(args, url, args.warmup_tasks), warm_dir)
            model, replay = load_replay(warm_dir)
            plain = asyncio.run(plain_loop(base_url, model, replay, stop, args, top_p))
            print(f"warm-up ({args.warmup_tasks} tasks): litecoder {warm.tok_s:.1f} tok/s, plain {plain.tok_s:.1f} tok/s (not counted)")

        lite_results: list[Result] = []
        plain_results: list[Result] = []
        model, replay = "", []
        for round_ in range(1, args.repeats + 1):
            # L,P in odd rounds, P,L in even ones; the first round must start with litecoder,
            # whose tasks.parquet supplies the requests the plain loop replays.
            order = ("litecoder", "plain") if round_ % 2 == 1 else ("plain", "litecoder")
            for side in order:
                if side == "litecoder":
                    run_dir = out / f"round{round_}"
                    lite_results.append(run_litecoder(cfg, run_dir))
                    model_now, replay_now = load_replay(run_dir)
                    if replay and replay_now != replay:
                        print(f"warning: round {round_} sent other requests than round 1", file=sys.stderr)
                    model, replay = model_now, replay_now
                else:
                    plain_results.append(asyncio.run(plain_loop(base_url, model, replay, stop, args, top_p)))
            lite, plain = lite_results[-1], plain_results[-1]
            print(f"round {round_} ({' then '.join(order)}): litecoder {lite.tokens} tokens in {lite.wall_s:.2f}s = {lite.tok_s:.1f} tok/s; "
                  f"plain {plain.tokens} tokens in {plain.wall_s:.2f}s = {plain.tok_s:.1f} tok/s; ratio {lite.tok_s / plain.tok_s:.3f}")
        print(f"requests per run: {len(replay)} ({sum(r.n for r in replay)} samples), model {model}")
        failures = sum(r.failed for r in lite_results), sum(r.failed for r in plain_results)
        if any(failures):
            print(f"warning: failed samples (litecoder) / requests (plain): {failures[0]} / {failures[1]}", file=sys.stderr)
        report(args, lite_results, plain_results)
    finally:
        if server is not None:
            server.close()


def report(args: argparse.Namespace, lite: list[Result], plain: list[Result]) -> None:
    lite_median = statistics.median(r.tok_s for r in lite)
    plain_median = statistics.median(r.tok_s for r in plain)
    ratio = lite_median / plain_median if plain_median else float("nan")
    verdict = "meets" if ratio >= TARGET else "misses"
    print()
    print(f"Sample-stage throughput ({args.num_tasks} tasks, n={args.n}, max_tokens={args.max_tokens}, "
          f"temperature={args.temperature}, concurrency={args.concurrency}; completion tokens/s):")
    print()
    print("| round | litecoder `sample` | plain AsyncOpenAI loop | ratio |")
    print("|---|---:|---:|---:|")
    for i, (l, p) in enumerate(zip(lite, plain), 1):
        print(f"| {i} | {l.tok_s:.1f} | {p.tok_s:.1f} | {l.tok_s / p.tok_s:.2f}x |")
    print(f"| **median** | **{lite_median:.1f}** | **{plain_median:.1f}** | **{ratio:.2f}x** |")
    print()
    print(f"litecoder / plain (ratio of medians): {ratio:.3f} ({verdict} the {TARGET}x target)")


def main(argv: list[str] | None = None) -> int:
    return run_benchmark("sample_throughput", parse_args(argv), benchmark)

if __name__ == "__main__":
    sys.exit(main())
