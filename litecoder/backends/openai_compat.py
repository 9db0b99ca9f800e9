"""Every OpenAI-compatible endpoint: OpenAI, vLLM, SGLang, llama.cpp, hosted open models.

httpx does the HTTP, tenacity the retries with backoff (429, 5xx, timeouts, dropped
connections), aiolimiter the optional requests-per-minute cap, and a semaphore bounds the
requests in flight. The API key is read from the environment variable *named* in the
config, so the key itself never lands in a config, a log or an output file.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

import httpx
from aiolimiter import AsyncLimiter
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from .. import hookimpl
from ..errors import BackendError, RequestError
from .base import Backend, BackendConfig, Choice, ClientRecipe, Completion

if TYPE_CHECKING:
    from omegaconf import DictConfig

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


@dataclass
class OpenAIBackendConfig(BackendConfig):
    type: str = "openai"
    base_url: str = "https://api.openai.com/v1"
    #: more endpoints serving the same model; requests go to the least busy of all of them
    more_base_urls: list[str] = field(default_factory=list)
    #: name of the environment variable holding the key; null for servers without auth
    api_key_env: Optional[str] = "OPENAI_API_KEY"
    #: the endpoint serves /completions with raw prompts (vLLM, SGLang, llama.cpp do)
    raw_completions: bool = False
    #: check the endpoint and the key once before the first request
    preflight: bool = True
    #: the endpoint honours ``response_format`` with a JSON schema (OpenAI, vLLM, SGLang do)
    structured_output: bool = True


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code in RETRY_STATUS
    return isinstance(exc, (httpx.TimeoutException, httpx.TransportError))


def _wait_with_retry_after(fallback):
    """Honour a server's Retry-After header; otherwise exponential backoff with jitter."""

    def wait(state) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, httpx.HTTPStatusError):
            value = exc.response.headers.get("retry-after")
            try:
                return min(float(value), 120.0) if value else fallback(state)
            except ValueError:
                return fallback(state)
        return fallback(state)

    return wait


def _describe_http_error(exc: BaseException) -> RequestError:
    if isinstance(exc, httpx.HTTPStatusError):
        body = exc.response.text[:2000]
        return RequestError(f"HTTP {exc.response.status_code}: {body[:300]}", status=exc.response.status_code, body=body)
    if isinstance(exc, httpx.TimeoutException):
        return RequestError(f"timed out ({type(exc).__name__})")
    return RequestError(f"{type(exc).__name__}: {exc}")


def parse_completion(data: Any, *, n: int, latency: float, attempts: int) -> Completion:
    """Turn a /completions or /chat/completions JSON body into a ``Completion``."""
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        raise RequestError(f"malformed response: no choices in {str(data)[:300]}")
    usage = data.get("usage") or {}
    choices = []
    for raw in sorted(data["choices"], key=lambda c: c.get("index", 0)):
        message = raw.get("message") or {}
        text = (message.get("content") or "") if "message" in raw else (raw.get("text") or "")
        tokens = raw.get("token_ids")
        per_choice = len(tokens) if isinstance(tokens, list) else None
        choices.append(Choice(text=text, finish_reason=raw.get("finish_reason"), completion_tokens=per_choice,
                              tool_calls=_tool_calls(message.get("tool_calls"))))
    if n == 1 and len(choices) == 1 and choices[0].completion_tokens is None:
        choices[0].completion_tokens = usage.get("completion_tokens")
    return Completion(
        choices=choices,
        model=data.get("model", ""),
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=usage.get("completion_tokens"),
        latency_s=latency,
        attempts=attempts,
        cached_tokens=(usage.get("prompt_tokens_details") or {}).get("cached_tokens"),
    )


def _tool_calls(raw: object) -> list[dict]:
    """A message's ``tool_calls`` as ``{"id", "name", "arguments"}``; arguments stay the string
    the model wrote (a server may hand over an object: it is serialized)."""
    calls = []
    for index, call in enumerate(raw if isinstance(raw, list) else []):
        function = (call or {}).get("function") or {}
        arguments = function.get("arguments")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments if arguments is not None else {})
        calls.append({"id": str(call.get("id") or f"call_{index}"), "name": str(function.get("name") or ""),
                      "arguments": arguments})
    return calls


def make_client(config: dict, base_urls: list[str], model: str, headers: dict[str, str]) -> "OpenAIClient":
    """An ``OpenAIClient`` from plain values (what a ``ClientRecipe`` carries to a worker)."""
    from omegaconf import OmegaConf

    return OpenAIClient(OmegaConf.create(config), base_urls, model, headers)


def client_recipe(client: "OpenAIClient") -> ClientRecipe:
    from omegaconf import OmegaConf

    return ClientRecipe(make_client, {"config": OmegaConf.to_container(client.config, resolve=True),
                                      "base_urls": client.base_urls, "model": client.model, "headers": client.headers})


class OpenAIClient:
    """Async client for one event loop; bounded, rate-limited and retrying.

    Given several endpoints that serve the same model (one vLLM server per GPU or node),
    each request goes to the endpoint with the fewest requests in flight.
    """

    def __init__(self, config: DictConfig, base_url: str | Sequence[str], model: str, headers: dict[str, str]) -> None:
        self.config = config
        self.model = model
        self.headers = dict(headers)
        self.base_urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not self.base_urls:
            raise BackendError("no endpoint to send requests to")
        limit = max(1, int(config.max_in_flight))
        self._http = [
            httpx.AsyncClient(
                base_url=url.rstrip("/") + "/",
                headers=headers,
                timeout=httpx.Timeout(config.timeout, connect=10.0),
                limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
            )
            for url in self.base_urls
        ]
        #: requests in flight and requests sent, per endpoint
        self.in_flight = [0] * len(self.base_urls)
        self.sent = [0] * len(self.base_urls)
        self._slots = asyncio.Semaphore(limit)
        rpm = config.requests_per_minute
        self._limiter = AsyncLimiter(rpm, 60) if rpm else None

    def _pick(self) -> int:
        """The least busy endpoint; among equals, the one that was sent the fewest requests."""
        return min(range(len(self.base_urls)), key=lambda i: (self.in_flight[i], self.sent[i]))

    async def _post(self, path: str, body: dict) -> tuple[Any, float, int]:
        retrying = AsyncRetrying(
            stop=stop_after_attempt(int(self.config.max_retries) + 1),
            wait=_wait_with_retry_after(wait_exponential_jitter(multiplier=self.config.retry_initial_wait, max=self.config.retry_max_wait, jitter=self.config.retry_initial_wait)),
            retry=retry_if_exception(_retryable),
            reraise=True,
        )
        attempts = 0
        async with self._slots:
            started = time.perf_counter()
            try:
                async for attempt in retrying:
                    with attempt:
                        attempts += 1
                        if self._limiter is not None:
                            await self._limiter.acquire()
                        endpoint = self._pick()
                        self.in_flight[endpoint] += 1
                        self.sent[endpoint] += 1
                        try:
                            response = await self._http[endpoint].post(path, json=body)
                        finally:
                            self.in_flight[endpoint] -= 1
                        response.raise_for_status()
            except (httpx.HTTPError,) as exc:
                error = _describe_http_error(exc)
                error.attempts = attempts
                raise error from exc
            latency = time.perf_counter() - started
        try:
            return response.json(), latency, attempts
        except ValueError as exc:
            raise RequestError(f"malformed response: not JSON: {response.text[:300]}") from exc

    def _body(self, params: dict) -> dict:
        body = {"model": self.model, **dict(self.config.extra_body or {})}
        body.update({k: v for k, v in params.items() if v is not None})
        return body

    async def complete(self, prompt: str, *, n: int = 1, stop: list[str] | None = None, **params: object) -> Completion:
        body = self._body({"prompt": prompt, "n": n, "stop": stop or None, **params})
        data, latency, attempts = await self._post("completions", body)
        return parse_completion(data, n=n, latency=latency, attempts=attempts)

    async def chat(self, messages: list[dict], *, n: int = 1, **params: object) -> Completion:
        body = self._body({"messages": messages, "n": n, **params})
        data, latency, attempts = await self._post("chat/completions", body)
        return parse_completion(data, n=n, latency=latency, attempts=attempts)

    async def aclose(self) -> None:
        for http in self._http:
            await http.aclose()


def check_endpoint(base_url: str, headers: dict[str, str], *, what: str, fix: str) -> list[str]:
    """Ask ``/models`` once: the endpoint answers and the key is accepted. Returns model ids."""
    url = base_url.rstrip("/") + "/models"
    try:
        response = httpx.get(url, headers=headers, timeout=15.0)
    except httpx.HTTPError as exc:
        raise BackendError(f"cannot reach {what} at {base_url} ({type(exc).__name__}); {fix}") from exc
    if response.status_code in (401, 403):
        raise BackendError(f"{what} at {base_url} refused the API key (HTTP {response.status_code}); check the key")
    if response.status_code >= 400:
        return []
    try:
        return [str(m["id"]) for m in response.json().get("data", []) if isinstance(m, dict) and m.get("id")]
    except (ValueError, AttributeError):
        return []


class OpenAICompatibleBackend(Backend):
    supports_raw_completion: bool

    def __init__(self, config: DictConfig, run_dir: Path | None = None) -> None:
        self.config = config
        self.supports_raw_completion = bool(config.raw_completions)
        self.supports_structured_output = bool(config.structured_output)
        self._checked = False

    def _headers(self) -> dict[str, str]:
        name = self.config.api_key_env
        if not name:
            return {}
        key = os.environ.get(name)
        if not key:
            raise BackendError(
                f"environment variable {name} is not set; export the API key in it "
                f"(or set backend.api_key_env=null for a server without auth)"
            )
        return {"Authorization": f"Bearer {key}"}

    def start(self) -> None:
        headers = self._headers()
        if self.config.preflight and not self._checked:
            for url in self.endpoints():
                check_endpoint(url, headers, what="the OpenAI-compatible endpoint", fix="check backend.base_url and your network")
        self._checked = True

    def close(self) -> None:
        pass

    def endpoints(self) -> list[str]:
        return [self.config.base_url, *self.config.more_base_urls]

    def client(self) -> OpenAIClient:
        return OpenAIClient(self.config, self.endpoints(), self.config.model, self._headers())

    def client_recipe(self) -> ClientRecipe:
        return client_recipe(self.client())

    def describe(self) -> dict:
        return {"backend": self.config.type, "model": self.config.model, "base_url": self.config.base_url}


@hookimpl
def litecoder_register_backends(register):
    register("openai", OpenAICompatibleBackend, config=OpenAIBackendConfig)
