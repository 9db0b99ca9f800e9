"""Harbor task directories: every ready (certified) task becomes an evaluation or RL environment.

``harbor/<task-id>/`` holds ``instruction.md``, ``task.toml``, ``environment/Dockerfile``
(a public Debian image, the packages the task's image had at their versions, see
``rebuild``, then ``state.tar``, the files the environment agent created, and the removal
of what it deleted), ``tests/test.sh`` (runs the task's verifier and writes the
reward to ``/logs/verifier/reward.txt``) and ``solution/solve.sh`` (the commands of the
shortest kept successful rollout, replayed as a script, or the environment agent's reference
solution when no rollout succeeded). ``task.toml``'s ``[metadata]`` carries the difficulty
label and pass rate, ``[metadata.certificate]`` the certification verdicts. With
``export.harbor.check_solution`` each directory is built and its solution run against its
test; ``harbor/index.jsonl`` records every task's outcome.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shlex
import shutil
import tomllib
from pathlib import Path
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

from .. import __version__, hookimpl
from ..sandboxes.base import shell_quote
from ..sandboxes.names import LABEL_RUN, run_id
from ..agents.base import is_key
from ..verification import GUARD_SH, SEPARATE, SHARED, capture, collect, image_of, mode_of, normal_outputs, receive
from .base import ENVIRONMENTS, Exporter, ExportTask, TaskResult, export_tasks
from .rebuild import Pins, dockerfile_lines, pins, public_base

if TYPE_CHECKING:
    from ..run import Run
    from ..sandboxes.base import Session

log = logging.getLogger(__name__)


@dataclass
class HarborExportConfig:
    #: FROM image of each task's environment/Dockerfile; null: ``debian:<sandbox.suite>``, the
    #: public release the base image is made from (the packages are installed on it, pinned)
    base_image: Optional[str] = None
    #: copy this machine's added CAs (/usr/local/share/ca-certificates/*.crt) into tasks that
    #: install Python or npm packages, so they build behind a TLS-intercepting proxy too
    local_ca_certs: bool = True
    #: build each exported task, run solution/solve.sh and tests/test.sh in it, and record
    #: whether the reward is 1 (``harbor/index.jsonl``)
    check_solution: bool = True
    #: a task whose starting-state archive is larger than this is not exported
    max_state_bytes: int = 512 << 20
    #: seconds for building the image and for each script of the check
    check_timeout: float = 600.0
    #: what the check's image build reaches for its package installs (``registries``,
    #: ``none``: only packages the base image has, ``full``)
    check_network: str = "registries"
    #: keep only tasks whose teacher pass rate (pass@1 over ``trajectory.rollouts``) lies in
    #: ``[low, high]``, e.g. ``[0.1, 0.9]`` for RL; null: every certified task. Also applies to
    #: the other task formats
    pass_rate: Optional[list[float]] = None

HARBOR_DIR = "harbor"
STATE_TAR = "state.tar"
#: in-container paths used while archiving; the ``.litecoder`` prefix keeps them out of diffs
_ADDED, _MODIFIED, _KEEP, _ARCHIVE = ("/tmp/.litecoder-added", "/tmp/.litecoder-modified",
                                      "/tmp/.litecoder-keep", "/tmp/.litecoder-state.tar")
ARCHIVE_SCRIPT = f"""
set -e
: > {_KEEP}
while IFS= read -r -d '' path; do
  if [ -d "$path" ] && [ ! -L "$path" ]; then continue; fi
  printf '%s\\0' "${{path#/}}" >> {_KEEP}
done < {_MODIFIED}
cat {_ADDED} >> {_KEEP}
if [ -s {_KEEP} ]; then
  tar -C / --null -T {_KEEP} -cpf {_ARCHIVE}
  stat -c %s {_ARCHIVE}
else
  echo 0
fi
"""

TEST_SH = """#!/bin/bash
# Writes 1 to /logs/verifier/reward.txt when the task is solved, otherwise 0.
mkdir -p /logs/verifier
if bash "$(dirname "$0")/verifier.sh"; then
  echo 1 > /logs/verifier/reward.txt
else
  echo 0 > /logs/verifier/reward.txt
fi
"""
#: for a task about the system itself, whose verifier runs where the agent worked
GUARDED_TEST_SH = TEST_SH.replace("mkdir -p /logs/verifier\n", """mkdir -p /logs/verifier
# The integrity guard: a program, link or start file the agent replaced voids the reward.
""" + GUARD_SH.strip() + """
if ! guard "$(dirname "$0")"; then
  echo 0 > /logs/verifier/reward.txt
  exit 0
fi
""")


def top_level(paths: list[str]) -> list[str]:
    """Added paths without those inside another added path (the archive recurses)."""
    kept: list[str] = []
    for path in sorted(paths):
        if not any(path.startswith(parent.rstrip("/") + "/") for parent in kept):
            kept.append(path)
    return kept


def solve_script(trajectory: dict, workdir: str = "/root") -> str:
    """What the agent ran, as a bash script: the keystrokes it typed (lone key presses such as
    C-c are left out), or each ``bash`` tool call in a subshell; all start in ``workdir``, where
    the agent's shell started."""
    typed = []
    for step in trajectory["steps"]:
        for call in step.get("tool_calls") or []:
            keystrokes = call["arguments"].get("keystrokes", "")
            command = call["arguments"].get("command", "") if call["function_name"] == "bash" else ""
            if keystrokes and not is_key(keystrokes):
                typed.append(keystrokes)
            elif command.strip():
                typed.append(f"(\n{command.rstrip()}\n)\n")
    body = "".join(typed)
    if body and not body.endswith("\n"):
        body += "\n"
    header = (f"#!/bin/bash\n# Replays what the teacher typed in rollout {trajectory['extra'].get('task_id')}"
              f" #{trajectory['extra'].get('rollout')} (reward 1).\ncd {shlex.quote(workdir)}\n")
    return header + body


def solution_script(task: ExportTask) -> str:
    """The shortest successful rollout replayed, or else the environment agent's reference
    solution (which certification ran against the verifier)."""
    workdir = task.environment.get("workdir") or "/root"
    if task.rollout is not None:
        return solve_script(task.rollout.trajectory, workdir)
    body = task.environment["solution"]
    if body.startswith("#!"):
        body = body.split("\n", 1)[1] if "\n" in body else ""
    header = f"#!/bin/bash\n# The reference solution of task {task.task_id}, written with its verifier.\n"
    header += f"cd {shlex.quote(workdir)}\n"
    return header + body + ("" if body.endswith("\n") else "\n")


#: files of a Terminal-Bench task directory that are not its build context's business
NOT_CONTEXT = ("task.yaml", "run-tests.sh", "solution.sh", "solution.yaml", "tests")


def copy_origin_environment(origin: dict, environment: Path) -> Pins:
    """An imported task's own build context into ``environment/`` (a Dockerfile that starts
    from its prebuilt image when it named one instead); returns no pinned packages."""
    if origin.get("context"):
        source = Path(origin["context"])
        skipped = NOT_CONTEXT if origin["format"] == "terminal_bench" else ()
        for path in source.iterdir():
            if path.name in skipped:
                continue
            target = environment / path.name
            shutil.copytree(path, target, symlinks=True) if path.is_dir() else shutil.copy2(path, target)
    else:
        (environment / "Dockerfile").write_text(f"FROM {origin['image']}\n")
    return Pins()


def artifacts(env: dict) -> list[str]:
    """The paths Harbor collects for a separate verifier: a task's declared outputs."""
    return normal_outputs(env.get("outputs") or []) if mode_of(env) == SEPARATE else []


def certificate_metadata(cert: dict) -> dict:
    """The certificate's verdicts for ``[metadata.certificate]`` (empty: none was made)."""
    keys = ("certified", "nop", "oracle", "stable", "wrong_total", "wrong_caught", "review_passed", "cheat_trials",
            "cheats_rewarded", "repairs", "container_runs")
    names = {"wrong_total": "wrong_solutions_tried", "wrong_caught": "wrong_solutions_caught"}
    return {names.get(k, k): cert[k] for k in keys if cert.get(k) is not None}


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)  # JSON string escapes are valid TOML


#: Harbor's task schema that ``task.toml`` follows
SCHEMA_VERSION = "1.4"


def task_toml(sections: dict[str, dict], artifacts: tuple[str, ...] | list[str] = ()) -> str:
    """``task.toml`` in Harbor's schema: ``schema_version`` at the root, then the sections, then
    one ``[[artifacts]]`` per path collected from the agent's container for the verifier's."""
    lines = [f'schema_version = "{SCHEMA_VERSION}"']
    for name, values in sections.items():
        kept = [f"{k} = {_toml(v)}" for k, v in values.items() if v is not None]
        if kept:
            lines += ["", f"[{name}]"] + kept
    for path in artifacts:
        lines += ["", "[[artifacts]]", f"source = {_toml(path)}"]
    return "\n".join(lines) + "\n"


def memory_mb(text: str) -> int:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)b?", str(text).strip().lower())
    if not match:
        return 2048
    scale = {"": 1 / 2**20, "k": 1 / 1024, "m": 1, "g": 1024, "t": 1024**2}[match.group(2)]
    return int(float(match.group(1)) * scale)


class HarborExporter(Exporter):
    needs = ENVIRONMENTS

    def export(self, run: Run) -> dict:
        root = run.path(HARBOR_DIR)

        def write(task: ExportTask) -> TaskResult:
            directory = self.write_task(run, root, task)
            if not run.cfg.export.harbor.check_solution:
                return directory, None
            reward, detail = self.check(run, directory)
            return directory, (reward == "1", detail)

        return export_tasks(run, root, write)

    def write_task(self, run: Run, root: Path, task: ExportTask) -> Path:
        """Write one task's Harbor directory under ``root`` (other task formats start from it)."""
        task_id, env = task.task_id, task.environment
        building = root / f".{task_id}.partial"
        shutil.rmtree(building, ignore_errors=True)
        (building / "environment").mkdir(parents=True)
        (building / "tests").mkdir()
        (building / "solution").mkdir()
        if env.get("origin"):  # an imported task keeps the environment it came with
            packages = copy_origin_environment(env["origin"], building / "environment")
        else:
            packages = self._write_environment(run, task, building / "environment")
        (building / "instruction.md").write_text(env["text"].strip() + "\n")
        self._write_tests(run, task, building / "tests")
        (building / "solution" / "solve.sh").write_text(solution_script(task))
        for script in ("tests/test.sh", "tests/verifier.sh", "solution/solve.sh"):
            (building / script).chmod(0o755)
        (building / "task.toml").write_text(task_toml(self.sections(run, task, packages), artifacts(env)))
        final = root / task_id
        shutil.rmtree(final, ignore_errors=True)
        building.rename(final)
        return final

    def _write_tests(self, run: Run, task: ExportTask, tests: Path) -> None:
        """``tests/``: the verifier and ``test.sh``; a synthesized task about the system itself
        gets the integrity guard and the baseline it checks, read from a pristine container of
        the task's image (an imported task keeps its own tests)."""
        env = task.environment
        (tests / "verifier.sh").write_text(env["verifier"])
        if env.get("origin") or mode_of(env) != SHARED:
            (tests / "test.sh").write_text(TEST_SH)
            return
        session = run.sandbox().open(f"{task.task_id}-harbor-guard", image=image_of(env))
        try:
            baseline = capture(session, env)
        finally:
            session.remove()
        for name, text in baseline.guard_files(normal_outputs(env.get("outputs") or [])).items():
            (tests / name).write_text(text)
        (tests / "test.sh").write_text(GUARDED_TEST_SH)

    def _write_environment(self, run: Run, task: ExportTask, environment: Path) -> Pins:
        """``environment/``: a public Debian image, the packages the task's image had, pinned,
        then the files the environment agent created and the removal of what it deleted;
        returns the pinned packages."""
        cfg, task_id = run.cfg, task.task_id
        state = environment / STATE_TAR
        deleted = self._archive_state(run, task.environment, state)
        packages = pins(cfg, task.environment)
        dockerfile = [f"# Starting state of task {task_id}: Debian with the packages the task's image had, pinned,",
                      f"# then what the environment agent changed (made by litecoder {__version__})."]
        dockerfile += dockerfile_lines(public_base(cfg), packages, environment, bool(cfg.export.harbor.local_ca_certs))
        if deleted:
            dockerfile.append("RUN rm -rf -- " + " ".join(shell_quote(p) for p in deleted))
        if state.exists():  # a task that needs no starting state has no archive
            dockerfile.append(f"ADD {STATE_TAR} /")
        dockerfile += ["WORKDIR /root", ""]
        (environment / "Dockerfile").write_text("\n".join(dockerfile))
        return packages

    def sections(self, run: Run, task: ExportTask, packages: Pins) -> dict[str, dict]:
        """``task.toml``'s tables: the task, its metadata (difficulty, certificate, teacher,
        toolchain), and the limits the run's sandbox had."""
        cfg, judged, rollout = run.cfg, task.judged, task.rollout
        origin = task.environment.get("origin") or {}
        domain = task.environment.get("category") or judged.get("domain") or cfg.domain.name
        sandbox = cfg.sandbox
        rate = task.pass_rate or {}
        return {
            "task": {"name": f"litecoder/{task.task_id}", "description": f"litecoder task from run {run.name}"},
            "metadata": {"author_name": "litecoder", "difficulty": task.difficulty, "category": domain,
                         "tags": origin.get("tags") or [t for t in (domain, judged.get("subtopic"), "synthetic") if t],
                         "imported_from": origin.get("name"), "source_format": origin.get("format"),
                         "source_run": run.name, "solution": "teacher rollout" if rollout else "reference solution",
                         "teacher_pass_rate": rate.get("pass_at_1"), "teacher_rollouts": rate.get("rollouts"),
                         "teacher_model": rollout.record.get("model") if rollout else None,
                         "teacher_turns": rollout.record.get("turns") if rollout else None,
                         "toolchain_image": task.environment.get("base_image"),
                         "debian_packages": packages.debian, "python_packages": packages.python,
                         "npm_packages": packages.npm},
            "metadata.certificate": certificate_metadata(task.certificate),
            "verifier": {"timeout_sec": float(task.environment.get("verifier_timeout") or cfg.trajectory.verifier_timeout),
                         # a fresh copy of the environment that receives only the [[artifacts]]
                         "environment_mode": SEPARATE if artifacts(task.environment) else None},
            "agent": {"timeout_sec": float(cfg.agent.get("max_wall_time", 1800.0))},
            "environment": {"build_timeout_sec": float(cfg.export.harbor.check_timeout),
                            "cpus": max(1, math.ceil(float(sandbox.cpus))),  # the schema's cpus are whole
                            "memory_mb": memory_mb(sandbox.memory),
                            "storage_mb": int(sandbox.get("max_disk_bytes", 4 << 30)) >> 20,
                            # the agent's network in the run; "registries" is not expressible
                            "network_mode": "no-network" if cfg.trajectory.network == "none" else "public"},
        }

    def _archive_state(self, run: Run, env: dict, target: Path) -> list[str]:
        """Write the environment's added and changed files to ``target`` (nothing when there are
        none); returns the deleted paths."""
        added = top_level(env.get("added_paths") or [])
        elsewhere = set(env.get("added_paths") or []) | set(env.get("deleted_paths") or [])
        modified = [p for p in env.get("changed_paths") or []
                    if p not in elsewhere and not any(p.startswith(a + "/") for a in added)]
        if "added_paths" not in env:
            log.warning("environment of %s predates added/deleted paths; exporting changed files only", env["task_id"])
        if not added and not modified:
            return list(env.get("deleted_paths") or [])
        limit = int(run.cfg.export.harbor.max_state_bytes)
        session = run.sandbox().open(f"{env['task_id']}-harbor", image=env.get("image_id") or env["image"])
        try:
            session.write_files({_ADDED: "".join(p.lstrip("/") + "\0" for p in added),
                                 _MODIFIED: "".join(p + "\0" for p in modified)})
            result = session.exec(ARCHIVE_SCRIPT, timeout=float(run.cfg.export.harbor.check_timeout))
            if not result.ok:
                raise ValueError(f"archiving the starting state failed: {result.output.strip()[-300:]}")
            size = int(result.output.strip().splitlines()[-1])
            if size > limit:
                raise ValueError(f"starting state is {size} bytes, over export.harbor.max_state_bytes={limit}")
            if size:  # 0: only directories changed (their contents are listed on their own)
                target.write_bytes(session.read_file(_ARCHIVE, max_bytes=limit + 1))
        finally:
            session.remove()
        return list(env.get("deleted_paths") or [])

    def check(self, run: Run, directory: Path) -> tuple[str, str]:
        """Build the task, run solve.sh then test.sh in it, as Harbor would (with a separate
        verifier: test.sh in a fresh container that receives the artifacts); returns (reward
        text, detail)."""
        sandbox = run.sandbox()
        timeout = float(run.cfg.export.harbor.check_timeout)
        tag = f"litecoder-harbor-check:{directory.name}"
        image = sandbox.build_image(directory / "environment", tag=tag, labels={LABEL_RUN: run_id(run.dir)},
                                    timeout=timeout, network=str(run.cfg.export.harbor.check_network))
        collected = [a["source"] for a in tomllib.loads((directory / "task.toml").read_text()).get("artifacts", [])]
        sessions = []
        try:
            session = sandbox.open(f"{directory.name}-check", image=image)
            sessions.append(session)
            copy_scripts(session, directory, "solution")
            solve = session.exec("bash /solution/solve.sh", timeout=timeout)
            if collected:  # as Harbor does it: a fresh container receives the artifacts
                archives = collect(session, collected, int(run.cfg.verification.max_output_bytes))
                session = receive(sandbox, image, f"{directory.name}-check-verify", archives)
                sessions.append(session)
            copy_scripts(session, directory, "tests")  # as in Harbor: the tests arrive only after the solution ran
            session.exec("bash /tests/test.sh", timeout=timeout)
            try:
                reward = session.read_file("/logs/verifier/reward.txt").decode().strip()
            except Exception:  # noqa: BLE001 - a missing file is a failed check
                reward = ""
            return reward, f"solve.sh exited {solve.exit_code}; reward {reward or 'missing'}"
        finally:
            for session in sessions:
                session.remove()
            sandbox.remove_image(image)


def copy_scripts(session: Session, directory: Path, sub: str) -> None:
    session.write_files({f"/{sub}/{p.name}": p.read_bytes() for p in (directory / sub).iterdir()}, mode=0o755)


@hookimpl
def litecoder_register_exporters(register):
    register("harbor", HarborExporter, config=HarborExportConfig)
