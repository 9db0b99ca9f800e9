"""Task directories of other harnesses, read as litecoder tasks: Harbor and Terminal-Bench 1.

A Harbor task directory has ``instruction.md``, ``task.toml``, ``environment/Dockerfile`` (or
``environment/docker-compose.yaml`` with a ``main`` service, or a ``docker_image`` in
``task.toml``), ``tests/test.sh`` and optionally ``solution/solve.sh``; a
Terminal-Bench 1 task directory has ``task.yaml``, ``Dockerfile``, ``run-tests.sh``, ``tests/``
and optionally ``solution.sh``. Each becomes a ``ForeignTask``: its build context, and its
tests and solution as self-contained bash scripts. The tests travel inside the verifier
script (a tar, base64 in a heredoc) and arrive in the container only when the verifier runs,
as in their own harness, so the agent never sees them. The verifier exits 0 when the tests
score the task solved: Harbor's reward file holds a reward of at least 1, or every test in
Terminal-Bench's pytest summary passed.
"""

from __future__ import annotations

import base64
import io
import re
import shlex
import tarfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import yaml

from .errors import ConfigError

HARBOR_INSTRUCTION, TB1_TASK = "instruction.md", "task.yaml"
HARBOR, TERMINAL_BENCH = "harbor", "terminal_bench"

HARBOR_VERDICT = r"""reward=""
if [ -f /logs/verifier/reward.json ] && command -v python3 >/dev/null 2>&1; then
  reward=$(python3 -c 'import json; v = json.load(open("/logs/verifier/reward.json")); v = v if isinstance(v, dict) else {"reward": v}; print(min(float(x) for x in v.values()) if v else 0)')
elif [ -f /logs/verifier/reward.txt ]; then
  reward=$(tr -d '[:space:]' < /logs/verifier/reward.txt)
fi
echo "reward: ${reward:-missing}"
awk -v r="$reward" 'BEGIN { exit !(r != "" && r + 0 >= 1) }'
"""

TB1_VERDICT = r"""out=$(mktemp)
TEST_DIR=/tests bash /tests/run-tests.sh > "$out" 2>&1
status=$?
cat "$out"
summary=$(sed -n '/short test summary info/,$p' "$out")
if [ -n "$summary" ]; then
  echo "$summary" | grep -Eq '^(FAILED|ERROR) ' && exit 1
  echo "$summary" | grep -Eq '^PASSED ' && exit 0
  exit 1
fi
exit "$status"
"""


@dataclass
class ForeignTask:
    """One task directory of another harness, ready to build and to check."""

    format: str
    #: the collection's directory name and the task directory below it
    name: str
    path: str
    instruction: str
    #: the build context (a directory with a Dockerfile); None with ``image``
    context: Optional[str]
    #: a prebuilt image to start from instead (Harbor's ``docker_image``)
    image: Optional[str]
    verifier: str
    solution: Optional[str]
    workdir: Optional[str]
    verifier_timeout: Optional[float]
    category: Optional[str]
    difficulty: Optional[str]
    tags: list[str] = field(default_factory=list)


def find_task_dirs(root: Path) -> list[tuple[str, Path]]:
    """``(format, directory)`` of every Harbor and Terminal-Bench 1 task directory below ``root``."""
    found = [(HARBOR, p.parent) for p in sorted(root.rglob(HARBOR_INSTRUCTION))]
    found += [(TERMINAL_BENCH, p.parent) for p in sorted(root.rglob(TB1_TASK))]
    return [(kind, d) for kind, d in found if not any(part.startswith(".") for part in d.relative_to(root).parts)]


def task_name(root: Path, directory: Path) -> str:
    return root.name if directory == root else f"{root.name}/{directory.relative_to(root)}"


def tb1_instruction(data: dict) -> str:
    if isinstance(data.get("instruction"), str):
        return data["instruction"]
    # older Terminal-Bench tasks list their descriptions instead
    descriptions = data.get("descriptions") or []
    return "\n".join(d.get("description", "") for d in descriptions if isinstance(d, dict))


def instruction(kind: str, directory: Path) -> str:
    if kind == HARBOR:
        return (directory / HARBOR_INSTRUCTION).read_text(encoding="utf-8")
    return tb1_instruction(yaml.safe_load((directory / TB1_TASK).read_text(encoding="utf-8")) or {})


def read_task(kind: str, root: Path, directory: Path, *, max_bytes: int) -> ForeignTask:
    """The task in ``directory``; ``ValueError`` says what is missing or too big."""
    reader = _read_harbor if kind == HARBOR else _read_terminal_bench
    return reader(task_name(root, directory), directory, max_bytes)


def _read_harbor(name: str, directory: Path, max_bytes: int) -> ForeignTask:
    try:
        toml = tomllib.loads((directory / "task.toml").read_text(encoding="utf-8")) if (directory / "task.toml").is_file() else {}
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"task.toml does not parse: {exc}") from exc
    environment, metadata = toml.get("environment") or {}, toml.get("metadata") or {}
    context, image, workdir = _harbor_environment(directory / "environment", environment)
    if not (directory / "tests" / "test.sh").is_file():
        raise ValueError("no tests/test.sh")
    solve = directory / "solution" / "solve.sh"
    verifier = _unpacking("/tests", _tar_of(directory / "tests", max_bytes), workdir) + HARBOR_PREAMBLE + "bash /tests/test.sh\n" + HARBOR_VERDICT
    solution = (_unpacking("/solution", _tar_of(directory / "solution", max_bytes), workdir) + "bash /solution/solve.sh\n"
                if solve.is_file() else None)
    timeout = (toml.get("verifier") or {}).get("timeout_sec")
    return ForeignTask(HARBOR, name, str(directory), instruction(HARBOR, directory), context, image,
                       verifier, solution, workdir,
                       float(timeout) if timeout else None, _text(metadata.get("category")),
                       _text(metadata.get("difficulty")), [str(t) for t in metadata.get("tags") or []])


def _harbor_environment(folder: Path, environment: dict) -> tuple[str | None, str | None, str | None]:
    """``(build context, prebuilt image, workdir)`` of a Harbor task: its Dockerfile, else the
    ``main`` service of its docker-compose.yaml, else ``[environment] docker_image``. The
    workdir is ``[environment] workdir``, else the service's ``working_dir``, else WORKDIR."""
    main = _compose_main(folder) if (folder / "docker-compose.yaml").is_file() else {}
    workdir = environment.get("workdir") or main.get("working_dir")
    build = main.get("build")
    if (folder / "Dockerfile").is_file() and not build:
        return str(folder), None, workdir or _workdir(folder / "Dockerfile")
    if build:
        context = (folder / (build if isinstance(build, str) else build.get("context", "."))).resolve()
        dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
        if dockerfile != "Dockerfile" or not (context / "Dockerfile").is_file():
            raise ValueError(f"the main service builds {dockerfile!r} in {context.name}/; litecoder builds a file "
                             "named Dockerfile at the root of its context")
        return str(context), None, workdir or _workdir(context / "Dockerfile")
    image = main.get("image") or environment.get("docker_image")
    if image:
        return None, str(image), workdir
    raise ValueError("no environment/Dockerfile, no main service in environment/docker-compose.yaml "
                     "and no [environment] docker_image")


def _compose_main(folder: Path) -> dict:
    """The ``main`` service of a Harbor task's docker-compose.yaml; a task that needs more
    services (a database beside it) is refused, since litecoder gives each task one container."""
    try:
        services = (yaml.safe_load((folder / "docker-compose.yaml").read_text(encoding="utf-8")) or {})["services"]
        others = sorted(set(services) - {"main"})
    except (yaml.YAMLError, KeyError, TypeError) as exc:
        raise ValueError(f"environment/docker-compose.yaml has no services ({exc})") from exc
    if others:
        raise ValueError(f"environment/docker-compose.yaml starts services beside main ({', '.join(others)}); "
                         "litecoder runs each task in one container")
    return services.get("main") or {}


HARBOR_PREAMBLE = "mkdir -p /logs/verifier && rm -f /logs/verifier/reward.txt /logs/verifier/reward.json\n"


def _read_terminal_bench(name: str, directory: Path, max_bytes: int) -> ForeignTask:
    data = yaml.safe_load((directory / TB1_TASK).read_text(encoding="utf-8")) or {}
    if not (directory / "Dockerfile").is_file():
        raise ValueError("no Dockerfile")
    if not (directory / "run-tests.sh").is_file():
        raise ValueError("no run-tests.sh")
    workdir = _workdir(directory / "Dockerfile")
    files = {"run-tests.sh": directory / "run-tests.sh"}
    if (directory / "tests").is_dir():
        files.update({str(p.relative_to(directory / "tests")): p for p in sorted((directory / "tests").rglob("*")) if p.is_file()})
    verifier = _unpacking("/tests", _tar_of_files(files, max_bytes), workdir) + TB1_VERDICT
    solve = directory / "solution.sh"
    solution = (_unpacking("/solution", _tar_of_files({"solution.sh": solve}, max_bytes), workdir)
                + "bash /solution/solution.sh\n") if solve.is_file() else None
    timeout = data.get("max_test_timeout_sec")
    return ForeignTask(TERMINAL_BENCH, name, str(directory), tb1_instruction(data), str(directory), None, verifier,
                       solution, workdir, float(timeout) if timeout else None, _text(data.get("category")),
                       _text(data.get("difficulty")), [str(t) for t in data.get("tags") or []])


def _text(value: object) -> str | None:
    return str(value) if value not in (None, "") else None


def _workdir(dockerfile: Path) -> str | None:
    """The last ``WORKDIR`` of a Dockerfile (where its harness starts the agent and the tests)."""
    found = re.findall(r"^\s*WORKDIR\s+(\S+)", dockerfile.read_text(encoding="utf-8", errors="replace"), re.MULTILINE | re.IGNORECASE)
    return found[-1].strip("\"'") if found else None


def _tar_of(directory: Path, max_bytes: int) -> bytes:
    return _tar_of_files({str(p.relative_to(directory)): p for p in sorted(directory.rglob("*")) if p.is_file()}, max_bytes)


def _tar_of_files(files: dict[str, Path], max_bytes: int) -> bytes:
    size = sum(p.stat().st_size for p in files.values())
    if size > max_bytes:
        raise ValueError(f"tests and solution files of {size} bytes are over ingest.max_file_bytes={max_bytes}")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, path in files.items():
            info = tar.gettarinfo(str(path), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            with path.open("rb") as handle:
                tar.addfile(info, handle)
    return buffer.getvalue()


def _unpacking(target: str, archive: bytes, workdir: str | None) -> str:
    """Bash that unpacks ``archive`` at ``target`` (over what is there: a Harbor export of the
    task has its own test.sh there) and moves to the task's working directory."""
    encoded = base64.encodebytes(archive).decode()
    move = f"cd {shlex.quote(workdir)} 2>/dev/null || cd /\n" if workdir else ""
    return (f"#!/bin/bash\nmkdir -p {target}\n"
            f"base64 -d > /tmp/.litecoder-files.tgz <<'LITECODER_FILES'\n{encoded}LITECODER_FILES\n"
            f"tar -xzf /tmp/.litecoder-files.tgz -C {target} && rm -f /tmp/.litecoder-files.tgz\n{move}")


def read_collections(paths: list[str], key: str, *, max_bytes: int) -> list[tuple[ForeignTask | None, str, str]]:
    """``(task, name, problem)`` per task directory below ``paths``: the task, or None and why it
    cannot be read. A path that does not exist or holds no task is a config error."""
    out = []
    for raw in paths:
        root = Path(raw).expanduser().resolve()
        if not root.exists():
            raise ConfigError(f"{key}: {raw} does not exist")
        found = find_task_dirs(root)
        if not found:
            raise ConfigError(f"{key}: no task directory (with {HARBOR_INSTRUCTION} or {TB1_TASK}) below {raw}")
        for kind, directory in found:
            try:
                task: ForeignTask | None = read_task(kind, root, directory, max_bytes=max_bytes)
                out.append((task, task_name(root, directory), ""))
            except (ValueError, OSError, yaml.YAMLError) as exc:
                out.append((None, task_name(root, directory), f"{kind} task {directory}: {exc}"))
    return out
