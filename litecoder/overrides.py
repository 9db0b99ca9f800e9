"""The command line's overrides, read before Hydra runs, and Hydra's errors on one line.

Hydra reports a value it cannot parse, a misspelled key or an interpolation that does not
resolve over several lines, sometimes with a traceback; litecoder's users get one line.
"""

from __future__ import annotations

from .errors import ConfigError
from .paths import check_run_name

QUOTING_HINT = ("quote a value that holds brackets, braces, commas, quotes or spaces "
                "(key='value', with \\' for a quote)")


def check_overrides(argv: list[str]) -> None:
    """Parse the overrides the way Hydra will, so a value that needs quoting or a run name
    that cannot be a directory fails with one line before anything starts."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for text in get_args_parser().parse_known_args(argv)[0].overrides or []:
        try:
            (override,) = parser.parse_overrides([text])
        except OverrideParseException as exc:
            raise ConfigError(f"cannot read the override {text!r}: {one_line(exc)}; {QUOTING_HINT}") from None
        if override.key_or_group == "run.name":
            names = override.sweep_string_iterator() if override.is_sweep_override() else [override.value()]
            for name in names:
                if isinstance(name, str) and "${" not in name:  # interpolations resolve later
                    check_run_name(name)


def one_line(exc: BaseException) -> str:
    """The exception's message and its causes' (Hydra keeps the reason in the cause)."""
    parts: list[str] = []
    cause: BaseException | None = exc
    while cause is not None:
        parts += [part for part in _lines(str(cause)) if part not in parts]
        cause = cause.__cause__
    return "; ".join(parts)


def _lines(message: str) -> list[str]:
    """The message's lines without Hydra's search path and doc links; a list of options
    joins the line that introduces it."""
    parts: list[str] = []
    for raw in message.split("Config search path:")[0].splitlines():
        line = raw.strip().rstrip(".")
        if not line or line.startswith("See https://hydra.cc"):
            continue
        if parts and parts[-1].startswith("Available options"):
            parts[-1] += (" " if parts[-1].endswith(":") else ", ") + line
        else:
            parts.append(line)
    return parts
