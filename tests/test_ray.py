"""executor=ray on a real local Ray cluster (a head node and a second node started with
`ray start`, workers as separate processes, each node with its own Docker engine): sample and
judge over two endpoints, a killed worker and a killed driver with exact counts after resume,
and containers spread over both Docker nodes, with images copied from node to node."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import polars as pl
import pytest

from litecoder.backends.vllm import free_port
from litecoder.sandboxes.names import LABEL_RUN, run_id
from litecoder.store import RunStore

from .conftest import run_cli
from .stub_openai import StubServer, completion_body
from .test_environment_stage import Scripted, kill_while_working_then_resume, leftovers, step
from .test_judge_stage import FAST, scores
from .test_trajectory_stage import remove_images, run_pipeline, solving_teacher
from .test_vllm import JUDGE_FAST

RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture(scope="module")
def second_engine(tmp_path_factory):
    """A second Docker engine on this machine, as a second node would have: its own dockerd,
    data, socket and network namespace (no bridge: sandboxes run offline), with the base image
    loaded."""
    import docker

    from litecoder.sandboxes.docker import DockerSandboxConfig

    bridge = Path("/sys/class/net/docker0")
    had_bridge = bridge.exists()
    root = Path(f"/tmp/lcd2-{uuid.uuid4().hex[:6]}")  # a unix socket path must stay short
    root.mkdir()
    url = f"unix://{root}/docker.sock"
    log = open(root / "dockerd.log", "w")
    # Its own network namespace: an engine's bridge setup (even --bridge=none, which deletes a
    # docker0 it finds) must not touch the host's docker0, which this machine's engine uses.
    daemon = subprocess.Popen(["unshare", "--net", "dockerd", f"--data-root={root}/data", f"--exec-root={root}/exec",
                               f"-H={url}", f"--pidfile={root}/docker.pid", "--bridge=none", "--iptables=false",
                               "--ip-masq=false"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                engine = docker.DockerClient(base_url=url, timeout=120)  # asks the engine for its API version
                break
            except docker.errors.DockerException:  # not up yet
                assert daemon.poll() is None and time.monotonic() < deadline, (root / "dockerd.log").read_text()[-3000:]
                time.sleep(0.5)
        local = docker.from_env(timeout=300)
        engine.api.load_image(local.api.get_image(DockerSandboxConfig.image, chunk_size=8 << 20))
        local.close()
        yield url, engine
        engine.close()
    finally:
        daemon.terminate()  # unshare passes the signal on to dockerd
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        log.close()
        subprocess.run(["rm", "-rf", str(root)], capture_output=True)
    assert bridge.exists() or not had_bridge, "the second engine removed this machine's docker0"


@pytest.fixture(scope="module")
def ray_cluster(second_engine):
    """Two nodes with the ``docker`` resource, in their own processes: a head with 2 CPUs on
    this machine's engine, and a second node with 1 CPU on the second engine."""
    temp = f"/tmp/lcray-{uuid.uuid4().hex[:6]}"  # Ray's socket paths must stay short
    port = free_port("127.0.0.1")
    # A throwaway cluster on loopback: no token (Ray's default token auth is for real clusters);
    # the drivers the tests start inherit the setting.
    previous = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    started = subprocess.run([RAY, "start", "--head", f"--port={port}", "--num-cpus=2",
                              '--resources={"docker": 1}', f"--temp-dir={temp}", "--include-dashboard=false",
                              "--disable-usage-stats"], capture_output=True, text=True, env=env, timeout=180)
    assert started.returncode == 0, started.stdout + started.stderr
    try:
        joined = subprocess.run([RAY, "start", f"--address=127.0.0.1:{port}", "--num-cpus=1", '--resources={"docker": 1}',
                                 "--disable-usage-stats"], capture_output=True, text=True, timeout=180,
                                env={**env, "DOCKER_HOST": second_engine[0]})  # its workers use that engine
        assert joined.returncode == 0, joined.stdout + joined.stderr
        yield f"127.0.0.1:{port}"  # Ray maps a loopback address to the node's own
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, env=env, timeout=120)
        if previous is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = previous


WORDS = ("nginx postgres redis cron systemd iptables rsync tar git make cmake pytest docker ssh tls dns "
         "backup restore migrate rotate compress index vacuum proxy cache queue metrics alert").split()


def distinct_task(number: int) -> str:
    """A task text that no other number's text is a near duplicate of."""
    rng = random.Random(number)
    return f"Task {number}: " + " ".join(rng.sample(WORDS, 12))


class SlowModel:
    """Distinct tasks, each accepted; every request takes ``delay`` seconds."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.lock = threading.Lock()
        self.count = 0
        self.judged: list[str] = []

    def __call__(self, path, body):
        with self.lock:
            if path.endswith("chat/completions"):
                self.judged.append(body["messages"][1]["content"])
                return 200, completion_body([scores(5)], chat=True), self.delay
            texts = []
            for _ in range(int(body.get("n", 1))):
                texts.append(distinct_task(self.count))
                self.count += 1
            return 200, completion_body(texts), self.delay


def engine_leftovers(engine, run: str) -> list[str]:
    return [c.id for c in engine.containers.list(all=True, filters={"label": f"{LABEL_RUN}={run}"})]


def ray_node_ids(address: str) -> list[str]:
    """The ids of the cluster's live nodes, asked of Ray in a separate process."""
    probe = subprocess.run([sys.executable, "-c", "import json, ray; ray.init(address=%r, logging_level='ERROR'); "
                            "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))" % address],
                           capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0, probe.stderr[-2000:]
    return json.loads(probe.stdout.strip().splitlines()[-1])


def ray_args(address: str) -> list[str]:
    # The second engine has no network (like a node behind a firewall): its containers start
    # from the base image, and nothing it builds or runs reaches the registries.
    return ["executor=ray", f"executor.address={address}", "executor.llm_workers=2", "sandbox.toolchain=false",
            "environment.network=none", "export.harbor.check_network=none"]


def worker_pids(kind: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"ray::{kind}"], capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


def exact_counts(run_dir: Path, tasks: int) -> None:
    store = RunStore(run_dir / "store.sqlite")
    try:
        sample, judge = store.counts("sample"), store.counts("judge")
        assert sample == {"done": tasks, "ok": tasks}, sample
        assert judge.get("done") == tasks and judge.get("accepted") == tasks, judge
    finally:
        store.close()
    frame = pl.read_parquet(run_dir / "judgments.parquet")
    assert len(frame) == tasks and frame["task_id"].is_unique().all()


def test_sample_and_judge_spread_over_two_endpoints_through_ray_workers(ray_cluster, tmp_path, template_dir):
    model = SlowModel()
    with StubServer(model) as a, StubServer(model) as b:
        result = run_cli("stage=[sample,judge]", "run.name=spread", f"run.root={tmp_path}", f"backend.url={a.url}",
                         f"backend.more_urls=[{b.url}]", "sample.num_tasks=12", "sample.n=1", *FAST, f"sample.tokenizer={template_dir}",
                         *ray_args(ray_cluster), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    exact_counts(tmp_path / "spread", 12)
    assert len(a.requests) >= 6 and len(b.requests) >= 6  # both endpoints served the stage
    assert len(a.requests) + len(b.requests) == 24


def test_a_killed_worker_and_a_killed_driver_lose_and_repeat_nothing(ray_cluster, tmp_path, template_dir):
    model = SlowModel(delay=0.4)
    with StubServer(model) as server:
        args = ["stage=[sample,judge]", "run.name=killed", f"run.root={tmp_path}", f"backend.url={server.url}",
                "sample.num_tasks=40", "sample.n=1", "backend.max_in_flight=4", *FAST, f"sample.tokenizer={template_dir}",
                *ray_args(ray_cluster)]
        env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
        driver = subprocess.Popen([sys.executable, "-m", "litecoder", *args], cwd=tmp_path, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while len(server.requests) < 8 and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = worker_pids("LLMWorker")
        assert workers, "no Ray LLM worker process found"
        os.kill(workers[0], signal.SIGKILL)  # a worker dies with requests in flight
        while len(server.requests) < 36 and time.monotonic() < deadline:
            time.sleep(0.2)
        driver.send_signal(signal.SIGKILL)  # and then the driver itself, mid-judging
        driver.communicate(timeout=60)
        resumed = run_cli(*args, cwd=tmp_path, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    exact_counts(tmp_path / "killed", 40)
    assert len(set(model.judged)) == 40  # every task was judged; the store kept one verdict each


@pytest.mark.docker
@pytest.mark.parametrize("copy_images", [True, False])
def test_containers_spread_over_the_clusters_docker_nodes(ray_cluster, second_engine, compose_cfg, tmp_path,
                                                          caplog, copy_images):
    """The whole chain with executor=ray: the environment is made and the teacher works in
    containers opened by the Docker nodes' Ray actors, each node with its own engine. The two
    rollouts run at once: with copy_images, the second goes to the idle node, which gets the
    task's image from the node that made it; without, both run where the image is."""
    caplog.set_level(logging.INFO, logger="litecoder")
    engine = second_engine[1]
    try:
        summaries, _ = run_pipeline(compose_cfg, tmp_path, solving_teacher, "trajectory.rollouts=2",
                                    f"executor.copy_images={str(copy_images).lower()}", *ray_args(ray_cluster))
        assert summaries["environment"]["ready"] == 1
        assert summaries["trajectory"]["kept"] == 2 and summaries["trajectory"]["pass@2"] == 1.0
        assert summaries["export"]["harbor_solution_checked"] == 1  # built on a node, not by the driver
        assert "containers on 2 Ray node(s)" in caplog.text
        nodes = set(ray_node_ids(ray_cluster))
        (made_on,) = set(pl.read_parquet(tmp_path / "environments.parquet")["host"])
        hosts = pl.read_parquet(tmp_path / "trajectories.parquet")["host"].to_list()
        if copy_images:
            assert set(hosts) == nodes and "copied image" in caplog.text
        else:
            assert hosts == [made_on, made_on] and "copied image" not in caplog.text
        assert worker_pids("DockerNode") == []  # the run's node actors are gone with the run
        assert leftovers(run_id(tmp_path)) == [] and engine_leftovers(engine, run_id(tmp_path)) == []
    finally:
        remove_images(tmp_path)
        for image in engine.images.list(filters={"label": "litecoder.task"}):
            engine.images.remove(image.id, force=True)


@pytest.mark.docker
def test_a_killed_driver_leaves_containers_on_the_nodes_that_the_resumed_run_removes(ray_cluster, second_engine, tmp_path,
                                                                                     template_dir):
    def slow_then_ready(turn):
        return step(["sleep 3"]) if turn < 3 else step(ready=True, verifier="test -f /root/done", solution="touch /root/done")

    model = Scripted(slow_then_ready)
    texts = iter(range(10**6))

    def sample_distinct(path, body):
        if not path.endswith("chat/completions"):
            return 200, completion_body([distinct_task(next(texts)) for _ in range(int(body.get("n", 1)))]), 0
        return model(path, body)

    with StubServer(sample_distinct) as server:
        args = [sys.executable, "-m", "litecoder", "stage=[sample,judge,environment]", "run.name=killed-ray-env",
                f"run.root={tmp_path}", f"backend.url={server.url}", "sample.num_tasks=3", "sample.n=1",
                "sandbox.max_containers=3", f"sample.tokenizer={template_dir}", "certify.repeats=1",
                *ray_args(ray_cluster)]
        engine = second_engine[1]
        on_both = lambda name: leftovers(name) + engine_leftovers(engine, name)  # noqa: E731
        kill_while_working_then_resume(args, run_id(tmp_path / "killed-ray-env"), leftovers=on_both)
    assert on_both(run_id(tmp_path / "killed-ray-env")) == []
    frame = pl.read_parquet(tmp_path / "killed-ray-env" / "environments.parquet")
    assert len(frame) == 3 and set(frame["status"]) == {"ready"} and frame["task_id"].is_unique().all()
    assert frame["host"].n_unique() == 2  # three at once: the environments were spread over both nodes
    for image in frame["image"]:
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True)
        for found in engine.images.list(name=image):
            engine.images.remove(found.id, force=True)


@pytest.mark.vllm
def test_sample_and_judge_through_ray_on_the_real_server(ray_cluster, tmp_path, vllm_url):
    result = run_cli("stage=[sample,judge]", "run.name=real", f"run.root={tmp_path}", f"backend.url={vllm_url}",
                     "sample.num_tasks=2", "sample.n=1", *JUDGE_FAST, *ray_args(ray_cluster), cwd=tmp_path, timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    tasks = pl.read_parquet(tmp_path / "real" / "tasks.parquet")
    assert len(tasks) == 2 and tasks["completion_tokens"].sum() > 0
    assert "2 sampled = " in result.stderr and "+ 0 not judged yet" in result.stderr
