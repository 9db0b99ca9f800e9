"""The layer rules of docs/architecture.md, held against every runtime import in litecoder/.

Imports under ``if TYPE_CHECKING:`` are annotations only and may point anywhere.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "litecoder"

CORE = {"errors", "config", "paths", "registry", "plugins", "hookspecs", "store", "tables", "records", "outcomes",
        "tallies", "replies", "usage", "templates", "chat_template", "dedup", "decontaminate", "difficulty", "atif",
        "overrides", "budget", "task_dirs", "ready_tasks", "verification", "review", "page",
        "domains"}
#: the contracts between the layers: what a stage, an agent, a sandbox, a backend, an executor
#: and an exporter are
CONTRACTS = {"stage", "agents.base", "sandboxes.base", "sandboxes.names", "backends.base", "executors.base",
             "exporters.base"}
RUNNER = {"runner", "dispatch", "progress"}
#: modules that belong to one stage without being one (the environment stage's checks)
STAGE_HELPERS = {"certification", "adversarial", "cheating"}
COMPONENT_KINDS = {"backends", "agents", "sandboxes", "executors", "exporters"}
ENTRY = {"cli", "run", "sweep", "compare", "__main__", "__init__"}

MAY_IMPORT = {
    "core": {"core", "contracts"},
    "contracts": {"core", "contracts"},
    "components": {"core", "contracts", "components"},
    "runner": {"core", "contracts", "runner"},
    "stages": {"core", "contracts", "runner", "components", "stages"},
}
#: the imports across the rules that the architecture states as its exceptions
EXCEPTIONS = {
    ("stages.eval", "stages.trajectory"),  # eval is the trajectory stage with another task set
    ("exporters.rebuild", "sandboxes.toolchain"),  # a task's Dockerfile reinstalls the toolchain it was made with
}


def layer(module: str) -> str:
    if module in CONTRACTS:
        return "contracts"
    if module in CORE:
        return "core"
    if module in RUNNER:
        return "runner"
    if module.startswith("stages") or module in STAGE_HELPERS:
        return "stages"
    if module.split(".")[0] in COMPONENT_KINDS:
        return "components"
    if module in ENTRY or module.startswith("testing"):
        return "entry"
    raise AssertionError(f"litecoder.{module} is in no layer: add it to tests/test_layers.py and docs/architecture.md")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def runtime_imports(path: Path) -> set[str]:
    """The litecoder modules ``path`` imports when it runs (relative to the package)."""
    module = module_name(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and isinstance(child.test, ast.Name) and child.test.id == "TYPE_CHECKING":
                continue
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package[:len(package) - (child.level - 1)] + ([child.module] if child.module else [])
                elif (child.module or "").startswith("litecoder"):
                    base = child.module.split(".")[1:]
                else:
                    base = None
                if base is not None:
                    for alias in child.names:
                        candidate = ".".join(base + [alias.name])
                        is_module = (PACKAGE / candidate.replace(".", "/")).with_suffix(".py").is_file() or \
                            (PACKAGE / candidate.replace(".", "/")).is_dir()
                        found.add(candidate if is_module else ".".join(base))
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m and m != "__init__"}


def test_no_module_imports_across_the_layer_rules():
    broken = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        if module == "__init__" or module.endswith(".__init__"):
            continue
        mine = layer(module)
        for target in sorted(runtime_imports(path)):
            theirs = layer(target)
            if (module, target) in EXCEPTIONS:
                continue
            if mine in MAY_IMPORT and theirs not in MAY_IMPORT[mine]:
                broken.append(f"{module} ({mine}) imports {target} ({theirs})")
            elif mine == theirs == "components" and target not in CONTRACTS and \
                    module.split(".")[0] != target.split(".")[0]:
                broken.append(f"{module} imports {target}, another component kind's module (not its contract)")
            elif mine == "stages" and module.startswith("stages.") and target.startswith("stages."):
                broken.append(f"{module} imports {target}: a stage reads another's results from the store, not its code")
    assert broken == [], "\n".join(broken)


def test_every_module_is_in_a_layer():
    for path in PACKAGE.rglob("*.py"):
        layer(module_name(path))
