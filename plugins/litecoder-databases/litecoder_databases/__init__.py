"""litecoder plugin: the `databases` domain, contributed as a config tree."""

from litecoder import hookimpl


@hookimpl
def litecoder_config_search_paths():
    return ["pkg://litecoder_databases.conf"]
