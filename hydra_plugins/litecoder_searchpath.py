"""Hydra discovers this module and asks litecoder's plugins for extra config trees."""

from __future__ import annotations

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class LitecoderSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from litecoder.plugins import get_plugins

        for plugin, path in get_plugins().search_paths_by_plugin():
            search_path.append(provider=f"litecoder:{plugin}", path=path)
