"""What a stage declares, once, and what the core learns from the declarations.

A stage is a class registered through ``litecoder_register_stages``. Its class attributes say
what the rest of litecoder needs to know about it: where it runs in ``stage=all``, whether it
calls a model (then it gets ``<name>.backend``, a price, a spend line and a sweep column),
whether its ready records are tasks (then trajectory, eval and export read them), and which
section of the report it draws. A stage whose work is a set of items subclasses ``ItemStage``
and says only what is its own: its items, the work for one item, its table; the runner
(``litecoder.runner.run_stage``, the one entry point that runs every stage) owns resume, the
to-do list, concurrency, progress, spending, the breaker, export in ``finally``, the counts
and the stop reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Generic, Iterable, TypeVar

if TYPE_CHECKING:
    from omegaconf import DictConfig
    from .backends.base import LLMClient
    from .page import Section
    from .plugins import Plugins
    from .run import Run
    from .runner import Done


class Stage:
    """A named step of a run that reads and writes the run directory."""

    name: str = ""
    #: position in ``stage=all`` (lower runs first); None: runs only when named
    order: int | None = None
    #: calls a model: it gets ``<name>.backend``, a price, a spend line and a sweep column
    calls_model: bool = False
    #: its ready records are tasks that trajectory, eval and export read
    produces_tasks: bool = False

    def run(self, run: Run) -> dict:
        """Do the work; return the summary (counts by outcome and facts) for the closing line.
        An ``ItemStage`` has no ``run`` of its own: the runner runs it from its declaration."""
        raise NotImplementedError

    def report_section(self, run: Run) -> "Section | None":
        """This stage's section of ``report.html`` (``litecoder.page`` draws its parts), or
        None when the stage has none."""
        return None


Item = TypeVar("Item")
#: ``work(item, client)``: one item's work on the stage's model client (an ``LLMClient``;
#: None for a stage that calls no model)
Work = Callable[[Item, Any], Awaitable["Done"]]


@dataclass
class Plan(Generic[Item]):
    """What an item stage has to do in this invocation."""

    #: the items still to do (finished ones left out), in order
    items: Iterable[Item]
    #: the work for one item
    work: Work[Item]
    #: progress units the items make (sampled tasks for requests of n choices)
    total: int
    #: summary facts beside the counts (``inputs``, ``planned``, ...)
    facts: dict = field(default_factory=dict)
    #: the progress bar's label; default: the stage's name
    label: str | None = None
    #: a reason of the stage's own to stop dispatching (a target reached); not a budget stop
    stop: Callable[[], str | None] | None = None
    #: items in flight that must finish before more start (``Dispatcher``)
    blocked: Callable[[int], bool] | None = None
    #: cleanup inside the stage's event loop (clients of its own)
    aclose: Callable[[], Awaitable[None]] | None = None


async def _no_work(item: object, client: LLMClient | None) -> Done:
    raise RuntimeError("a plan without items has no work to run")


def nothing_to_do(**facts: object) -> Plan[object]:
    """A plan for a stage whose items are all finished: it starts no sandbox and no model."""
    return Plan([], _no_work, total=0, facts=facts)


class ItemStage(Stage):
    """A stage whose work is a set of keyed items, each stored as soon as it ends."""

    #: what one item is called in progress lines
    unit: str = "item"
    #: what earlier results are called in the stale warning
    what: str = "results"
    #: the stage's table in the run directory (named in the breaker's message)
    table: str = ""

    def identity(self, cfg: DictConfig, backend_config: DictConfig) -> dict:
        """What the stage's results depend on; a change marks earlier results stale."""
        raise NotImplementedError

    def inputs(self, run: Run) -> set[str] | None:
        """The keys of every item (earlier results outside them are stale and redone); None when
        the items cannot be listed ahead (they are kept aside instead). Checks the config first."""
        return None

    def plan(self, run: Run, finished: set[str]) -> Plan[Any]:
        """The items not in ``finished`` and the work for one."""
        raise NotImplementedError

    def limit(self, run: Run) -> int:
        """Items at once: containers for stages that open them, else the backend's requests."""
        return int(run.cfg.sandbox.max_containers)

    def export(self, run: Run) -> None:
        """Rebuild the stage's tables from the store (also after an error or Ctrl-C)."""

    def summary(self, run: Run) -> dict:
        """Figures beyond the counts by state and outcome (pass rates, tokens)."""
        return {}


def stage_classes(plugins: "Plugins") -> dict[str, type[Stage]]:
    registry = plugins.registry("stage")
    return {name: registry.get(name) for name in registry.names()}


def pipeline(plugins: "Plugins") -> list[str]:
    """The stages of ``stage=all``, in order."""
    ordered = [(cls.order, name) for name, cls in stage_classes(plugins).items() if cls.order is not None]
    return [name for _, name in sorted(ordered)]


def model_stages(plugins: "Plugins") -> list[str]:
    """The stages that call a model, in pipeline order, then by name."""
    classes = stage_classes(plugins)
    return sorted((n for n, c in classes.items() if c.calls_model), key=lambda n: (classes[n].order is None,
                                                                                    classes[n].order or 0, n))


def task_sources(plugins: "Plugins") -> list[str]:
    """The stages whose ready records are tasks."""
    return [name for name, cls in stage_classes(plugins).items() if cls.produces_tasks]
