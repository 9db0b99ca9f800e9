"""Derive the MAGPIE pre-query prompt and stop strings from a model's own chat template.

Instead of a hand-kept table of templates per model, render a conversation whose user
message is a sentinel and cut at the sentinel: what comes before is the pre-query prefix
(system turn plus the opening of a user turn), what follows the sentinel is the end-of-turn
marker to stop on. This works for any chat model whose tokenizer ships a template.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import ConfigError

USER_SENTINEL = "LITECODERUSERTURN7F3A"
SYSTEM_SENTINEL = "LITECODERSYSTEMTURN7F3A"


@dataclass(frozen=True)
class ChatTemplate:
    source: str
    template: str
    bos_token: str = ""
    eos_token: str = ""


@dataclass(frozen=True)
class PreQuery:
    """The raw prompt for one system message, and where the model's user turn ends."""

    prefix: str
    stop: list[str]
    source: str


class _TemplateRaised(Exception):
    pass


def _raise(message: str) -> None:
    raise _TemplateRaised(message)


def _token_text(value: object) -> str:
    """A special token as tokenizer_config.json gives it: text, or an object with ``content``."""
    if isinstance(value, dict):
        return str(value.get("content", "") or "")
    return str(value or "")


def load_chat_template(tokenizer: str | Path) -> ChatTemplate:
    """Read the chat template and special tokens from a tokenizer directory (or hub name)."""
    path = Path(str(tokenizer)).expanduser()
    if path.is_dir():
        config: dict = {}
        if (path / "tokenizer_config.json").is_file():
            config = json.loads((path / "tokenizer_config.json").read_text())
        template = None
        if (path / "chat_template.jinja").is_file():
            template = (path / "chat_template.jinja").read_text()
        elif (path / "chat_template.json").is_file():
            template = json.loads((path / "chat_template.json").read_text()).get("chat_template")
        else:
            template = config.get("chat_template")
        if isinstance(template, list):  # named templates: take the default one
            named = {t.get("name"): t.get("template") for t in template}
            template = named.get("default") or next(iter(named.values()), None)
        if not template:
            raise ConfigError(
                f"no chat template in {path} (looked for chat_template.jinja and tokenizer_config.json); "
                f"set sample.template.chat_template or sample.template.prefix"
            )
        return ChatTemplate(str(path), template, _token_text(config.get("bos_token")), _token_text(config.get("eos_token")))
    try:
        from transformers import AutoTokenizer  # optional: only for hub names already cached
    except ImportError as exc:
        raise ConfigError(f"tokenizer {tokenizer!r} is not a directory; point sample.tokenizer at a model directory") from exc
    try:
        tok = AutoTokenizer.from_pretrained(str(tokenizer))
    except Exception as exc:  # noqa: BLE001 - any loading failure is the same user error
        raise ConfigError(f"cannot load tokenizer {tokenizer!r} ({exc}); point sample.tokenizer at a model directory") from exc
    if not tok.chat_template:
        raise ConfigError(f"tokenizer {tokenizer!r} has no chat template; set sample.template.prefix")
    return ChatTemplate(str(tokenizer), tok.chat_template, tok.bos_token or "", tok.eos_token or "")


def _render(template: ChatTemplate, messages: list[dict]) -> str:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, ensure_ascii=False, indent=indent)
    try:
        compiled = env.from_string(template.template)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"chat template from {template.source} does not parse: {exc}") from exc
    return compiled.render(
        messages=messages,
        add_generation_prompt=False,
        bos_token=template.bos_token,
        eos_token=template.eos_token,
        tools=None,
        documents=None,
    )


class PreQueryBuilder:
    """Builds pre-query prompts from one chat template, deriving the layout once."""

    def __init__(self, template: ChatTemplate) -> None:
        self.template = template
        self._system_in_user = False
        try:
            rendered = _render(template, [
                {"role": "system", "content": SYSTEM_SENTINEL},
                {"role": "user", "content": USER_SENTINEL},
            ])
        except _TemplateRaised:
            # Templates without a system role (Gemma-style): the system text opens the user turn.
            self._system_in_user = True
            rendered = _render(template, [{"role": "user", "content": f"{SYSTEM_SENTINEL}\n\n{USER_SENTINEL}"}])
        if USER_SENTINEL not in rendered or SYSTEM_SENTINEL not in rendered:
            raise ConfigError(f"the chat template from {template.source} drops the system or user message; set sample.template.prefix")
        head, tail = rendered.split(USER_SENTINEL, 1)
        self._head = head
        end_of_turn = tail.strip()
        # Keep only the marker itself: anything after its first line belongs to the next turn.
        end_of_turn = end_of_turn.splitlines()[0].strip() if end_of_turn else ""
        stops = [s for s in (end_of_turn, template.eos_token) if s]
        self.stop = list(dict.fromkeys(stops))

    def build(self, system_message: str) -> PreQuery:
        return PreQuery(self._head.replace(SYSTEM_SENTINEL, system_message), list(self.stop), self.template.source)


def explicit_prequery(prefix_template: str, stop: list[str] | None, system_message: str) -> PreQuery:
    """A hand-written prefix from config: ``{system}`` marks where the system message goes."""
    if "{system}" not in prefix_template:
        raise ConfigError("sample.template.prefix must contain {system} where the system message goes")
    return PreQuery(prefix_template.replace("{system}", system_message), list(stop or []), "config")
