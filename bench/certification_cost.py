"""What certification costs per task, relative to preparation alone.

The environment stage runs for real on the Docker engine with a scripted model (the stub
server, in this process): each task's agent makes one file, then hands over a verifier, a
reference solution and its output; certification asks for two wrong solutions, which the
verifier catches, the review passes every criterion, and the cheat trial's agent tries a
hard-coded answer for two turns and gives up (it is caught). Modes, each on the same tasks
in its own run directory:

- ``prepare only``: ``certify.enabled=false``, what the stage did before certification (the
  agent's container, the commit, one check of the start state);
- ``checks repeats=1``: nop, oracle and each wrong solution once, no review, no cheat trial;
- ``checks``: ``certify.repeats=3``, ``certify.wrong_solutions=2`` (the checks before the
  review and the cheat trials existed);
- ``checks + review``: the task review added;
- ``default``: the review and one cheat trial added.

Printed per mode: the stage's wall time, per task the container runs, the model requests and
tokens of certification (the stub counts a word as a token), the seconds of certification
(wall clock, and the check containers' seconds added up), and the ratio of the stage's wall
time to ``prepare only`` measured in the same run.

Usage::

    .venv/bin/python bench/certification_cost.py                 # 4 tasks, 4 containers, 3 rounds
    .venv/bin/python bench/certification_cost.py --tasks 8 --containers 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import docker
import polars as pl
from common import describe_source, run_benchmark
from hydra import compose, initialize_config_dir

from litecoder.cli import setup
from litecoder.run import execute
from litecoder.testing.stub_openai import StubServer, completion_body

CRITERIA = ["complexity_balance", "clarity", "resource_availability", "verifiability", "safety"]
VERIFIER = "#!/bin/bash\ntest \"$(cat /root/out.txt 2>/dev/null)\" = \"$(cat /srv/work/seed.txt)-done\"\n"
SOLUTION = "echo \"$(cat /srv/work/seed.txt)-done\" > /root/out.txt\n"
WRONG = [{"mistake": "forgets the seed", "script": "echo done > /root/out.txt"},
         {"mistake": "creates an empty file", "script": "touch /root/out.txt"}]
OFF = ["certify.review=false", "certify.cheat_trials=0"]
MODES = {"prepare only": ["certify.enabled=false"],
         "checks repeats=1": ["certify.repeats=1", *OFF],
         "checks": OFF,
         "checks + review": ["certify.cheat_trials=0"],
         "default": []}
CHEAT = [{"analysis": "guess", "plan": "write a made-up answer", "task_complete": False,
          "commands": [{"keystrokes": "echo 1234-done > /root/out.txt\n", "duration": 0.2}]},
         {"analysis": "nothing else", "plan": "stop", "commands": [], "task_complete": True}]


class Model:
    """Distinct tasks; the judge accepts; the agent makes one file and hands over its scripts."""

    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()

    def __call__(self, path: str, body: dict):
        if not path.endswith("chat/completions"):
            with self.lock:
                numbers = range(self.count, self.count + int(body.get("n", 1)))
                self.count += len(numbers)
            return 200, completion_body([f"Task {i}: write the seed of /srv/work/seed.txt followed by -done to "
                                         f"/root/out.txt (variant {i * 7919})." for i in numbers]), 0
        system = body["messages"][0]["content"]
        if "task proposals" in system:
            reply = {c: {"rationale": "fine", "score": 5} for c in CRITERIA}
        elif "WRONG solutions" in system:
            reply = {"wrong_solutions": WRONG}
        elif system.startswith("You review Linux exercises"):
            names = [line[2:].split(":", 1)[0] for line in system.splitlines() if line.startswith("- ")]
            reply = {name: {"passed": True, "reason": "the verifier recomputes the expected value"} for name in names}
        elif "red-team exercise" in system:
            reply = CHEAT[min(sum(m["role"] == "assistant" for m in body["messages"]), 1)]
        else:
            ready = any(m["role"] == "assistant" for m in body["messages"])
            reply = {"analysis": "seed", "commands": [] if ready else ["mkdir -p /srv/work && echo $RANDOM > /srv/work/seed.txt"],
                     "verifier": VERIFIER if ready else "", "solution": SOLUTION if ready else "",
                     "outputs": ["/root/out.txt"] if ready else [], "system_state": False, "ready": ready,
                     "give_up": False}
        return 200, completion_body([json.dumps(reply)], chat=True), 0


def run_mode(config_dir: str, url: str, run_dir: Path, args, extra: list[str]) -> dict:
    common = [f"backend.url={url}", f"domain={args.domain}", f"sample.num_tasks={args.tasks}", "sample.n=1",
              "dedup.near=false", f"sandbox.max_containers={args.containers}", "run.report=false"]
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        execute(compose(config_name="config", overrides=["stage=[sample,judge]", *common]), run_dir)
        cfg = compose(config_name="config", overrides=["stage=environment", *common, *extra])
    started = time.perf_counter()
    summary = execute(cfg, run_dir)["environment"]
    wall = time.perf_counter() - started
    rows = pl.read_parquet(run_dir / "environments.parquet").to_dicts()
    for image in [r["image"] for r in rows if r.get("image")]:
        docker.from_env().images.remove(image, force=True)
    certs = [r["certificate"] or {} for r in rows]
    return {"wall": wall, "ready": summary.get("ready", 0), "tasks": len(rows),
            "runs": statistics.mean(c.get("container_runs") or 1 for c in certs),
            "requests": statistics.mean(
                bool(c) + bool(c.get("review")) + sum(t["turns"] for t in c.get("cheats") or []) for c in certs),
            "tokens": statistics.mean(r["prompt_tokens"] + r["completion_tokens"] for r in rows),
            "cert_wall": statistics.mean(c.get("wall_s") or 0.0 for c in certs),
            "check_s": statistics.mean(c.get("seconds") or 0.0 for c in certs),
            "task_wall": statistics.mean(r["wall_s"] for r in rows)}


def benchmark(args, out: Path) -> None:
    config_dir = setup()
    names = list(MODES)
    results: dict[str, list[dict]] = {name: [] for name in names}
    with StubServer(Model()) as server:
        print(f"{describe_source()}; {args.tasks} tasks, domain {args.domain}, sandbox.max_containers="
              f"{args.containers}, {args.rounds} rounds in rotated order after a warm-up; stub model at {server.url}")
        run_mode(config_dir, server.url, out / "warm-up", args, MODES["prepare only"])  # image, proxy, first imports
        for round_no in range(args.rounds):
            for name in names[round_no % len(names):] + names[:round_no % len(names)]:
                run_dir = out / f"r{round_no}-{names.index(name)}"
                results[name].append(run_mode(config_dir, server.url, run_dir, args, MODES[name]))
    median = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in results.items()}
    base = median["prepare only"]["wall"]
    print(f"{'mode':<18}{'ready':>7}{'stage s':>9}{'vs prep':>9}{'runs/task':>11}{'req/task':>10}{'tok/task':>10}"
          f"{'task s':>8}{'cert s/task':>13}{'check s/task':>14}")
    for name, r in median.items():
        print(f"{name:<18}{r['ready']:>4.0f}/{r['tasks']:<2.0f}{r['wall']:>9.1f}{r['wall'] / base:>8.2f}x{r['runs']:>11.1f}"
              f"{r['requests']:>10.1f}{r['tokens']:>10.0f}{r['task_wall']:>8.1f}{r['cert_wall']:>13.1f}{r['check_s']:>14.1f}")
    print("medians over the rounds. runs/task: containers per task after preparation (prepare only: its one "
          "check); req/task: certification's model requests (wrong solutions, review, cheat-trial turns); "
          "tok/task: the stage's tokens per task (stub: words); task s: one task's wall time; cert s/task: "
          "certification's wall time; check s/task: its containers' seconds added up")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--containers", type=int, default=4, help="sandbox.max_containers")
    parser.add_argument("--domain", default="version_control")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    return run_benchmark("certification_cost", parser.parse_args(argv), benchmark)


if __name__ == "__main__":
    sys.exit(main())
