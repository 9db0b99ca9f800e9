"""Overhead of litecoder's Docker sandbox: command latency, and containers per minute.

**Exec latency.** One container is opened from the run's base image the way the stages open
one (``DockerSandbox.open``: no network, CPU/memory/pids/fsize limits, ``init``). The same
short command then runs ``--execs`` times in each round through each of:

- ``litecoder``: ``DockerSession.exec`` (bash ``RUNNER`` wrapper with its own process group
  and watchdog, an output-pumping thread, ``exec_inspect``, the cgroup ``pids.events`` read
  and the disk check, see below);
- ``docker CLI``: ``docker exec <container> sh -c CMD`` as a subprocess;
- ``docker-py``: ``container.exec_run(["sh", "-c", CMD])``, the raw SDK.

Two more rows split litecoder's figure into its parts (same container, same rounds):
``sdk+runner`` is ``exec_run`` of litecoder's bash wrapper alone, and ``size inspect`` is a
container inspect with ``?size=1``, the per-container form of the size request behind
``sandbox.max_disk_bytes``. (Up to 651869b, ``DockerSession.disk_usage`` called docker-py 7's
``inspect_container(id, size=True)``, which raises TypeError and was swallowed, so no size
request was made and the limit was not enforced; 175d050 asks the container list instead.) The order of the methods rotates every round, so
drift on a noisy machine hits all alike; medians and p90 over all calls, and ratios of
medians, are printed.

**Containers per minute.** ``stage=environment`` runs on tasks accepted by ``stage=[sample,
judge]`` against a scripted stub model (``litecoder.testing.stub_openai``): the environment
agent writes a small file in one turn and declares the state ready in the next with a
verifier that reports "not solved". Each task therefore costs one container for the agent,
a commit, a ``docker diff`` and one container for the verifier. The sample+judge run is done
once; for each ``sandbox.max_containers=N`` a copy of its directory runs the environment
stage (timed around ``execute`` only). N values alternate in rotated order over
``--rounds`` rounds; printed are environments ready per minute, containers per minute, and
the speed-up over N=1 (ratio of medians).

Usage::

    .venv/bin/python bench/sandbox_overhead.py                         # both parts
    .venv/bin/python bench/sandbox_overhead.py --part exec --execs 100 --rounds 5
    .venv/bin/python bench/sandbox_overhead.py --part stage --tasks 16 --parallel 1 2 4 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio  # noqa: F401 - the stage uses it; imported early so timings exclude it
import contextlib
import io
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf

import common
from litecoder.cli import setup
from litecoder.config import register_configs
from litecoder.plugins import get_plugins
from litecoder.run import execute
from litecoder.sandboxes.docker import RUNNER, DockerSandbox, DockerSandboxConfig
from litecoder.sandboxes.names import LABEL_RUN, run_id
from litecoder.testing.stub_openai import StubServer, completion_body

COMMANDS = {"true": "true", "cat": "cat /etc/os-release"}
CRITERIA = ["complexity_balance", "clarity", "resource_availability", "verifiability", "safety"]
ACCEPT = json.dumps({c: {"rationale": "fine", "score": 5} for c in CRITERIA})
SETUP = ["mkdir -p /srv/app && printf 'port = 8080\\n' > /srv/app/settings.ini && ls -l /srv/app"]
VERIFIER = "#!/bin/bash\ngrep -q '^port = 9090$' /srv/app/settings.ini\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("exec", "stage", "both"), default="both", help="what to measure (default: %(default)s)")
    p.add_argument("--execs", type=int, default=50, help="exec latency: calls per method per round (default: %(default)s)")
    p.add_argument("--tasks", type=int, default=12, help="containers per minute: accepted tasks (default: %(default)s)")
    p.add_argument("--parallel", type=int, nargs="+", default=[1, 2, 4], help="sandbox.max_containers values (default: 1 2 4)")
    p.add_argument("--rounds", type=int, default=3, help="rounds per part, method/N order rotated (default: %(default)s)")
    p.add_argument("--out", type=Path, help="directory for run outputs (default: a temporary directory, removed afterwards)")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.execs < 1 or args.tasks < 1:
        p.error("--rounds, --execs and --tasks must be >= 1")
    if 1 not in args.parallel:
        args.parallel = [1, *args.parallel]  # the speed-up is relative to N=1
    return args


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[-1] if len(values) > 1 else values[0]


def sandbox_config(**overrides) -> DictConfig:
    register_configs()
    return OmegaConf.merge(OmegaConf.structured(DockerSandboxConfig), overrides)


# -- exec latency ---------------------------------------------------------------------------


def exec_methods(sandbox: DockerSandbox, session, command: str) -> dict[str, Callable[[], None]]:
    container, api, cid = session.container, sandbox.client.api, session.id

    def litecoder() -> None:
        result = session.exec(command, timeout=30)
        assert result.exit_code == 0, result.output

    def cli() -> None:
        subprocess.run(["docker", "exec", cid, "sh", "-c", command], check=True, capture_output=True)

    def sdk() -> None:
        code, output = container.exec_run(["sh", "-c", command])
        assert code == 0, output

    def sdk_runner() -> None:
        code, output = container.exec_run(["bash", "-c", RUNNER, "litecoder", command, "30"], workdir="/root")
        assert code == 0, output

    def size_inspect() -> None:
        # the size request of the disk check, per container (docker-py 7's inspect_container()
        # takes no ``size``; see the docstring)
        api._result(api._get(api._url("/containers/{0}/json", cid), params={"size": 1}), True)

    return {"litecoder": litecoder, "docker CLI": cli, "docker-py": sdk, "sdk+runner": sdk_runner, "size inspect": size_inspect}


COMPARED = ("litecoder", "docker CLI", "docker-py")


def bench_exec(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    sandbox = DockerSandbox(sandbox_config(), "bench-sandbox-overhead")
    results: dict[str, dict[str, list[float]]] = {}
    try:
        image = sandbox.ensure_image(get_plugins().registry("image_builder"))
        session = sandbox.open("exec-latency")
        print(f"exec latency: container {session.id[:12]} from {sandbox.config.image} ({image[:19]}), "
              f"{args.execs} calls per method per round, {args.rounds} rounds")
        for name, command in COMMANDS.items():
            methods = exec_methods(sandbox, session, command)
            for method in methods.values():  # warm-up: connections, page cache, bash
                for _ in range(3):
                    method()
            times: dict[str, list[float]] = {m: [] for m in methods}
            order = list(methods)
            for round_ in range(1, args.rounds + 1):
                shift = (round_ - 1) % len(order)
                rotated = order[shift:] + order[:shift]
                medians = []
                for method in rotated:
                    call = methods[method]
                    this_round = []
                    for _ in range(args.execs):
                        started = time.perf_counter()
                        call()
                        this_round.append((time.perf_counter() - started) * 1000)
                    times[method] += this_round
                    medians.append(f"{method} {statistics.median(this_round):.1f}")
                print(f"  `{command}` round {round_}: median ms: " + ", ".join(medians))
            results[command] = times
        session.remove()
    finally:
        sandbox.close()
    return results


def report_exec(args: argparse.Namespace, results: dict[str, dict[str, list[float]]]) -> None:
    print()
    print(f"Exec latency, ms per call ({args.execs} calls x {args.rounds} rounds per method; "
          "ratio = litecoder median / method median):")
    print()
    print("| command | method | median ms | p90 ms | litecoder / method |")
    print("|---|---|---:|---:|---:|")
    for command, times in results.items():
        lite = statistics.median(times["litecoder"])
        for method, values in times.items():
            median = statistics.median(values)
            ratio = f"{lite / median:.2f}x" if method in COMPARED[1:] else ""
            print(f"| `{command}` | {method} | {median:.1f} | {p90(values):.1f} | {ratio} |")
    print()
    for command, times in results.items():
        lite = statistics.median(times["litecoder"])
        runner, size = statistics.median(times["sdk+runner"]), statistics.median(times["size inspect"])
        print(f"`{command}`: litecoder {lite:.1f} ms = {lite / statistics.median(times['docker CLI']):.2f}x docker CLI, "
              f"{lite / statistics.median(times['docker-py']):.2f}x docker-py; the bash wrapper alone (sdk+runner) "
              f"{runner:.1f} ms, so {lite - runner:.1f} ms is litecoder's own work around it (exec_create/start/inspect, "
              f"reader thread, pids.events); a size request (the disk check) costs about {size:.1f} ms")


# -- containers per minute through the environment stage -------------------------------------


class Model:
    """Distinct task texts for sampling, an accepting judge, and a two-turn environment agent."""

    def __init__(self) -> None:
        self.counter = itertools.count()
        self.lock = threading.Lock()

    def __call__(self, path: str, body: dict):
        if not path.endswith("chat/completions"):
            with self.lock:
                numbers = [next(self.counter) for _ in range(int(body.get("n", 1)))]
            texts = [f"Exercise {i}: change the port in /srv/app/settings.ini from 8080 to 9090." for i in numbers]
            return 200, completion_body(texts), 0
        system = body["messages"][0]["content"]
        if "task proposals" in system:
            return 200, completion_body([ACCEPT], chat=True), 0
        turn = sum(1 for m in body["messages"] if m["role"] == "assistant")
        if turn == 0:
            reply = {"analysis": "write the settings file", "commands": SETUP, "verifier": "", "solution": "",
                     "outputs": [], "system_state": False, "ready": False, "give_up": False}
        else:
            reply = {"analysis": "ready", "commands": [], "verifier": VERIFIER, "solution": "true", "outputs": [],
                     "system_state": True, "ready": True, "give_up": False}
        return 200, completion_body([json.dumps(reply)], chat=True), 0


def compose(*overrides: str) -> DictConfig:
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=setup(), version_base=None):
        return hydra_compose(config_name="config", overrides=list(overrides))


def quiet_execute(cfg: DictConfig, run_dir: Path) -> dict:
    """``execute`` with litecoder's end-of-run lines kept off the benchmark's output (shown on errors)."""
    lines = io.StringIO()
    try:
        with contextlib.redirect_stderr(lines):
            return execute(cfg, run_dir)
    except BaseException:
        sys.stderr.write(lines.getvalue())
        raise


def remove_images(run: str) -> None:
    out = subprocess.run(["docker", "images", "-q", "--filter", f"label={LABEL_RUN}={run}"], capture_output=True, text=True)
    ids = sorted(set(out.stdout.split()))
    if ids:
        subprocess.run(["docker", "rmi", "-f", *ids], capture_output=True)


def bench_stage(args: argparse.Namespace, out: Path) -> dict[int, list[tuple[int, float]]]:
    model = Model()
    results: dict[int, list[tuple[int, float]]] = {n: [] for n in args.parallel}
    with StubServer(model) as server:
        base = [f"backend.url={server.url}", "backend.retry_initial_wait=0.01", "run.progress=false", "run.report=false",
                "dedup.near=false"]
        template = out / "judged"
        summary = quiet_execute(compose("stage=[sample,judge]", *base, f"sample.num_tasks={args.tasks}", "sample.n=4"), template)
        accepted = summary["judge"].get("accepted", 0)
        print(f"containers per minute: {accepted} accepted tasks (stub model at {server.url}); "
              f"sandbox.max_containers in {args.parallel}, {args.rounds} rounds")
        if accepted != args.tasks:
            raise SystemExit(f"expected {args.tasks} accepted tasks, got {summary['judge']}")
        order = list(args.parallel)
        for round_ in range(1, args.rounds + 1):
            shift = (round_ - 1) % len(order)
            line = []
            for n in order[shift:] + order[:shift]:
                run_dir = out / f"env-n{n}-r{round_}"
                shutil.copytree(template, run_dir)
                cfg = compose("stage=environment", *base, f"sandbox.max_containers={n}")
                started = time.perf_counter()
                try:
                    env = quiet_execute(cfg, run_dir)["environment"]
                finally:
                    wall = time.perf_counter() - started
                    remove_images(run_id(run_dir))
                ready = int(env.get("ready", 0))
                if ready != accepted:
                    print(f"warning: N={n} round {round_}: {env}", file=sys.stderr)
                results[n].append((ready, wall))
                line.append(f"N={n} {ready} ready in {wall:.1f}s = {ready / wall * 60:.1f}/min")
            print(f"  round {round_}: " + "; ".join(line))
    return results


def report_stage(args: argparse.Namespace, results: dict[int, list[tuple[int, float]]]) -> None:
    per_min = {n: [ready / wall * 60 for ready, wall in runs] for n, runs in results.items()}
    base = statistics.median(per_min[1])
    print()
    print(f"Environment stage, {args.tasks} tasks (2 containers each: the agent's and the verifier's; "
          f"environments ready per minute, median of {args.rounds} rounds):")
    print()
    print("| sandbox.max_containers | " + " | ".join(f"round {i}" for i in range(1, args.rounds + 1))
          + " | **median** | containers/min | speed-up vs N=1 | speed-up within each round |")
    print("|---:|" + "---:|" * args.rounds + "---:|---:|---:|---:|")
    for n, values in per_min.items():
        median = statistics.median(values)
        within = " / ".join(f"{v / b:.2f}x" for v, b in zip(values, per_min[1]))
        print(f"| {n} | " + " | ".join(f"{v:.1f}" for v in values)
              + f" | **{median:.1f}** | {2 * median:.1f} | {median / base:.2f}x | {within} |")
    print()
    walls = {n: statistics.median(wall for _, wall in runs) for n, runs in results.items()}
    print("median wall time per task (s): " + ", ".join(f"N={n} {walls[n] / args.tasks:.2f}" for n in walls))


# -- driver ---------------------------------------------------------------------------------


def describe_source() -> str:
    engine = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"], capture_output=True, text=True).stdout.strip()
    return f"{common.describe_source()}; Docker engine {engine or '?'}; {os.cpu_count()} CPUs"


def command_line(argv: list[str] | None) -> str:
    prefix = f"PYTHONPATH={os.environ['PYTHONPATH']} " if os.environ.get("PYTHONPATH") else ""
    return prefix + " ".join([".venv/bin/python", "bench/sandbox_overhead.py", *(sys.argv[1:] if argv is None else argv)])


def benchmark(args: argparse.Namespace, out: Path, argv: list[str] | None) -> None:
    exec_results = stage_results = None
    print(describe_source())
    if args.part in ("exec", "both"):
        exec_results = bench_exec(args)
    if args.part in ("stage", "both"):
        stage_results = bench_stage(args, out)
    if exec_results:
        report_exec(args, exec_results)
    if stage_results:
        report_stage(args, stage_results)
    print()
    print(f"reproduce: {command_line(argv)}")


def main(argv: list[str] | None = None) -> int:
    return common.run_benchmark("sandbox_overhead", parse_args(argv), lambda args, out: benchmark(args, out, argv))

if __name__ == "__main__":
    sys.exit(main())
