"""Build time of a domain's toolchain image: cold, from the layer cache, and reused.

- ``cold``: the build with Docker's layer cache off (``nocache``): every package is fetched
  from the registries and installed, as on a machine that never built it;
- ``layer cache``: the image is removed and built again, with the engine's layer cache;
- ``reused``: ``stage=image``'s path when the image and its manifest exist (a lookup).

Rounds alternate the three; medians and the ratios to ``cold`` are printed. Images made here
are removed at the end (the domain's own tagged image is left as it was).

Usage::

    .venv/bin/python bench/toolchain_image.py                       # build_tools, 2 rounds
    .venv/bin/python bench/toolchain_image.py --domain ai_ml --rounds 3
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
from litecoder.sandboxes.docker import docker_client
from litecoder.sandboxes.toolchain import build_toolchain_image, ensure_toolchain_image, image_name


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def benchmark(args, out: Path) -> None:
    with initialize_config_dir(config_dir=setup(), version_base=None):
        cfg = compose(config_name="config", overrides=[f"domain={args.domain}"])
    client = docker_client()
    base = cfg.sandbox.image
    base_id = client.images.get(base).id
    toolchain = cfg.domain.toolchain
    probe = image_name(f"bench-{args.domain}", base_id, toolchain)
    figures: dict[str, list[float]] = {"cold": [], "layer cache": [], "reused": []}
    print(f"{describe_source()}; domain {args.domain}; base {base} ({base_id[:19]})")
    try:
        for round_no in range(args.rounds):
            client.images.remove(probe, force=True) if client.images.list(name=probe) else None
            figures["cold"].append(timed(lambda: build_toolchain_image(client, probe, base, toolchain, 3600, nocache=True)))
            client.images.remove(probe, force=True)
            figures["layer cache"].append(timed(lambda: build_toolchain_image(client, probe, base, toolchain, 3600)))
            ensure_toolchain_image(client, args.domain, base, base_id, toolchain)  # the manifest exists after
            figures["reused"].append(timed(lambda: ensure_toolchain_image(client, args.domain, base, base_id, toolchain)))
            print(f"round {round_no + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in figures.items()), flush=True)
    finally:
        if client.images.list(name=probe):
            client.images.remove(probe, force=True)
    cold = statistics.median(figures["cold"])
    for name, values in figures.items():
        median = statistics.median(values)
        print(f"{name:>12}: median {median:8.2f} s  ({median / cold:.3f}x cold)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domain", default="build_tools")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    return run_benchmark("toolchain_image", parser.parse_args(), benchmark)


if __name__ == "__main__":
    sys.exit(main())
