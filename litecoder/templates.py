"""The texts litecoder sends to models are Jinja templates kept in config; this renders them.

Undefined names are errors (a misspelled variable in a prompt fails loudly, not as an empty
string), and a template's trailing newline is kept unless asked otherwise.
"""

from __future__ import annotations

import functools
from typing import Any

import jinja2


@functools.lru_cache(maxsize=2)
def environment(keep_trailing_newline: bool = True) -> jinja2.Environment:
    return jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=keep_trailing_newline)


@functools.lru_cache(maxsize=256)
def _compiled(text: str, keep_trailing_newline: bool) -> jinja2.Template:
    return environment(keep_trailing_newline).from_string(text)


def render(text: str, *, keep_trailing_newline: bool = True, **context: Any) -> str:
    """``text`` rendered as a template with ``context``."""
    return _compiled(str(text), keep_trailing_newline).render(**context)
