"""The OpenAI-compatible client: retries, bounds, keys and errors (against a stub server)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from omegaconf import OmegaConf

from litecoder.backends.openai_compat import OpenAIBackendConfig, OpenAICompatibleBackend
from litecoder.errors import RequestError, BackendError
from litecoder.backends.vllm import VLLMBackend, VLLMBackendConfig
from litecoder.config import register_configs

from .stub_openai import StubServer, completion_body


def backend_for(url: str, **overrides) -> OpenAICompatibleBackend:
    config = OmegaConf.merge(
        OmegaConf.structured(OpenAIBackendConfig),
        {"base_url": url + "/v1", "model": "stub-model", "api_key_env": None, "raw_completions": True,
         "retry_initial_wait": 0.01, "retry_max_wait": 0.05, **overrides},
    )
    return OpenAICompatibleBackend(config)


def complete(backend, prompt="p", **params):
    async def go():
        client = backend.client()
        try:
            return await client.complete(prompt, n=params.pop("n", 1), stop=["<|end|>"], **params)
        finally:
            await client.aclose()

    return asyncio.run(go())


def scripted(*answers):
    """A handler that gives the answers in order, then repeats the last one."""
    queue = list(answers)
    lock = threading.Lock()

    def handler(path, body):
        with lock:
            answer = queue.pop(0) if len(queue) > 1 else queue[0]
        return answer

    return handler


def test_retries_429_and_5xx_then_succeeds():
    ok = (200, completion_body(["a task"]), 0)
    with StubServer(scripted((429, {"error": "slow down"}, 0), (503, {"error": "busy"}, 0), ok)) as server:
        result = complete(backend_for(server.url, max_retries=3))
    assert result.choices[0].text == "a task"
    assert result.attempts == 3
    assert len(server.requests) == 3


def test_gives_up_after_max_retries_with_the_status():
    with StubServer(scripted((500, {"error": "boom"}, 0))) as server:
        with pytest.raises(RequestError, match="HTTP 500") as info:
            complete(backend_for(server.url, max_retries=1))
    assert info.value.status == 500
    assert len(server.requests) == 2


def test_client_errors_are_not_retried():
    with StubServer(scripted((400, {"error": "bad request"}, 0))) as server:
        with pytest.raises(RequestError, match="HTTP 400"):
            complete(backend_for(server.url, max_retries=3))
    assert len(server.requests) == 1


def test_a_slow_server_times_out_per_request():
    with StubServer(scripted((200, completion_body(["late"]), 2.0))) as server:
        with pytest.raises(RequestError, match="timed out"):
            complete(backend_for(server.url, timeout=0.3, max_retries=1))
    assert len(server.requests) == 2


def test_malformed_json_is_a_request_error():
    with StubServer(scripted((200, "this is not json", 0))) as server:
        with pytest.raises(RequestError, match="malformed"):
            complete(backend_for(server.url))
    with StubServer(scripted((200, {"no": "choices"}, 0))) as server:
        with pytest.raises(RequestError, match="malformed"):
            complete(backend_for(server.url))


def test_requests_in_flight_are_bounded():
    with StubServer(scripted((200, completion_body(["t"]), 0.2))) as server:
        backend = backend_for(server.url, max_in_flight=3)

        async def go():
            client = backend.client()
            try:
                await asyncio.gather(*(client.complete(f"p{i}", n=1, stop=[]) for i in range(12)))
            finally:
                await client.aclose()

        asyncio.run(go())
    assert server.peak_in_flight == 3
    assert len(server.requests) == 12


def test_token_counts_per_choice_and_per_request():
    with StubServer() as server:
        result = complete(backend_for(server.url), n=3, seed=5)
    assert len(result.choices) == 3
    assert all(c.completion_tokens and c.completion_tokens > 0 for c in result.choices)
    assert result.prompt_tokens == 7
    assert result.completion_tokens == sum(c.completion_tokens for c in result.choices)


def test_the_key_comes_from_the_named_variable(monkeypatch):
    monkeypatch.setenv("LITECODER_TEST_KEY", "sk-test-secret")
    with StubServer() as server:
        backend = backend_for(server.url, api_key_env="LITECODER_TEST_KEY")
        backend.start()
        complete(backend)
    assert server.requests[0][2].get("Authorization") == "Bearer sk-test-secret"
    assert "sk-test-secret" not in str(backend.describe())


def test_a_missing_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("LITECODER_TEST_KEY", raising=False)
    with pytest.raises(BackendError, match="environment variable LITECODER_TEST_KEY is not set"):
        backend_for("http://127.0.0.1:9", api_key_env="LITECODER_TEST_KEY").start()


def test_a_refused_key_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("LITECODER_TEST_KEY", "wrong")

    with StubServer() as server:
        server.httpd.RequestHandlerClass.do_GET = lambda self: self._reply(401, {"error": "bad key"})
        with pytest.raises(BackendError, match="refused the API key"):
            backend_for(server.url, api_key_env="LITECODER_TEST_KEY").start()


def test_an_unreachable_endpoint_is_a_clear_error():
    with pytest.raises(BackendError, match="cannot reach"):
        backend_for("http://127.0.0.1:9").start()


def test_vllm_backend_uses_a_running_server_and_asks_its_model():
    register_configs()
    with StubServer() as server:
        config = OmegaConf.merge(OmegaConf.structured(VLLMBackendConfig), {"url": server.url})
        backend = VLLMBackend(config)
        backend.start()
        assert backend.model_name == "stub-model"
        assert backend.base_url == server.url + "/v1"
        backend.close()  # does not stop a server it did not start


def test_vllm_backend_reports_a_missing_model_directory(tmp_path):
    register_configs()
    config = OmegaConf.merge(OmegaConf.structured(VLLMBackendConfig), {"model_path": str(tmp_path / "nope")})
    with pytest.raises(BackendError, match="model directory .* is missing"):
        VLLMBackend(config, tmp_path).start()


def test_vllm_backend_reports_a_missing_vllm(tmp_path):
    register_configs()
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")  # the check of vLLM comes after the model's
    config = OmegaConf.merge(OmegaConf.structured(VLLMBackendConfig), {"model_path": str(tmp_path / "model"), "python": "/usr/bin/python3"})
    with pytest.raises(BackendError, match="no vLLM installed"):
        VLLMBackend(config, tmp_path).start()


def test_a_server_that_died_is_diagnosed_with_its_log(tmp_path):
    import subprocess

    from litecoder.backends.vllm import VLLMServer

    register_configs()
    log = tmp_path / "vllm.log"
    log.write_text("INFO starting\nRuntimeError: engine core died\n")
    server = VLLMServer(["true"], {}, "http://127.0.0.1:9", log, 1)
    backend = VLLMBackend(OmegaConf.structured(VLLMBackendConfig), tmp_path)
    assert backend.diagnose() is None
    server.process = subprocess.Popen(["sh", "-c", "exit 3"])
    server.process.wait()
    backend.server = server
    message = backend.diagnose()
    assert "exited with code 3" in message and "engine core died" in message and str(log) in message


def test_requests_go_to_the_least_busy_of_several_endpoints():
    slow = StubServer(lambda path, body: (200, completion_body(["slow"]), 0.3))
    fast = StubServer(lambda path, body: (200, completion_body(["fast"]), 0.0))
    with slow, fast:
        backend = backend_for(slow.url, more_base_urls=[fast.url + "/v1"], max_in_flight=4)
        backend.start()

        async def go():
            client = backend.client()
            try:
                return await asyncio.gather(*(client.complete(f"p{i}", n=1) for i in range(16)))
            finally:
                await client.aclose()

        results = asyncio.run(go())
    assert len(results) == 16
    assert len(slow.requests) >= 1 and len(fast.requests) > len(slow.requests)  # the busy one gets fewer


def test_a_dead_extra_endpoint_is_one_clear_error():
    with StubServer() as alive:
        backend = backend_for(alive.url, more_base_urls=["http://127.0.0.1:9/v1"])
        with pytest.raises(BackendError, match="cannot reach the OpenAI-compatible endpoint at http://127.0.0.1:9/v1"):
            backend.start()
