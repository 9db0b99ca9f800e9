"""Harbor itself (``litecoder.testing.harbor``) runs hand-made tasks with its oracle agent on
the real Docker engine: a solved task scores 1.0, an unsolved one 0.0, so the check can fail."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from litecoder.testing.harbor import parse_task_toml, run_oracle

pytestmark = pytest.mark.harbor
BASE_IMAGE = "litecoder-base:bookworm"

TASK_TOML = """schema_version = "1.4"

[task]
name = "litecoder/{name}"

[verifier]
timeout_sec = 120

[agent]
timeout_sec = 120

[environment]
build_timeout_sec = 600
cpus = {cpus}
memory_mb = 2048
storage_mb = 4096
network_mode = "no-network"
"""

TEST_SH = """#!/bin/bash
mkdir -p /logs/verifier
if [ -f /root/done ]; then echo 1 > /logs/verifier/reward.txt; else echo 0 > /logs/verifier/reward.txt; fi
"""


@pytest.fixture(scope="module")
def base_image() -> str:
    """The project's sandbox base image the tasks build FROM, made by its builder if missing
    (the check comes first, as in ``ensure_base_image``, so a present image costs no imports)."""
    import docker

    client = docker.from_env()
    try:
        client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        from litecoder.config import register_configs
        from litecoder.plugins import get_plugins
        from litecoder.sandboxes.docker import DockerSandboxConfig
        from litecoder.sandboxes.base_image import ensure_base_image

        register_configs()
        config = OmegaConf.structured(DockerSandboxConfig)
        assert config.image == BASE_IMAGE, "the tasks below build FROM the default base image"
        ensure_base_image(config, client, get_plugins().registry("image_builder"))
    finally:
        client.close()
    return BASE_IMAGE


def make_task(root: Path, name: str, solve: str, base_image: str, cpus: str = "1") -> Path:
    task = root / name
    files = {
        "task.toml": TASK_TOML.format(name=name, cpus=cpus),
        "instruction.md": "Create the file /root/done.\n",
        "environment/Dockerfile": f"FROM {base_image}\nWORKDIR /root\n",
        "tests/test.sh": TEST_SH,
        "solution/solve.sh": f"#!/bin/bash\n{solve}\n",
    }
    for relative, text in files.items():
        path = task / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if relative.endswith(".sh"):
            path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return task


@pytest.mark.docker
def test_oracle_scores_a_solved_task_1_and_an_unsolved_one_0(tmp_path, base_image):
    tasks = tmp_path / "tasks"
    make_task(tasks, "handmade", "touch /root/done", base_image)
    make_task(tasks, "handmade-unsolved", "true  # does nothing", base_image)
    rewards = run_oracle(tasks, tmp_path / "jobs", "oracle")
    assert rewards == {"handmade": 1.0, "handmade-unsolved": 0.0}
    # the originals keep their network_mode; only Harbor's staging copies were relaxed
    assert 'network_mode = "no-network"' in (tasks / "handmade" / "task.toml").read_text()
    job = json.loads((tmp_path / "jobs" / "oracle" / "result.json").read_text())
    assert job["stats"]["evals"], job


def test_harbor_parses_the_task_toml_and_rejects_a_bad_one(tmp_path):
    good = make_task(tmp_path, "handmade", "touch /root/done", BASE_IMAGE)
    config = parse_task_toml(good / "task.toml")
    assert config["task"]["name"] == "litecoder/handmade"
    assert config["environment"]["network_mode"] == "no-network" and config["environment"]["cpus"] == 1
    bad = make_task(tmp_path, "bad", "true", BASE_IMAGE, cpus='"x"')
    with pytest.raises(ValueError, match="cpus"):
        parse_task_toml(bad / "task.toml")
