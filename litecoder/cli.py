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
from .overrides import check_overrides, one_line
from .paths import core_conf_dir
from .plugins import get_plugins


#: the user's own HYDRA_FULL_ERROR, kept while Hydra is told to raise instead of printing
USER_FULL_ERROR = "LITECODER_USER_FULL_ERROR"


def _full_errors() -> bool:
    return os.environ.get(USER_FULL_ERROR, os.environ.get("HYDRA_FULL_ERROR")) == "1"


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
        _fail(ConfigError(one_line(exc)))


if __name__ == "__main__":
    main()
