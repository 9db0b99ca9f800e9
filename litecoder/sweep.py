"""Sweeps (``python -m litecoder -m ...``): one model server for all jobs, and a comparison.

A Hydra callback. Before the first job it starts the model server(s) the sweep's base config
asks for (backends with a ``share_key``, such as a managed vLLM server) and hands their URLs to every job through the environment, so jobs run one after
another (basic launcher) or side by side (``hydra/launcher=joblib``) share one server
instead of each starting its own. A job whose server settings differ from the base config
(e.g. a sweep over ``backend.max_model_len``) still starts its own, because it needs another
server. After the last job it writes ``comparison.csv`` and ``comparison.md`` into the
sweep directory and stops the servers.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from .backends.base import SHARED_SERVERS_ENV, Backend
from .plugins import get_plugins
from .stage import model_stages

log = logging.getLogger("litecoder.sweep")



def _say(message: str) -> None:
    print(f"litecoder: {message}", file=sys.stderr)


def sweep_dir(config: DictConfig) -> Path:
    return Path(str(config.hydra.sweep.dir))


def wanted_servers(config: DictConfig) -> list[Backend]:
    """One unstarted backend per distinct server the base config's model stages would start."""
    stages = config.stage if OmegaConf.is_list(config.stage) else str(config.stage).split(",")
    names = [str(s).strip() for s in stages]
    model_names = model_stages(get_plugins())  # a sweep of only other stages starts no server
    if names != ["all"] and not set(names) & set(model_names):
        return []
    nodes = [OmegaConf.select(config, f"{s}.backend", default=None) for s in model_names] + [config.backend]
    backends = get_plugins().registry("backend")
    wanted: dict[str, Backend] = {}
    for node in nodes:
        if node is None or node.get("type") not in backends:
            continue
        backend = backends.get(node.type)(node, sweep_dir(config))
        key = backend.share_key()
        if key is not None:
            wanted.setdefault(key, backend)
    return list(wanted.values())


class SweepCallback(Callback):
    def __init__(self, share_servers: bool = True, compare: bool = True) -> None:
        self.share_servers = share_servers
        self.compare = compare
        self.backends: list[Backend] = []
        self.previous_env: str | None = None

    def __getstate__(self) -> dict:
        # joblib ships the callbacks to its workers; the servers stay with the sweep's process
        return {**self.__dict__, "backends": []}

    def on_multirun_start(self, config: DictConfig, **kwargs: object) -> None:
        if not self.share_servers:
            return
        shared: dict[str, str] = {}
        try:
            for backend in wanted_servers(config):
                self.backends.append(backend)
                backend.start()
                shared[str(backend.share_key())] = str(backend.base_url)
                _say(f"sweep: one {backend.config.type} server for all jobs at {backend.base_url}")
        except BaseException:
            self._stop_servers()
            raise
        if shared:
            self.previous_env = os.environ.get(SHARED_SERVERS_ENV)
            os.environ[SHARED_SERVERS_ENV] = json.dumps(shared)

    def on_multirun_end(self, config: DictConfig, **kwargs: object) -> None:
        try:
            failed = self._write_comparison(sweep_dir(config)) if self.compare else 0
        finally:
            self._stop_servers()
        if failed:
            _say(f"sweep: {failed} job(s) failed; their summary.json says why")
            sys.exit(1)

    def _write_comparison(self, directory: Path) -> int:
        """Print and write the table; returns how many jobs failed."""
        from .compare import TABLE_CSV, TABLE_MD, markdown, write_comparison

        frame = write_comparison(directory)
        if frame.is_empty():
            _say(f"sweep: no runs under {directory} to compare")
            return 0
        print(markdown(frame), file=sys.stderr, end="")
        _say(f"sweep: comparison written to {directory / TABLE_MD} and {TABLE_CSV}")
        return frame.filter(frame["status"] == "failed").height

    def _stop_servers(self) -> None:
        for backend in self.backends:
            backend.close()
        self.backends.clear()
        if self.previous_env is None:
            os.environ.pop(SHARED_SERVERS_ENV, None)
        else:
            os.environ[SHARED_SERVERS_ENV] = self.previous_env
