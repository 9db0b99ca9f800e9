"""Every solved task of a run as a Terminal-Bench 1.x task under ``<run>/tbench/<task-id>/``.

The starting state, the verifier and the solution are litecoder's Harbor export of the task
(``litecoder.exporters.harbor``): this exporter has Harbor's code write the task into a
staging directory and lays it out again the way Terminal-Bench's harness reads a task:

- ``task.yaml``: the instruction and the metadata (``parser_name: pytest``, timeouts);
- ``Dockerfile`` (Harbor's ``environment/Dockerfile``, with ``state.tar`` beside it) and the
  ``docker-compose.yaml`` every Terminal-Bench task has (a ``client`` service);
- ``solution.sh``: what the shortest solved kept rollout typed;
- ``run-tests.sh`` and ``tests/`` (``test_outputs.py`` and the task's ``verifier.sh``). The
  harness copies both to ``$TEST_DIR`` after the agent ran and reads pytest's short summary.

With ``export.harbor.check_solution`` (shared with the Harbor export, as are the base image,
the state size limit and ``check_timeout``), each task is built from its Dockerfile,
``solution.sh`` runs, then ``run-tests.sh``, and ``tbench/index.jsonl`` records whether every
test passed.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import yaml

from litecoder.exporters.base import ENVIRONMENTS, Exporter, ExportTask, TaskResult, export_tasks
from litecoder.exporters.harbor import HarborExporter
from litecoder.sandboxes.names import LABEL_RUN, run_id

TBENCH_DIR = "tbench"
STAGING = ".harbor-staging"
#: Terminal-Bench's difficulty words for litecoder's labels (a task no rollout solved is hard)
TB_DIFFICULTY = {"easy": "easy", "medium": "medium", "hard": "hard", "unsolved": "hard"}
TEST_NAME = "test_outputs.py::test_task_is_solved"

COMPOSE = """services:
  client:
    build:
      dockerfile: Dockerfile
    image: ${T_BENCH_TASK_DOCKER_CLIENT_IMAGE_NAME}
    container_name: ${T_BENCH_TASK_DOCKER_CLIENT_CONTAINER_NAME}
    command: [ "sh", "-c", "sleep infinity" ]
    environment:
      - TEST_DIR=${T_BENCH_TEST_DIR}
    volumes:
      - ${T_BENCH_TASK_LOGS_PATH}:${T_BENCH_CONTAINER_LOGS_PATH}
      - ${T_BENCH_TASK_AGENT_LOGS_PATH}:${T_BENCH_CONTAINER_AGENT_LOGS_PATH}
"""
OFFLINE = "    network_mode: none\n"

RUN_TESTS = f"""#!/bin/bash
# Terminal-Bench runs this after the agent stopped, with tests/ copied to $TEST_DIR, and reads
# the "short test summary info" block of `pytest -rA`. Without pytest in the image (the task
# has no network to install it), the verifier runs directly and its result is printed in
# that same form.
TEST_DIR="${{TEST_DIR:-/tests}}"
if python3 -c 'import pytest' >/dev/null 2>&1; then
  python3 -m pytest -rA "$TEST_DIR/test_outputs.py"
  exit $?
fi
bash "$TEST_DIR/verifier.sh"
status=$?
echo "=========================== short test summary info ============================"
if [ "$status" -eq 0 ]; then
  echo "PASSED {TEST_NAME}"
else
  echo "FAILED {TEST_NAME} - verifier.sh exited $status"
fi
exit "$status"
"""

TEST_OUTPUTS = '''"""The task is solved when its verifier, written when the task was prepared, exits 0."""

import os
import subprocess
from pathlib import Path

TEST_DIR = Path(os.environ.get("TEST_DIR", "/tests"))


def test_task_is_solved():
    """verifier.sh checks the end state the instruction asks for."""
    result = subprocess.run(["bash", str(TEST_DIR / "verifier.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
'''

_SUMMARY = re.compile(r"=+\s*short test summary info\s*=+", re.IGNORECASE)


def pytest_summary(output: str) -> dict[str, str]:
    """Test name -> status from pytest's short summary, as Terminal-Bench's pytest parser reads
    it (a failure's `` - reason`` is not part of the name)."""
    parts = _SUMMARY.split(output, maxsplit=1)
    results: dict[str, str] = {}
    for line in parts[1].splitlines() if len(parts) == 2 else []:
        words = line.split(" - ")[0].split(maxsplit=1)
        if len(words) == 2 and words[0] in {"PASSED", "FAILED", "ERROR", "SKIPPED", "XFAIL", "XPASS"}:
            results[words[1].split("::", 1)[-1].strip()] = words[0]
    return results


class _Literal(str):
    pass


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(_Literal, lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|"))


def task_yaml(fields: dict[str, Any], header: str) -> str:
    fields = {k: _Literal(v) if k == "instruction" else v for k, v in fields.items()}
    return header + yaml.dump(fields, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=4096)


class TerminalBenchExporter(Exporter):
    #: task.yaml's author fields; subclass and register with ``replace=True`` to change them
    author_name = "litecoder"
    author_email = "litecoder@localhost"
    needs = ENVIRONMENTS

    def export(self, run: Any) -> dict:
        root = run.path(TBENCH_DIR)
        root.mkdir(parents=True, exist_ok=True)
        staging = root / STAGING

        def write(task: ExportTask) -> TaskResult:
            harbor = HarborExporter().write_task(run, staging, task)
            directory = self._write_task(run, root, harbor, task)
            return directory, (self.check(run, directory) if run.cfg.export.harbor.check_solution else None)

        try:
            return export_tasks(run, root, write)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _write_task(self, run: Any, root: Path, harbor: Path, task: ExportTask) -> Path:
        cfg, judged, rollout = run.cfg, task.judged, task.rollout
        task_id = harbor.name
        building = root / f".{task_id}.partial"
        shutil.rmtree(building, ignore_errors=True)
        (building / "tests").mkdir(parents=True)
        for source in (harbor / "environment").iterdir():  # Dockerfile, state.tar and CAs, if any
            (shutil.copytree if source.is_dir() else shutil.copy2)(source, building / source.name)
        shutil.copy2(harbor / "solution" / "solve.sh", building / "solution.sh")
        shutil.copy2(harbor / "tests" / "verifier.sh", building / "tests" / "verifier.sh")
        (building / "tests" / "test_outputs.py").write_text(TEST_OUTPUTS)
        (building / "run-tests.sh").write_text(RUN_TESTS)
        (building / "run-tests.sh").chmod(0o755)
        (building / "docker-compose.yaml").write_text(COMPOSE + (OFFLINE if cfg.trajectory.network == "none" else ""))
        domain = judged.get("domain") or cfg.domain.name
        made = (f"rollout {rollout.record['rollout_id']} ({rollout.record.get('model')}, "
                f"{rollout.record.get('turns')} turns)") if rollout else "the reference solution"
        cert = task.certificate
        certified = (f"; certified: wrong solutions caught {cert.get('wrong_caught')}/{cert.get('wrong_total')}, "
                     f"{cert.get('repairs')} repairs") if cert.get("certified") else ""
        header = f"# Made by litecoder from run {run.name}, {made}{certified}.\n"
        (building / "task.yaml").write_text(task_yaml({
            "instruction": (harbor / "instruction.md").read_text(),
            "author_name": self.author_name,
            "author_email": self.author_email,
            "difficulty": TB_DIFFICULTY.get(task.difficulty, "unknown"),
            "category": domain,
            "tags": [t for t in (domain, judged.get("subtopic"), "synthetic", "litecoder") if t],
            "parser_name": "pytest",
            "max_agent_timeout_sec": float(cfg.agent.get("max_wall_time", 1800.0)),
            "max_test_timeout_sec": float(cfg.trajectory.verifier_timeout),
            "run_tests_in_same_shell": False,
        }, header))
        final = root / task_id
        shutil.rmtree(final, ignore_errors=True)
        building.rename(final)
        return final

    def check(self, run: Any, directory: Path) -> tuple[bool, str]:
        """Build the task, run solution.sh, then run-tests.sh as the harness would; passed when
        every test in pytest's summary passed."""
        sandbox = run.sandbox()
        timeout = float(run.cfg.export.harbor.check_timeout)
        image = sandbox.build_image(directory, tag=f"litecoder-tbench-check:{directory.name}",
                                    labels={LABEL_RUN: run_id(run.dir)}, timeout=timeout,
                                    network=str(run.cfg.export.harbor.check_network))
        session = None
        try:
            session = sandbox.open(f"{directory.name}-tbench-check", image=image)
            session.write_files({"/oracle/solution.sh": (directory / "solution.sh").read_bytes()}, mode=0o755)
            solve = session.exec("bash /oracle/solution.sh", timeout=timeout)
            tests = {f"/tests/{p.relative_to(directory / 'tests')}": p.read_bytes()
                     for p in (directory / "tests").rglob("*") if p.is_file()}
            session.write_files({**tests, "/tests/run-tests.sh": (directory / "run-tests.sh").read_bytes()}, mode=0o755)
            result = session.exec("TEST_DIR=/tests bash /tests/run-tests.sh", timeout=timeout)
            summary = pytest_summary(result.output)
            passed = bool(summary) and all(status == "PASSED" for status in summary.values())
            shown = ", ".join(f"{name} {status}" for name, status in summary.items()) or "no pytest summary"
            return passed, f"solution.sh exited {solve.exit_code}; {shown}"
        finally:
            if session is not None:
                session.remove()
            sandbox.remove_image(image)
