"""The sample stage end to end against a scripted server: rows, states, spread, fallback."""

from __future__ import annotations

import threading

import polars as pl
import pytest

from litecoder.errors import BackendError, ConfigError
from litecoder.run import execute
from litecoder.stages.sample import allocate

from .stub_openai import StubServer, completion_body

FAST = ["backend.retry_initial_wait=0.01", "backend.retry_max_wait=0.05"]


def sample(compose_cfg, tmp_path, server, *overrides):
    cfg = compose_cfg("stage=sample", f"backend.url={server.url}", *FAST, *overrides)
    summaries = execute(cfg, tmp_path / "run")
    return pl.read_parquet(tmp_path / "run" / "tasks.parquet"), summaries["sample"]


def test_allocation_follows_weights_and_sums_exactly():
    counts = allocate(10, {"a": 1.0, "b": 1.0, "c": 2.0})
    assert sum(counts.values()) == 10 and counts["c"] == 5 and {counts["a"], counts["b"]} == {2, 3}
    assert sum(allocate(7, {"a": 1, "b": 1, "c": 1}).values()) == 7
    assert allocate(5, {"a": 0.0, "b": 1.0}) == {"a": 0, "b": 5}
    with pytest.raises(ConfigError):
        allocate(5, {"a": 0.0})


def test_rows_cover_every_subtopic_with_full_records(compose_cfg, tmp_path, stub_server):
    tasks, summary = sample(compose_cfg, tmp_path, stub_server, "domain=security", "sample.num_tasks=24", "sample.n=4")
    assert len(tasks) == 24 and summary["planned"] == 24 and summary["ok"] == 24 and summary["done"] == 24
    assert tasks["id"].n_unique() == 24
    assert set(tasks["domain"]) == {"security"}
    assert tasks["subtopic"].n_unique() == 6
    assert (tasks["method"] == "magpie_raw").all()
    assert (tasks["prompt_variant"] == "v1").all()
    assert tasks["completion_tokens"].min() > 0 and tasks["prompt_tokens"].min() > 0
    assert tasks["text"].str.len_chars().min() > 0
    # The raw prompt is the chat template's opening of a user turn, stopped at its end marker.
    path, body, _ = stub_server.requests[0]
    assert path == "/v1/completions"
    assert body["prompt"].startswith("<|im_start|>system\n") and body["prompt"].endswith("<|im_start|>user\n")
    assert body["stop"] == ["<|im_end|>"] and body["n"] == 4
    assert body["return_token_ids"] is True


def test_weights_steer_the_spread(compose_cfg, tmp_path, stub_server):
    tasks, _ = sample(
        compose_cfg, tmp_path, stub_server, "domain=version_control", "sample.num_tasks=12", "sample.n=2",
        "domain.subtopics=[{name: merges, weight: 3}, {name: bisect, weight: 1}]",
    )
    counts = dict(tasks.group_by("subtopic").len().iter_rows())
    assert counts == {"merges": 9, "bisect": 3}


def test_empty_truncated_and_failed_completions_are_kept_with_their_reason(compose_cfg, tmp_path):
    calls = {"n": 0}
    lock = threading.Lock()

    def handler(path, body):
        with lock:
            calls["n"] += 1
            call = calls["n"]
        if call == 1:
            return 200, completion_body(["", "   "]), 0
        if call == 2:
            return 200, completion_body(["cut off mid", "also cut"], finish="length"), 0
        if call == 3:
            return 400, {"error": "prompt too long"}, 0
        return 200, completion_body(["fine task", "another fine task"]), 0

    with StubServer(handler) as server:
        tasks, summary = sample(compose_cfg, tmp_path, server, "sample.num_tasks=8", "sample.n=2", "backend.max_in_flight=1",
                                "domain.subtopics=[{name: a}, {name: b}, {name: c}, {name: d}]")
    by_status = dict(tasks.group_by("status").len().iter_rows())
    assert by_status == {"empty": 2, "truncated": 2, "failed": 2, "ok": 2}
    failed = tasks.filter(pl.col("status") == "failed")
    assert failed["error"].str.contains("HTTP 400").all()
    truncated = tasks.filter(pl.col("status") == "truncated")
    assert (truncated["finish_reason"] == "length").all() and truncated["text"].str.len_chars().min() > 0
    assert summary["failed"] == 4  # the failed request and the empty completions


def test_a_dead_server_mid_run_fails_the_run_clearly_but_keeps_the_rows(compose_cfg, tmp_path):
    with StubServer(lambda p, b: (503, {"error": "down"}, 0)) as server:
        with pytest.raises(BackendError, match=r"sample requests keep failing.*HTTP 503"):
            sample(compose_cfg, tmp_path, server, "sample.num_tasks=6", "sample.n=2", "backend.max_retries=1")
    tasks = pl.read_parquet(tmp_path / "run" / "tasks.parquet")
    assert len(tasks) == 6 and (tasks["status"] == "failed").all()


def test_chat_fallback_for_models_without_raw_completion(compose_cfg, tmp_path, stub_server):
    cfg = compose_cfg(
        "stage=sample", "backend=openai", "backend.model=stub-model", f"backend.base_url={stub_server.url}/v1",
        "backend.api_key_env=null", "sample.num_tasks=4", "sample.n=2", "domain=data_science", *FAST,
    )
    execute(cfg, tmp_path / "run")
    tasks = pl.read_parquet(tmp_path / "run" / "tasks.parquet")
    assert len(tasks) == 4 and (tasks["method"] == "chat_fallback").all()
    path, body, _ = stub_server.requests[0]
    assert path == "/v1/chat/completions"
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert "data_science" in body["messages"][1]["content"] or "Write one" in body["messages"][1]["content"]


def test_raw_mode_on_a_chat_only_backend_is_a_config_error(compose_cfg, tmp_path, stub_server):
    cfg = compose_cfg("backend=openai", "backend.model=m", f"backend.base_url={stub_server.url}/v1",
                      "backend.api_key_env=null", "sample.mode=raw")
    with pytest.raises(ConfigError, match="sample.mode=raw"):
        execute(cfg, tmp_path / "run")


def test_prompt_variants_change_the_system_turn(compose_cfg, tmp_path):
    prompts = {}
    for variant in ("v1", "v2"):
        with StubServer() as server:
            sample(compose_cfg, tmp_path / variant, server, f"prompts={variant}", "sample.num_tasks=1", "sample.n=1")
            prompts[variant] = server.requests[0][1]["prompt"]
    assert prompts["v1"] != prompts["v2"]
    assert "senior engineer" in prompts["v2"]


def test_an_explicit_prefix_overrides_the_template(compose_cfg, tmp_path, stub_server):
    sample(compose_cfg, tmp_path, stub_server, "sample.num_tasks=1", "sample.n=1",
           "sample.template.prefix='[SYS]{system}[/SYS][USER]'", "sample.template.stop=['[/USER]']")
    body = stub_server.requests[0][1]
    assert body["prompt"].startswith("[SYS]") and body["prompt"].endswith("[/SYS][USER]")
    assert body["stop"] == ["[/USER]"]


def test_a_crashed_managed_server_fails_fast_and_says_why(compose_cfg, tmp_path, stub_server, monkeypatch):
    from litecoder.backends.vllm import VLLMBackend

    monkeypatch.setattr(VLLMBackend, "diagnose", lambda self: "the vLLM server exited with code 1 during the run")
    with pytest.raises(BackendError, match="exited with code 1"):
        sample(compose_cfg, tmp_path, stub_server, "sample.num_tasks=4", "sample.n=2")
    tasks = pl.read_parquet(tmp_path / "run" / "tasks.parquet")
    assert (tasks["status"] == "failed").all() and tasks["error"].str.contains("exited with code 1").all()
    assert stub_server.requests == []


def test_seeds_are_sent_per_request_and_refused_where_they_crash(compose_cfg, tmp_path, stub_server, monkeypatch):
    tasks, _ = sample(compose_cfg, tmp_path / "a", stub_server, "sample.num_tasks=6", "sample.n=2", "sample.seed=10",
                      "domain.subtopics=[{name: a}, {name: b}, {name: c}]")
    assert sorted({body["seed"] for _, body, _ in stub_server.requests}) == [10, 11, 12]
    from litecoder.backends.vllm import VLLMBackend

    monkeypatch.setattr(VLLMBackend, "supports_seed", False)
    with pytest.raises(ConfigError, match="sample.seed=null"):
        sample(compose_cfg, tmp_path / "b", stub_server, "sample.num_tasks=2", "sample.seed=1")
