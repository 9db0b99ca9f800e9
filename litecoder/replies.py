"""Getting one JSON object out of a model's reply, validated against a schema.

Constrained decoding usually hands over clean JSON; without it, models wrap JSON in prose
or code fences. We try the whole reply, then a fenced block, then the outermost braces,
and validate with jsonschema. Every failure says what was wrong, for the record.
"""

from __future__ import annotations

import functools
import json
import re
from typing import TYPE_CHECKING, Any

import jsonschema

from .usage import of_request

if TYPE_CHECKING:
    from omegaconf import DictConfig
    from .backends.base import LLMClient

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


class ReplyError(ValueError):
    """The reply holds no JSON object that fits the schema."""


def extract_json(text: str, *, max_chars: int) -> Any:
    if not text or not text.strip():
        raise ReplyError("empty reply")
    if len(text) > max_chars:
        raise ReplyError(f"reply of {len(text)} characters is longer than the limit of {max_chars}")
    candidates = [text.strip()]
    candidates += [m.group(1).strip() for m in _FENCE.finditer(text)]
    start, end = text.find("{"), text.rfind("}")
    if 0 <= start < end:
        candidates.append(text[start : end + 1])
    for candidate in candidates:
        try:
            return json.loads(candidate)
        except json.JSONDecodeError:
            continue
    raise ReplyError(f"no JSON object in the reply (starts: {text.strip()[:80]!r})")


@functools.lru_cache(maxsize=64)
def _validator(schema_json: str) -> Any:
    """One checked validator per schema: ``jsonschema.validate`` re-checks the schema itself
    on every call, which was half of the judge's CPU time."""
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def parse_reply(text: str, schema: dict, *, max_chars: int) -> dict:
    value = extract_json(text, max_chars=max_chars)
    try:
        _validator(json.dumps(schema, sort_keys=True)).validate(value)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "the reply"
        raise ReplyError(f"reply does not fit the schema at {where}: {exc.message}") from exc
    return value


def json_schema_format(name: str, schema: dict) -> dict:
    """The ``response_format`` that asks a server for constrained decoding to ``schema``."""
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}


async def ask_json(client: LLMClient, messages: list[dict], schema: dict, *, name: str, config: DictConfig,
                   structured: bool) -> tuple[dict | None, dict, str | None]:
    """One request whose reply is a JSON object: (the object, the request's usage, why there
    is none when the reply was unusable). ``config`` gives ``temperature``, ``max_tokens`` and
    ``structured_output`` (``auto``: constrained decoding where the backend has it). A failed
    request raises ``RequestError``: the item fails, to be retried."""
    params: dict = {"temperature": float(config.temperature), "max_tokens": int(config.max_tokens)}
    if structured and config.structured_output == "auto":
        params["response_format"] = json_schema_format(name, schema)
    result = await client.chat(messages, n=1, **params)
    usage = of_request(result)
    try:
        return parse_reply(result.choices[0].text if result.choices else "", schema, max_chars=100_000), usage, None
    except ReplyError as exc:
        return None, usage, str(exc)
