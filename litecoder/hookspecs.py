"""The hooks litecoder calls; every built-in feature is registered through them.

Registration hooks receive a ``register`` callback. Calling it twice with one name is an
error unless the second call passes ``replace=True``, so replacing a built-in is always
on purpose. All hooks are called for every plugin (none is ``firstresult``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import pluggy

if TYPE_CHECKING:
    from .run import Run

hookspec = pluggy.HookspecMarker("litecoder")


class Register(Protocol):
    """The callback every registration hook receives."""

    def __call__(self, name: str, value: Any, config: type | None = None, *, replace: bool = False) -> None:
        """Register ``value`` (a factory, a ``DomainConfig``, a build function) as ``name``;
        ``config`` is the schema dataclass of the component's settings: the option of its group
        for a backend, sandbox, agent or executor, the run config's node ``<name>`` for a
        stage, ``export.<name>`` for an exporter; an error for domains and image builders.
        ``replace=True`` replaces on purpose."""


@hookspec
def litecoder_register_stages(register: Register) -> None:
    """Register pipeline stages.

    ``register(name, StageClass, config=SchemaDataclass, *, replace=False)``; the class
    subclasses ``litecoder.stage.Stage`` (``run(run) -> dict`` and its declaration: ``order``
    in ``stage=all``, ``calls_model``, ``produces_tasks``, ``report_section``) or
    ``litecoder.stage.ItemStage`` (items, the work for one, tables; the runner does the rest). The
    config dataclass (optional) becomes the run config's node ``<name>``, read as
    ``run.cfg.<name>``. ``replace=True`` swaps out a stage another plugin registered under the
    same name, and its schema with it.
    """


@hookspec
def litecoder_register_backends(register: Register) -> None:
    """Register LLM backends.

    ``register(name, factory, config=SchemaDataclass, *, replace=False)``. The config
    dataclass becomes the option ``backend=<name>`` (and ``backend@<stage>.backend=<name>``);
    ``factory(cfg, run_dir)`` returns a ``litecoder.backends.base.Backend``.
    """


@hookspec
def litecoder_register_domains(register: Register) -> None:
    """Register task domains.

    ``register(name, DomainConfig | path_to_yaml)``. A ``DomainConfig`` instance becomes
    the option ``domain=<name>``. Plugins that ship ``conf/domain/<name>.yaml`` through
    ``litecoder_config_search_paths`` need not call this: those files are registered for
    them.
    """


@hookspec
def litecoder_register_sandboxes(register: Register) -> None:
    """Register sandboxes (where model-written commands run).

    ``register(name, factory, config=SchemaDataclass, *, replace=False)``; the config becomes
    ``sandbox=<name>``.
    """


@hookspec
def litecoder_register_image_builders(register: Register) -> None:
    """Register ways to make a sandbox base image that is missing.

    ``register(name, build)``; ``build(sandbox_config, docker_client) -> image id``. The
    name is what ``sandbox.builder`` selects.
    """


@hookspec
def litecoder_register_agents(register: Register) -> None:
    """Register terminal agents (the loop that turns model replies into commands).

    ``register(name, factory, config=SchemaDataclass, *, replace=False)``; the config becomes
    ``agent=<name>``.
    """


@hookspec
def litecoder_register_executors(register: Register) -> None:
    """Register executors (where per-item model requests and container work run).

    ``register(name, factory, config=SchemaDataclass, *, replace=False)``; the config becomes
    ``executor=<name>``; ``factory(cfg)`` returns a ``litecoder.executors.base.Executor``.
    """


@hookspec
def litecoder_register_exporters(register: Register) -> None:
    """Register dataset exporters for the ``export`` stage.

    ``register(name, factory, config=SchemaDataclass, *, replace=False)``; ``factory()``
    returns an object with ``export(run) -> dict`` that writes under ``run.dir`` and returns counts for the summary,
    and ``needs``, what it reads: ``"trajectories"`` (the default; ``litecoder.exporters.base.kept_rollouts``)
    or ``"environments"`` (``export_candidates``: ready tasks with certificate, best rollout and pass rate).
    An exporter whose input the run lacks is skipped with one line.
    ``export.formats`` lists the names that run. The config dataclass (optional) becomes ``export.<name>``.
    """


@hookspec
def litecoder_config_search_paths() -> list[str]:
    """Return Hydra config search paths (``pkg://package.conf`` or ``file:///dir``).

    A plugin's ``conf/domain/foo.yaml`` on such a path becomes ``domain=foo``; the same holds
    for every other config group.
    """
    return []


@hookspec
def litecoder_before_stage(stage: str, run: Run) -> None:
    """Called before a stage starts, with its name and the ``litecoder.run.Run``."""


@hookspec
def litecoder_after_stage(stage: str, run: Run, summary: dict) -> None:
    """Called after a stage finished, with the summary it returned (counts by state)."""
