"""The Docker sandbox on a real engine: limits, files, snapshots, hygiene, hostile commands."""

from __future__ import annotations

import subprocess
import threading
import time

import pytest
from omegaconf import OmegaConf

from litecoder.config import register_configs
from litecoder.plugins import get_plugins
from litecoder.sandboxes.docker import DockerSandbox, DockerSandboxConfig
from litecoder.sandboxes.names import LABEL_RUN, run_id

pytestmark = pytest.mark.docker


def sandbox_config(**overrides):
    register_configs()
    return OmegaConf.merge(OmegaConf.structured(DockerSandboxConfig), overrides)


@pytest.fixture(scope="module")
def base_image():
    """The default base image, built by the debootstrap builder if it is missing."""
    sandbox = DockerSandbox(sandbox_config(), "litecoder-test-image")
    try:
        image = sandbox.ensure_image(get_plugins().registry("image_builder"))
    finally:
        sandbox.close()
    return image


@pytest.fixture
def sandbox(base_image, request):
    box = DockerSandbox(sandbox_config(max_containers=3, pids_limit=128, memory="256m", max_file_bytes=64 << 20,
                                       max_disk_bytes=256 << 20, max_output_bytes=2000), f"test-{request.node.name[:40]}")
    yield box
    box.close()
    assert leftovers(box.run_id) == []


def leftovers(run: str) -> list[str]:
    out = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={LABEL_RUN}={run}"], capture_output=True, text=True)
    return out.stdout.split()


def test_the_base_image_has_the_tools_tasks_need(sandbox):
    session = sandbox.open("tools")
    result = session.exec("for t in bash git python3 tmux ps curl; do command -v $t; done; ls /sys/class/net", timeout=30)
    assert result.ok, result.output
    for tool in ("bash", "git", "python3", "tmux", "ps", "curl"):
        assert f"/{tool}" in result.output
    assert result.output.strip().splitlines()[-1] == "lo"  # no network but loopback
    session.remove()


def test_files_in_and_out_and_a_snapshot_keeps_the_state(sandbox):
    session = sandbox.open("snap")
    session.write_files({"/srv/data/hello.txt": "hi there\n"})
    assert session.exec("git init -q /srv/repo && cd /srv/repo && git config user.email a@b && git config user.name a "
                        "&& cp /srv/data/hello.txt . && git add . && git commit -qm first && git log --oneline | wc -l",
                        timeout=30).output.strip() == "1"
    assert session.read_file("/srv/data/hello.txt") == b"hi there\n"
    image = session.snapshot("litecoder-test-snapshot", "v1")
    session.remove()
    again = sandbox.open("snap-again", image=image)
    assert again.exec("cd /srv/repo && git log --format=%s", timeout=30).output.strip() == "first"
    again.remove()
    subprocess.run(["docker", "rmi", "-f", image], capture_output=True)


def test_output_is_capped_keeping_head_and_tail(sandbox):
    session = sandbox.open("flood")
    result = session.exec("echo FIRST; seq 1 200000; echo LAST", timeout=30)
    assert result.ok and result.cut_bytes > 0
    assert result.output.startswith("FIRST") and result.output.rstrip().endswith("LAST")
    assert f"[... {result.cut_bytes} bytes of output cut ...]" in result.output
    assert len(result.output) < 2200
    session.remove()


@pytest.mark.parametrize(
    "name, command, expect",
    [
        ("fork-bomb", "bomb() { bomb | bomb; }; bomb", "stopped"),
        ("background-fork-bomb", "bomb() { bomb | bomb & }; bomb", "no-strays"),
        ("endless-loop", "while true; do :; done", "stopped"),
        ("fill-disk", "dd if=/dev/zero of=/big bs=1M count=100000", "exit"),
        ("rm-rf-root", "rm -rf --no-preserve-root / 2>/dev/null; ls /", "exit"),
        ("memory-hog", "python3 -c 'x = bytearray(1 << 30)'", "exit"),
        ("network-call", "cat /sys/class/net/*/operstate; python3 -c 'import socket; print(socket.gethostbyname(\"localhost\"))'", "ok"),
    ],
)
def test_hostile_commands_stay_inside_their_limits(sandbox, name, command, expect):
    witness = sandbox.open(f"witness-{name}")
    victim = sandbox.open(f"hostile-{name}")
    started = time.monotonic()
    result = victim.exec(command, timeout=8)
    assert time.monotonic() - started < 60
    if expect == "stopped":
        assert result.timed_out and "[command stopped after 8s]" in result.output
    elif expect == "no-strays":
        count = victim.exec("ps -e --no-headers | wc -l", timeout=30).output.strip()
        assert int(count) < 10, count  # the bomb's processes died with its command
    elif expect == "exit":
        assert not result.ok, result.output
    else:
        assert "127.0.0.1" in result.output
    # The host and the other container are unaffected.
    assert witness.exec("echo alive && ls /root >/dev/null", timeout=30).output.strip() == "alive"
    assert subprocess.run(["true"]).returncode == 0
    victim.remove()
    witness.remove()


def test_containers_are_bounded_and_a_new_start_cleans_up(base_image):
    config = sandbox_config(max_containers=2)
    box = DockerSandbox(config, "test-bounded")
    first, second = box.open("a"), box.open("b")
    opened = threading.Event()
    threading.Thread(target=lambda: (box.open("c"), opened.set()), daemon=True).start()
    assert not opened.wait(2)  # the third waits for a slot
    first.remove()
    assert opened.wait(30)
    # A new sandbox for the same run (a restart after a kill) removes what was left.
    assert len(leftovers("test-bounded")) == 2
    again = DockerSandbox(config, "test-bounded")
    assert leftovers("test-bounded") == []
    again.close()
    box.client.close()


def test_runs_of_one_name_in_two_roots_keep_their_containers(base_image, tmp_path):
    """A run's start and end remove its own containers, not those of a run named alike elsewhere."""
    first = DockerSandbox(sandbox_config(), run_id(tmp_path / "a" / "same"))
    try:
        session = first.open("a")
        second = DockerSandbox(sandbox_config(), run_id(tmp_path / "b" / "same"))
        second.close()
        assert leftovers(first.run_id) == [session.id[:12]]
    finally:
        first.close()
    assert leftovers(first.run_id) == []


def test_no_engine_is_one_clear_error(monkeypatch):
    from litecoder.sandboxes.base import SandboxError

    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(SandboxError, match="no Docker engine is reachable.*scripts/setup.sh"):
        DockerSandbox(sandbox_config(), "no-engine")


def test_the_debootstrap_builder_makes_an_image_offline():
    """Always exercised, even where the default base image already exists."""
    import docker

    config = sandbox_config(image="litecoder-test-minimal:latest", packages=["bash", "coreutils", "git"])
    client = docker.from_env()
    subprocess.run(["docker", "rmi", "-f", config.image], capture_output=True)
    try:
        image_id = get_plugins().registry("image_builder").get("debootstrap")(config, client)
        out = client.containers.run(image_id, ["git", "--version"], remove=True, network_mode="none")
        assert out.decode().startswith("git version")
    finally:
        subprocess.run(["docker", "rmi", "-f", config.image], capture_output=True)
        client.close()


def test_disk_use_beyond_the_limit_is_reported(base_image):
    """Files under max_file_bytes each, but together over max_disk_bytes: the command fails with a note."""
    box = DockerSandbox(sandbox_config(max_file_bytes=64 << 20, max_disk_bytes=8 << 20), "test-disk-use")
    try:
        session = box.open("disk")
        small = session.exec("dd if=/dev/zero of=/small bs=1M count=2 status=none", timeout=60)
        assert small.exit_code == 0 and "max_disk_bytes" not in small.output
        assert 2 << 20 <= session.disk_usage() < 8 << 20
        big = session.exec("dd if=/dev/zero of=/big bs=1M count=16 status=none", timeout=60)
        assert big.exit_code != 0
        assert "exceeds sandbox.max_disk_bytes=8388608" in big.output
    finally:
        box.close()
    assert leftovers("test-disk-use") == []
