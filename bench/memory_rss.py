"""Peak memory (RSS) of ``python -m litecoder stage=[sample,judge]`` at 1k and 10k tasks.

Work should stream through the run store rather than live in memory, so the peak RSS of a
10k-task run should be nearly the 1k-task run's (target: 10k/1k <= 1.3). The model is a fast
scripted server in this process (``litecoder.testing.stub_openai.StubServer``): every
completion returns ``n`` distinct task texts of ~100 pseudo-words (so near-duplicate
detection keeps them all and every task is judged), and every judge request gets a valid
judgment, accepting about half. litecoder runs as a subprocess, as a user runs it, with
``run.progress=false`` and ``run.report=false`` (``--report`` keeps the report).

Measured per run: peak RSS from ``os.wait4`` (``ru_maxrss`` of that child), wall time, and
a timeline from ``/proc/<pid>/status`` (VmRSS and VmHWM every 0.1 s) split into phases by
the lines litecoder prints when a stage ends: the peak while sampling, while judging, and
after (counts, spend, summary). A small run (``--floor``, 16 tasks) gives the interpreter +
imports floor, so the growth per task can be stated. Sizes alternate in rotated order over
``--repeats`` rounds; the ratio is of medians, taken in this one run.

``--profile SIZE`` runs one more litecoder process of SIZE tasks under tracemalloc (12
frames, started by an inline plugin when the first stage begins): a watcher thread keeps
the snapshot taken at the largest traced size, and the largest allocation sites (file:line)
and their call paths are printed. tracemalloc sees
Python objects only, not polars/Arrow buffers or SQLite's cache; compare its peak with RSS.

``--profile`` is slow (tracemalloc makes the judge's jsonschema work ~10x slower), so the
per-structure figures come from ``--census RUN_DIR``: on a finished run (keep one with
``--out``), it calls, in this process and under tracemalloc, the steps of the stages that
read a whole stage: ``SampleStage.export`` (``tasks.parquet``), the judge's passes over the
sampled tasks (their ids, ``dedup.find_duplicates``), ``JudgeStage.export``, the report's
slim items and ``spend``. Per step it prints the traced peak, what stays
referenced afterwards, and the rise of this process's RSS high-water mark (VmHWM, reset
through ``/proc/self/clear_refs`` before each step), in MiB and per task.

Usage::

    .venv/bin/python bench/memory_rss.py                              # 16 (floor), 1k, 10k tasks
    .venv/bin/python bench/memory_rss.py --sizes 1000 10000 --repeats 2 --concurrency 256
    .venv/bin/python bench/memory_rss.py --sizes 1000 --repeats 1 --profile 200
    .venv/bin/python bench/memory_rss.py --sizes 10000 --floor 0 --out /tmp/rss      # keep the runs
    .venv/bin/python bench/memory_rss.py --census /tmp/rss/rss-10000-r1
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import describe_source

import litecoder
from litecoder.testing.stub_openai import StubServer, completion_body

#: 10k/1k peak RSS above this is "not flat"
TARGET = 1.3
CRITERIA = ["complexity_balance", "clarity", "resource_availability", "verifiability", "safety"]
SYLLABLES = ["ka", "lo", "mi", "nu", "pe", "ra", "si", "to", "vu", "xe", "ba", "de", "fi", "go", "hu", "ji", "ko", "la", "mo", "ne"]
WORDS = ["".join(p) for p in itertools.product(SYLLABLES, repeat=3)]  # 8000 pseudo-words


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="*", default=[1000, 10000], help="sample.num_tasks values; none: only --profile (default: 1000 10000)")
    p.add_argument("--n", type=int, default=4, help="sample.n (default: %(default)s)")
    p.add_argument("--concurrency", type=int, default=256, help="backend.max_in_flight (default: %(default)s)")
    p.add_argument("--words", type=int, default=100, help="words per task text (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=1, help="rounds over all sizes, order rotated (default: %(default)s)")
    p.add_argument("--floor", type=int, default=16, help="tasks of the floor run; 0 skips it (default: %(default)s)")
    p.add_argument("--report", action="store_true", help="keep run.report=true (report.html at the end)")
    p.add_argument("--profile", type=int, metavar="SIZE", help="afterwards, one SIZE-task run under tracemalloc")
    p.add_argument("--census", type=Path, metavar="RUN_DIR", help="only replay the stages' whole-table steps on a finished "
                   "sample+judge run (e.g. --out DIR's rss-10000-r1) under tracemalloc and print MiB per step")
    p.add_argument("--top", type=int, default=15, help="allocation sites printed by --profile (default: %(default)s)")
    p.add_argument("--out", type=Path, help="directory for run outputs (default: a temporary directory, removed afterwards)")
    p.add_argument("--override", action="append", default=[], metavar="KEY=VALUE", help="extra Hydra override (repeatable)")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.n < 1:
        p.error("--repeats and --n must be >= 1")
    return args


# -- the stub model -------------------------------------------------------------------------


class Model:
    """Distinct pseudo-word tasks for sampling; a valid judgment (half accept) for judging."""

    def __init__(self, words: int) -> None:
        self.words = words
        self.counter = itertools.count()
        self.lock = threading.Lock()

    def text(self, number: int) -> str:
        rng = random.Random(number)
        body = " ".join(rng.choice(WORDS) for _ in range(self.words))
        return f"Task {number}: {body}."

    def __call__(self, path: str, body: dict):
        if path.endswith("chat/completions"):
            task = body["messages"][-1]["content"]
            score = 5 if hashlib.sha1(task.encode()).digest()[0] % 2 else 2
            judgment = {c: {"rationale": f"{c.replace('_', ' ')} is {score} of 5 for this task", "score": score} for c in CRITERIA}
            return 200, completion_body([json.dumps(judgment)], chat=True), 0
        with self.lock:
            numbers = [next(self.counter) for _ in range(int(body.get("n", 1)))]
        return 200, completion_body([self.text(i) for i in numbers]), 0


def start_stub(words: int) -> StubServer:
    server = StubServer(Model(words))
    server.requests = collections.deque(maxlen=0)  # the stub keeps no request log (it would grow here)
    return server.__enter__()


# -- one litecoder process ------------------------------------------------------------------


@dataclass
class Measurement:
    size: int
    wall_s: float
    peak_kb: int
    returncode: int
    phases: dict[str, int] = field(default_factory=dict)  # phase -> peak VmRSS kB seen in it
    stage_lines: list[str] = field(default_factory=list)
    tail: str = ""

    @property
    def peak_mb(self) -> float:
        return self.peak_kb / 1024


def proc_status(pid: int) -> dict[str, int]:
    values = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    name, value = line.split(":", 1)
                    values[name] = int(value.split()[0])
    except OSError:
        pass
    return values


def child_env() -> dict[str, str]:
    """The child imports the same litecoder as this script (e.g. a clean export on PYTHONPATH)."""
    env = dict(os.environ)
    source = str(Path(litecoder.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([source, *filter(None, [env.get("PYTHONPATH")])])
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def overrides(args: argparse.Namespace, url: str, out: Path, name: str, size: int) -> list[str]:
    return [
        "stage=[sample,judge]",
        f"run.root={out}",
        f"run.name={name}",
        f"backend.url={url}",
        f"backend.max_in_flight={args.concurrency}",
        "backend.retry_initial_wait=0.01",
        f"sample.num_tasks={size}",
        f"sample.n={args.n}",
        "run.progress=false",
        f"run.report={'true' if args.report else 'false'}",
        *args.override,
    ]


def run_litecoder(args: argparse.Namespace, url: str, out: Path, name: str, size: int, prefix: list[str] | None = None,
                  env: dict | None = None) -> Measurement:
    command = [sys.executable, *(prefix or ["-m", "litecoder"]), *overrides(args, url, out, name, size)]
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=out, env=env or child_env(), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    phase = ["sample"]
    phases: dict[str, int] = {}
    lines: list[str] = []
    stage_lines: list[str] = []
    finished = threading.Event()

    def read_stderr() -> None:
        for line in process.stderr:
            lines.append(line)
            for stage, after in (("sample", "judge"), ("judge", "after")):
                if line.startswith(f"litecoder: {stage}: "):
                    stage_lines.append(line.strip())
                    phase[0] = after

    def poll() -> None:
        while not finished.is_set():
            rss = proc_status(process.pid).get("VmRSS")
            if rss:
                phases[phase[0]] = max(phases.get(phase[0], 0), rss)
            finished.wait(0.1)

    reader = threading.Thread(target=read_stderr, daemon=True)
    poller = threading.Thread(target=poll, daemon=True)
    reader.start()
    poller.start()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    finished.set()
    process.returncode = os.waitstatus_to_exitcode(status)
    reader.join(5)
    poller.join(5)
    return Measurement(size, wall, usage.ru_maxrss, process.returncode, phases, stage_lines, "".join(lines[-20:]))


# -- tracemalloc profile --------------------------------------------------------------------

#: Runs litecoder's CLI with tracemalloc started when the first stage begins (an inline plugin
#: on ``litecoder_before_stage``, so imports are not traced and cost nothing extra). A watcher
#: keeps one snapshot, retaken whenever the traced size grows by 10% + 4 MiB, and at exit the
#: top allocation sites of the largest snapshot go to $LITECODER_BENCH_PROFILE.
PROFILER = textwrap.dedent("""
    import atexit, os, runpy, sys, threading, time, tracemalloc
    from litecoder import hookimpl
    from litecoder.plugins import get_plugins
    best = {"size": 0, "snapshot": None, "at": 0.0, "stage": "?"}
    state = {"stage": "?", "t0": 0.0}
    def watch():
        while True:
            current, _ = tracemalloc.get_traced_memory()
            if current > best["size"] * 1.10 + (4 << 20):
                best["snapshot"] = None
                best["snapshot"] = tracemalloc.take_snapshot()
                best["size"], best["at"], best["stage"] = current, time.monotonic() - state["t0"], state["stage"]
            time.sleep(0.05)
    class Trace:
        @hookimpl
        def litecoder_before_stage(self, stage, run):
            state["stage"] = stage
            if not tracemalloc.is_tracing():
                tracemalloc.start(int(os.environ.get("LITECODER_BENCH_FRAMES", "12")))
                state["t0"] = time.monotonic()
                threading.Thread(target=watch, daemon=True).start()
        @hookimpl
        def litecoder_after_stage(self, stage, run, summary):
            state["stage"] = f"after {stage}"
    get_plugins().register(Trace(), "bench-tracemalloc")
    def report():
        top = int(os.environ.get("LITECODER_BENCH_TOP", "15"))
        snap = best["snapshot"]
        _, peak = tracemalloc.get_traced_memory()
        out = [f"tracemalloc (from the first stage on): peak traced {peak / 2**20:.1f} MiB; largest snapshot "
               f"{best['size'] / 2**20:.1f} MiB, {best['at']:.1f}s in, during {best['stage']}"]
        if snap is not None:
            snap = snap.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
            out.append("largest allocation sites (file:line, MiB, blocks):")
            for stat in snap.statistics("lineno")[:top]:
                frame = stat.traceback[0]
                out.append(f"  {frame.filename}:{frame.lineno}  {stat.size / 2**20:.1f} MiB  {stat.count} blocks")
            out.append("their call paths (litecoder frames, outermost first), largest 6:")
            for stat in snap.statistics("traceback")[:6]:
                frames = [f for f in stat.traceback if "litecoder" in f.filename]  # oldest first
                out.append(f"  {stat.size / 2**20:.1f} MiB in {stat.count} blocks, allocated at {stat.traceback[-1].filename}:{stat.traceback[-1].lineno}")
                for f in frames[-5:]:
                    out.append(f"      {f.filename}:{f.lineno}")
        with open(os.environ["LITECODER_BENCH_PROFILE"], "w") as handle:
            handle.write("\\n".join(out) + "\\n")
    atexit.register(report)
    sys.argv = ["litecoder", *sys.argv[1:]]
    runpy.run_module("litecoder", run_name="__main__", alter_sys=True)
""")


def profile(args: argparse.Namespace, url: str, out: Path) -> None:
    report_file = out / "tracemalloc.txt"
    env = child_env()
    env["LITECODER_BENCH_PROFILE"] = str(report_file)
    env["LITECODER_BENCH_TOP"] = str(args.top)
    print()
    print(f"profile: {args.profile} tasks under tracemalloc (slow) ...")
    m = run_litecoder(args, url, out, f"rss-profile-{args.profile}", args.profile, prefix=["-c", PROFILER], env=env)
    print(f"profile run: exit {m.returncode}, {m.wall_s:.1f}s, peak RSS {m.peak_mb:.1f} MiB (tracemalloc adds its own)")
    print(report_file.read_text() if report_file.exists() else f"no profile written; stderr tail:\n{m.tail}")


# -- census: the whole-table steps of the stages on a finished run ----------------------------


def vm_hwm_reset() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


def census(run_dir: Path, top: int) -> None:
    import gc
    import tracemalloc
    import types

    from omegaconf import OmegaConf

    from litecoder.config import DedupConfig
    from litecoder.dedup import find_duplicates
    from litecoder.run import PIPELINE
    from litecoder.stages.report import RunData
    from litecoder.budget import spend
    from litecoder.stages.judge import JudgeStage
    from litecoder.stages.sample import TASK_ORDER, SampleStage
    from litecoder.store import DONE, RunStore

    store = RunStore(run_dir / "store.sqlite")
    counts = {stage: sum(store.counts(stage).get(s, 0) for s in ("done", "failed")) for stage in ("sample", "judge")}
    scratch = Path(tempfile.mkdtemp(prefix="litecoder-census-"))
    run = types.SimpleNamespace(store=store, path=lambda name: scratch / name, dir=run_dir)
    dedup = OmegaConf.structured(DedupConfig)
    n = max(1, counts["sample"])
    records = store._db.execute("SELECT record FROM items WHERE stage = 'sample' LIMIT 200").fetchall()
    sizes = [(len(r), len(json.loads(r).get("prompt") or "")) for (r,) in records]
    print(f"census of {run_dir}: {counts['sample']} sampled, {counts['judge']} judged; a sample record is "
          f"{statistics.mean(a for a, _ in sizes):.0f} bytes of JSON, {statistics.mean(b for _, b in sizes):.0f} of them the prompt")
    print()
    print("| step (core code) | traced peak MiB | still referenced MiB | RSS high-water rise MiB | KiB/task (peak) |")
    print("|---|---:|---:|---:|---:|")
    order = TASK_ORDER
    steps = [
        ("SampleStage.export: tasks.parquet", lambda: SampleStage().export(run), False),
        ("JudgeStage.run: the sampled tasks' ids", lambda: [r["id"] for b in store.iter_records("sample", state=DONE, order=order)
                                                             for r in b], True),
        ("JudgeStage.run: find_duplicates over the streamed tasks",
         lambda: find_duplicates(((r["id"], r["text"]) for b in store.iter_records("sample", state=DONE, order=order)
                                  for r in b), dedup), False),
        ("JudgeStage.export: judgments.parquet, feasible.parquet", lambda: JudgeStage().export(run), False),
        ("report: RunData (slim items, aggregates in SQLite)", lambda: RunData(run), True),
        ("spend(store): end-of-run lines, summary.json", lambda: spend(store, PIPELINE), False),
    ]
    tracemalloc.start(int(os.environ.get("LITECODER_BENCH_FRAMES", "1")))
    snapshots = {}
    for label, step, keep in steps:
        gc.collect()
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        vm_hwm_reset()
        rss_before = proc_status(os.getpid()).get("VmHWM", 0)
        result = step()
        current, peak = tracemalloc.get_traced_memory()
        rss_peak = proc_status(os.getpid()).get("VmHWM", 0)
        if keep:
            snapshots[label] = tracemalloc.take_snapshot()
        del result
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
        rise = (peak - before) / 2**20
        print(f"| {label} | {rise:.1f} | {(after - before) / 2**20:.1f} | {(rss_peak - rss_before) / 1024:.1f} | "
              f"{(peak - before) / 1024 / n:.1f} |")
    tracemalloc.stop()
    for label, snap in snapshots.items():
        print()
        print(f"what {label} holds (largest sites):")
        for stat in snap.statistics("lineno")[:top]:
            frame = stat.traceback[0]
            print(f"  {frame.filename}:{frame.lineno}  {stat.size / 2**20:.1f} MiB  {stat.count} blocks")
    store.close()


# -- driver ---------------------------------------------------------------------------------


def command_line(argv: list[str] | None) -> str:
    prefix = f"PYTHONPATH={os.environ['PYTHONPATH']} " if os.environ.get("PYTHONPATH") else ""
    return prefix + " ".join([".venv/bin/python", "bench/memory_rss.py", *(sys.argv[1:] if argv is None else argv)])


def benchmark(args: argparse.Namespace, out: Path, argv: list[str] | None) -> None:
    server = start_stub(args.words)
    try:
        print(f"{describe_source()}; stub model at {server.url}; n={args.n}, max_in_flight={args.concurrency}, "
              f"{args.words} words per task, report={'on' if args.report else 'off'}")
        results: dict[int, list[Measurement]] = {size: [] for size in args.sizes}
        floor = None
        if args.floor and args.sizes:
            floor = run_litecoder(args, server.url, out, "rss-floor", args.floor)
            check(floor)
            print(f"floor ({args.floor} tasks): peak RSS {floor.peak_mb:.1f} MiB, {floor.wall_s:.1f}s")
        order = list(args.sizes)
        for round_ in range(1, args.repeats + 1 if order else 1):
            shift = (round_ - 1) % len(order)
            for size in order[shift:] + order[:shift]:
                m = run_litecoder(args, server.url, out, f"rss-{size}-r{round_}", size)
                check(m)
                results[size].append(m)
                phases = ", ".join(f"{k} {v / 1024:.1f}" for k, v in m.phases.items())
                print(f"round {round_}: {size} tasks: peak RSS {m.peak_mb:.1f} MiB in {m.wall_s:.1f}s "
                      f"({size / m.wall_s:.0f} tasks/s); peak VmRSS by phase, MiB: {phases}")
                for line in m.stage_lines:
                    print(f"    {line}")
        if results:
            report(args, results, floor)
        if args.profile:
            profile(args, server.url, out)
    finally:
        server.__exit__(None, None, None)
    print()
    print(f"reproduce: {command_line(argv)}")


def check(m: Measurement) -> None:
    if m.returncode != 0:
        raise SystemExit(f"litecoder exited {m.returncode} at {m.size} tasks:\n{m.tail}")


def report(args: argparse.Namespace, results: dict[int, list[Measurement]], floor: Measurement | None) -> None:
    peaks = {size: statistics.median(m.peak_mb for m in runs) for size, runs in results.items()}
    walls = {size: statistics.median(m.wall_s for m in runs) for size, runs in results.items()}
    phase_names = ["sample", "judge", "after"]
    print()
    print(f"Peak RSS of `python -m litecoder stage=[sample,judge]` (n={args.n}, max_in_flight={args.concurrency}, "
          f"stub model; median of {args.repeats} run(s)):")
    print()
    print("| tasks | peak RSS MiB | peak while sampling | while judging | after the stages | wall s | tasks/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    if floor is not None:
        cells = " | ".join(f"{floor.phases.get(p, 0) / 1024:.1f}" for p in phase_names)
        print(f"| {floor.size} (floor) | {floor.peak_mb:.1f} | {cells} | {floor.wall_s:.1f} | {floor.size / floor.wall_s:.0f} |")
    for size, runs in results.items():
        phase_peaks = [statistics.median(m.phases.get(p, 0) for m in runs) / 1024 for p in phase_names]
        cells = " | ".join(f"{v:.1f}" for v in phase_peaks)
        print(f"| {size} | **{peaks[size]:.1f}** | {cells} | {walls[size]:.1f} | {size / walls[size]:.0f} |")
    sizes = sorted(peaks)
    if len(sizes) >= 2:
        small, large = sizes[0], sizes[-1]
        ratio = peaks[large] / peaks[small]
        per_task = (peaks[large] - peaks[small]) * 2**20 / (large - small)
        print()
        print(f"peak RSS {large}/{small}: {ratio:.2f}x ({'flat enough' if ratio <= TARGET else 'NOT flat'}: target <= {TARGET}x); "
              f"growth {per_task / 1024:.1f} KiB per task; wall time {large}/{small}: {walls[large] / walls[small]:.2f}x")
        if floor is not None:
            above = [(peaks[s] - floor.peak_mb) for s in (small, large)]
            print(f"above the {floor.size}-task floor ({floor.peak_mb:.1f} MiB): {above[0]:.1f} MiB at {small}, "
                  f"{above[1]:.1f} MiB at {large} ({above[1] / above[0]:.1f}x)" if above[0] > 0 else "")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.census:
        census(args.census, args.top)
        print()
        print(f"reproduce: {command_line(argv)}")
        return 0
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        benchmark(args, args.out.resolve(), argv)
    else:
        with tempfile.TemporaryDirectory(prefix="litecoder-bench-") as tmp:
            benchmark(args, Path(tmp), argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
