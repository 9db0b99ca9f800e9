"""Preparing an environment from a cached toolchain image, against plain Docker calls.

The model's turns are left out: both sides run the same short command that makes a file, as
an environment agent's command would. Per round and method:

- ``litecoder``: what ``stage=environment`` does around the agent's commands, through
  ``DockerSandbox``: open a container from the run's image (the domain's toolchain image,
  reused) on the chosen network, record the installed packages, run the command, record
  them again with the files they own, commit, ``docker diff``, remove, then one container
  from the commit for the verifier (no network);
- ``docker-py``: the same container work with the raw SDK: ``containers.run`` of the same
  image, ``exec_run`` of the command, commit, diff, remove, and the verifier's container;
  once with no network, and once on the default bridge, as a plain ``docker run`` has
  (joining a network costs the engine about 0.4 s per container).

``--network`` chooses the litecoder side's network (``none`` or ``registries``; the proxy is
started once, before the rounds, as a run does once). Methods alternate in rotated order;
medians, p90 and the ratios of medians are printed. Target: litecoder at most 1.2x of a
plain ``docker run``.

Usage::

    .venv/bin/python bench/environment_prep.py                          # build_tools, 8 rounds
    .venv/bin/python bench/environment_prep.py --domain data_science --network none --rounds 12
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from common import describe_source, run_benchmark
from hydra import compose, initialize_config_dir

from litecoder.cli import setup
from litecoder.plugins import get_plugins
from litecoder.sandboxes import packages
from litecoder.sandboxes.docker import KEEPALIVE, DockerSandbox

COMMAND = "mkdir -p /root/project && printf 'all:\\n\\techo ok\\n' > /root/project/Makefile"
VERIFIER = "test -f /root/project/done"


def with_litecoder(sandbox: DockerSandbox, network: str, tag: str, baseline: dict) -> None:
    session = sandbox.open("bench", network=network)
    try:
        if "packages" not in baseline:
            baseline["packages"] = packages.snapshot(session)
        before = baseline["packages"]
        session.exec(COMMAND, timeout=60)
        added = packages.installed(before, packages.snapshot(session))
        owned = packages.owned_paths(session, added)
        image_id = session.snapshot("litecoder-bench-prep", tag)
        packages.without_package_files(session.changes(), owned)
    finally:
        session.remove()
    verify = sandbox.open("bench-verify", image=image_id, network="none")
    try:
        verify.exec(VERIFIER, timeout=60)
    finally:
        verify.remove()


def with_docker_py(client, image: str, tag: str, network: str) -> None:
    container = client.containers.run(image, KEEPALIVE, detach=True, init=True, network_mode=network)
    try:
        container.exec_run(["bash", "-c", COMMAND])
        committed = container.commit(repository="litecoder-bench-prep", tag=tag)
        container.diff()
    finally:
        container.remove(force=True)
    verify = client.containers.run(committed.id, KEEPALIVE, detach=True, init=True, network_mode=network)
    try:
        verify.exec_run(["bash", "-c", VERIFIER])
    finally:
        verify.remove(force=True)


def benchmark(args, out: Path) -> None:
    with initialize_config_dir(config_dir=setup(), version_base=None):
        cfg = compose(config_name="config", overrides=[f"domain={args.domain}"])
    sandbox = DockerSandbox(cfg.sandbox, "bench-environment-prep")
    try:
        started = time.perf_counter()
        toolchain = {"name": args.domain, **dict(cfg.domain.toolchain)}
        image = sandbox.ensure_image(get_plugins().registry("image_builder"), toolchain)
        print(f"{describe_source()}; domain {args.domain}; image {image} "
              f"({'reused' if sandbox.image_reused else 'built'} in {time.perf_counter() - started:.1f} s)")
        started = time.perf_counter()
        sandbox.network_for(args.network)  # the run's proxy starts once
        print(f"network {args.network} ready in {time.perf_counter() - started:.2f} s")
        baseline: dict = {}  # the stage takes the packages of a pristine container once per image
        methods = {"litecoder": lambda tag: with_litecoder(sandbox, args.network, tag, baseline),
                   "docker-py": lambda tag: with_docker_py(sandbox.client, image, tag, "none"),
                   "docker-py bridge": lambda tag: with_docker_py(sandbox.client, image, tag, "bridge")}
        times: dict[str, list[float]] = {name: [] for name in methods}
        for round_no in range(args.rounds):
            order = list(methods)[round_no % 3:] + list(methods)[:round_no % 3]
            for name in order:
                tag = f"{name.replace('-', '').replace(' ', '')}-{round_no}"
                started = time.perf_counter()
                methods[name](tag)
                times[name].append(time.perf_counter() - started)
                sandbox.remove_image(f"litecoder-bench-prep:{tag}")
        report(times)
    finally:
        sandbox.close()


def report(times: dict[str, list[float]]) -> None:
    base = statistics.median(times["docker-py"])
    bridge = statistics.median(times["docker-py bridge"])
    print(f"{'method':<18}{'median s':>10}{'p90 s':>10}{'vs none':>9}{'vs bridge':>11}")
    for name, values in times.items():
        p90 = sorted(values)[max(0, int(len(values) * 0.9) - 1)]
        median = statistics.median(values)
        print(f"{name:<18}{median:>10.3f}{p90:>10.3f}{median / base:>8.2f}x{median / bridge:>10.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domain", default="build_tools")
    parser.add_argument("--network", default="registries", choices=["none", "registries"])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--out", type=Path, default=None)
    return run_benchmark("environment_prep", parser.parse_args(argv), benchmark)


if __name__ == "__main__":
    sys.exit(main())
