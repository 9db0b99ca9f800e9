"""One error family, so the CLI can tell a user's mistake from a bug.

A ``LitecoderError`` is printed as one line (its message says what to do) and the
process exits non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class LitecoderError(Exception):
    """A problem the user can fix: bad config, missing model, unreachable server."""

    exit_code = 2


class ConfigError(LitecoderError):
    """The composed configuration asks for something that does not exist."""


class PluginError(LitecoderError):
    """A plugin registered something twice or in a way that cannot work."""


class BackendError(LitecoderError):
    """An LLM backend cannot be used at all (server down, no key, no model)."""


class SandboxError(LitecoderError):
    """The sandbox cannot be used at all (no engine, no image)."""


class TerminalClosed(SandboxError):
    """The agent's terminal is gone (it killed tmux or the shell loop): the agent ends its
    episode and the item goes on to its verifier. Where no agent catches it, it fails the item
    like any sandbox error."""


class RequestError(Exception):
    """One model request failed for good (after retries, or not retryable): it fails its item,
    not the run; the stages' circuit breaker decides when many of them stop the run."""

    def __init__(self, message: str, *, status: int | None = None, body: str = "", attempts: int | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body
        #: requests sent before giving up (retries included), when the client counted them
        self.attempts = attempts


class StageNotBuilt(LitecoderError):
    """The stage exists by name but has no implementation yet."""

    exit_code = 0
