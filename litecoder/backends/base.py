"""What every LLM backend offers the stages.

A ``Backend`` owns whatever outlives one stage (a managed server process); ``client()``
gives an async client bound to the running event loop, so each stage can run its own
``asyncio.run`` without sharing connections across loops.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

from omegaconf import MISSING, DictConfig


#: the servers a sweep started for its jobs, ``{share_key: url}`` as JSON (set by the sweep)
SHARED_SERVERS_ENV = "LITECODER_SHARED_VLLM"


def shared_server(key: str) -> str | None:
    """The URL of the server the enclosing sweep started for backends of this share key."""
    try:
        shared = json.loads(os.environ.get(SHARED_SERVERS_ENV) or "{}")
    except json.JSONDecodeError:
        return None
    return shared.get(key)


@dataclass
class BackendConfig:
    """Settings every backend shares."""

    #: registered backend name; selects the implementation
    type: str = MISSING
    #: model name sent with each request
    model: str = MISSING
    #: requests in flight at once (vLLM batches them; one at a time wastes ~8x)
    max_in_flight: int = 64
    #: optional cap on requests per minute (API rate limits)
    requests_per_minute: Optional[float] = None
    #: seconds before one request times out
    timeout: float = 600.0
    #: retries after a 429, 5xx, timeout or dropped connection
    max_retries: int = 4
    #: first and longest backoff between retries, in seconds (jittered, doubling)
    retry_initial_wait: float = 1.0
    retry_max_wait: float = 30.0
    #: extra JSON fields merged into every request body
    extra_body: dict = field(default_factory=dict)
    #: USD per million tokens, for ``budget.max_cost_usd`` and cost columns
    price_input_per_mtok: Optional[float] = None
    price_output_per_mtok: Optional[float] = None


@dataclass
class Choice:
    text: str
    finish_reason: Optional[str]
    #: tokens of this choice, when the server reports them per choice
    completion_tokens: Optional[int]
    #: native tool calls (the ``tools`` API), each ``{"id", "name", "arguments"}`` with the
    #: arguments as the JSON string the model wrote
    tool_calls: list[dict] = field(default_factory=list)


@dataclass
class Completion:
    """One request's answer: ``n`` choices and the request's token usage."""

    choices: list[Choice]
    model: str
    prompt_tokens: Optional[int]
    completion_tokens: Optional[int]
    latency_s: float
    attempts: int = 1
    #: prompt tokens served from the server's prefix cache, when it says
    cached_tokens: Optional[int] = None


class LLMClient(Protocol):
    async def complete(self, prompt: str, *, n: int, stop: list[str], **params: object) -> Completion:
        """Raw text completion (``/v1/completions``), the MAGPIE path."""

    async def chat(self, messages: list[dict], *, n: int = 1, **params: object) -> Completion:
        """Chat completion (``/v1/chat/completions``); ``response_format`` passes through."""

    async def aclose(self) -> None: ...


@dataclass(frozen=True)
class ClientRecipe:
    """How to make a backend's client in another process (an ``executor=ray`` worker):
    ``make(**kwargs)``, both picklable. Equal recipes share workers."""

    make: Callable[..., "LLMClient"]
    kwargs: dict

    def key(self) -> str:
        return f"{self.make.__module__}.{self.make.__qualname__}:{json.dumps(self.kwargs, sort_keys=True, default=str)}"


class Backend:
    """What a backend plugin subclasses: ``client`` is required; the optional features are
    declared here with their defaults, so stages read them instead of probing."""

    config: DictConfig
    #: ``complete`` (raw prompts, the MAGPIE path) is available
    supports_raw_completion: bool = False
    #: requests may carry ``seed``
    supports_seed: bool = True
    #: requests may carry a JSON-schema ``response_format``
    supports_structured_output: bool = False
    #: the OpenAI-compatible endpoint once started, for backends that have one
    base_url: str | None = None

    @property
    def context_limit(self) -> int | None:
        """Prompt plus reply tokens one request may use, when the backend knows; agents keep
        their conversations under it."""
        return None

    def start(self) -> None:
        """Make the backend usable (start a server, check credentials); idempotent."""

    def close(self) -> None:
        """Release what ``start`` acquired; safe to call twice."""

    def client(self) -> LLMClient:
        raise NotImplementedError(f"{type(self).__name__} has no client()")

    def describe(self) -> dict:
        """What to record about this backend in outputs (never secrets)."""
        return {}

    def client_recipe(self) -> ClientRecipe:
        """How another process makes this backend's client; needed for ``executor=ray``."""
        raise NotImplementedError(f"{type(self).__name__} cannot make its client in another process (executor=ray)")

    def share_key(self) -> str | None:
        """For a backend that starts a server: what makes two configs need the same one, so a
        sweep starts one for all its jobs (they find it with ``shared_server(key)``). None:
        nothing to share (the default; a remote API, or a server that is already running)."""
        return None

    def diagnose(self) -> str | None:
        """Why requests fail, when the backend knows better than the HTTP error (a managed
        server that crashed); None when it does not."""
        return None
