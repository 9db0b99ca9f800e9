"""The built-in taxonomy: the seven domains in ``conf/domain/`` registered as a plugin.

Registering them (rather than only finding the files) lets a third-party domain with the
same name fail loudly instead of silently shadowing or being shadowed.
"""

from __future__ import annotations

from . import hookimpl
from .paths import core_conf_dir


@hookimpl
def litecoder_register_domains(register):
    for path in sorted((core_conf_dir() / "domain").glob("*.yaml")):
        register(path.stem, path)
