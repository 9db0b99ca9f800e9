"""``python -m litecoder stage=... domain=...``: Hydra composes, litecoder runs.

User errors end in one line on stderr and a non-zero exit; set ``HYDRA_FULL_ERROR=1`` for
the traceback. Plugins are loaded before Hydra starts so that their config nodes and
search paths are part of the composition.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from .config import register_configs
from .errors import ConfigError, LitecoderError
from .paths import core_conf_dir
from .plugins import get_plugins


#: the user's own HYDRA_FULL_ERROR, kept while Hydra is told to raise instead of printing
USER_FULL_ERROR = "LITECODER_USER_FULL_ERROR"


def _full_errors() -> bool:
    return os.environ.get(USER_FULL_ERROR, os.environ.get("HYDRA_FULL_ERROR")) == "1"


def _one_line(exc: BaseException) -> str:
    """Hydra's and OmegaConf's messages span lines (option lists, ``full_key``) and keep the
    reason in their cause: say it all on one line."""
    parts: list[str] = []
    while exc is not None:
        for part in _message_parts(str(exc)):
            if part not in parts:
                parts.append(part)
        exc = exc.__cause__
    return "; ".join(parts)


def _message_parts(message: str) -> list[str]:
    parts: list[str] = []
    for line in (line.strip() for line in message.split("Config search path:")[0].splitlines()):
        if not line or line.startswith("See https://hydra.cc"):
            continue
        if parts and parts[-1].endswith((":", ",")) and "options" in parts[-1]:
            parts[-1] += (" " if parts[-1].endswith(":") else " ") + line + ","
        else:
            parts.append(line.rstrip("."))
    return [p.rstrip(",") for p in parts]


def _fail(exc: LitecoderError) -> None:
    if _full_errors():
        raise exc
    print(f"litecoder: error: {exc}", file=sys.stderr)
    sys.exit(exc.exit_code)


def _terminate(signum, frame) -> None:
    # Turn SIGTERM into the same unwinding as Ctrl-C, so servers and containers are stopped.
    raise KeyboardInterrupt


def _task(cfg: DictConfig) -> None:
    from .run import execute

    setup()  # a no-op here; joblib's worker processes need it to resolve litecoder's config
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        execute(cfg, run_dir)
    except LitecoderError as exc:
        logging.getLogger("litecoder").debug("user error", exc_info=True)
        if in_sweep and not _full_errors():
            # one job's error is recorded and reported; the sweep goes on with the others
            print(f"litecoder: error in job {hydra_cfg.job.num} ({run_dir}): {exc}", file=sys.stderr)
            return
        _fail(exc)
    except KeyboardInterrupt:
        print(f"litecoder: interrupted; partial results are in {run_dir}", file=sys.stderr)
        sys.exit(130)


def check_overrides(argv: list[str]) -> None:
    """Parse the command line's overrides the way Hydra will, so a value that needs quoting or
    a run name that cannot be a directory fails with one line before anything starts."""
    from hydra._internal.utils import get_args_parser
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    from .run_names import check_run_name

    overrides = get_args_parser().parse_known_args(argv)[0].overrides or []
    parser = OverridesParser.create()
    for text in overrides:
        try:
            (override,) = parser.parse_overrides([text])
        except OverrideParseException as exc:
            raise ConfigError(f"cannot read the override {text!r}: {_one_line(exc)}; quote a value that holds "
                              "brackets, braces, commas, quotes or spaces (key='value', with \\' for a quote)") from None
        if override.key_or_group == "run.name":
            names = override.sweep_string_iterator() if override.is_sweep_override() else [override.value()]
            for name in names:
                if isinstance(name, str) and "${" not in name:
                    check_run_name(name)


def setup() -> str:
    """Register schemas and load plugins; returns the core config directory."""
    register_configs()
    get_plugins()
    return str(core_conf_dir())


def _compare(dirs: list[str]) -> None:
    """``--compare DIR...``: rebuild the comparison table of a sweep (or of any runs) and print it."""
    from .compare import TABLE_MD, markdown, write_comparison

    if not dirs:
        _fail(LitecoderError("--compare needs a directory: a sweep's directory, or one that holds runs"))
    for directory in dirs:
        frame = write_comparison(Path(directory))
        if frame.is_empty():
            _fail(LitecoderError(f"no runs (no store.sqlite) under {directory}"))
        print(markdown(frame), end="")
        print(f"litecoder: written to {Path(directory) / TABLE_MD} and comparison.csv", file=sys.stderr)


def main() -> None:
    if sys.argv[1:2] == ["--compare"]:
        _compare(sys.argv[2:])
        return
    if sys.argv[1:] == ["--info", "plugins"]:
        # litecoder's plugins, not Hydra's: which are loaded, what each registers, which failed
        from .plugins import plugin_report

        register_configs()
        try:
            print(plugin_report(get_plugins(strict=False)))
        except LitecoderError as exc:
            _fail(exc)
        return
    try:
        check_overrides(sys.argv[1:])
        conf_dir = setup()
    except LitecoderError as exc:
        _fail(exc)
    signal.signal(signal.SIGTERM, _terminate)
    _run_hydra(conf_dir)


def _run_hydra(conf_dir: str) -> None:
    """Hydra composes and launches; its config errors (a missing key, an unresolvable
    interpolation in a run name) become litecoder's one line instead of Hydra's traceback."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    os.environ.setdefault(USER_FULL_ERROR, os.environ.get("HYDRA_FULL_ERROR", ""))
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        hydra.main(version_base=None, config_path=conf_dir, config_name="config")(_task)()
    except (HydraException, OmegaConfBaseException) as exc:
        if _full_errors():
            raise
        _fail(ConfigError(_one_line(exc)))


if __name__ == "__main__":
    main()
