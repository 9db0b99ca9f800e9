"""stage=ingest on the real Docker engine: Harbor and Terminal-Bench 1 task directories written
here, and litecoder's own exports imported again, solved by a scripted teacher."""

from __future__ import annotations

import json
import subprocess
import threading
import tomllib
from pathlib import Path

import polars as pl
import pytest

from litecoder.errors import ConfigError
from litecoder.run import execute
from litecoder.sandboxes.names import run_id
from litecoder.stages.ingest import task_ids

from .stub_openai import StubServer, completion_body
from .test_environment_stage import leftovers, review_reply
from .test_trajectory_stage import check_harbor_task, remove_images, run_pipeline, solving_teacher, terminus

pytestmark = pytest.mark.docker

BASE = "litecoder-base:bookworm"


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def harbor_task(root: Path, name: str, test_sh: str, dockerfile: str | None = None) -> Path:
    """A Harbor task: make /app/notes.txt say 'final' (its solution relies on WORKDIR /app)."""
    return write(root / name, {
        "instruction.md": "Replace the text in /app/notes.txt with the single word final.\n",
        "task.toml": 'schema_version = "1.4"\n[metadata]\ncategory = "file-editing"\ndifficulty = "easy"\n'
                     'tags = ["files"]\n[verifier]\ntimeout_sec = 60.0\n',
        "environment/Dockerfile": dockerfile or f"FROM {BASE}\nRUN mkdir -p /app && echo draft > /app/notes.txt\nWORKDIR /app\n",
        "tests/test.sh": test_sh,
        "solution/solve.sh": "#!/bin/bash\necho final > notes.txt\n",
    })


NOTES_TEST = ("#!/bin/bash\nif grep -qx final /app/notes.txt; then echo 1 > /logs/verifier/reward.txt; "
              "else echo 0 > /logs/verifier/reward.txt; fi\n")

TB_RUN_TESTS = """#!/bin/bash
echo "=========================== short test summary info ============================"
if bash "$TEST_DIR/check.sh"; then echo "PASSED test_outputs.py::test_count"; else echo "FAILED test_outputs.py::test_count"; fi
"""


def tb_task(root: Path, name: str) -> Path:
    """A Terminal-Bench 1 task: count the lines of /app/data.txt into /app/count.txt."""
    return write(root / name, {
        "task.yaml": "instruction: |-\n  Count the lines of /app/data.txt and write the number to /app/count.txt.\n"
                     "difficulty: easy\ncategory: file-operations\ntags: [counting]\nmax_test_timeout_sec: 60\n",
        "Dockerfile": f"FROM {BASE}\nWORKDIR /app\nRUN printf 'a\\nb\\nc\\n' > /app/data.txt\n",
        "docker-compose.yaml": "services:\n  client:\n    build:\n      dockerfile: Dockerfile\n",
        "run-tests.sh": TB_RUN_TESTS,
        "tests/check.sh": "test \"$(cat /app/count.txt 2>/dev/null)\" = 3\n",
        "solution.sh": "#!/bin/bash\nwc -l < data.txt | tr -d ' ' > count.txt\n",
    })


#: relative paths: they work only when the teacher's shell starts in the task's WORKDIR (/app)
SOLVES = {"notes.txt": "echo final > notes.txt\n", "data.txt": "wc -l < data.txt > count.txt\n",
          "Resolve the merge conflict": None}


class Teacher:
    """Solves each imported task from the words of its instruction (the merge conflict as the
    trajectory tests do)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.prompts: list[str] = []

    def __call__(self, path, body):
        messages = body["messages"]
        turn = sum(1 for m in messages if m["role"] == "assistant")
        prompt = messages[0]["content"]
        if prompt.startswith("You review Linux exercises"):  # the trajectory review: every rollout is fair
            return 200, completion_body([review_reply(body)], chat=True), 0
        if turn == 0:
            with self.lock:
                self.prompts.append(prompt)
        if "merge conflict" in prompt:
            return 200, completion_body([solving_teacher(turn)], chat=True), 0
        command = next(c for key, c in SOLVES.items() if c and key in prompt)
        reply = terminus(command) if turn == 0 else terminus(complete=True)
        return 200, completion_body([reply], chat=True), 0


def remove_imported(run_dir: Path) -> None:
    if (run_dir / "imported.parquet").exists():
        for image in pl.read_parquet(run_dir / "imported.parquet")["image"].drop_nulls():
            subprocess.run(["docker", "rmi", "-f", image], capture_output=True)


def test_task_ids_are_stable_and_distinct():
    assert task_ids(["tb/count", "tb/count", "harbor/a b"]) == ["tb-count", "tb-count-2", "harbor-a_b"]


def test_imported_tasks_are_built_certified_solved_and_exported(compose_cfg, tmp_path):
    tasks = tmp_path / "collection"
    harbor_task(tasks, "notes", NOTES_TEST)
    tb_task(tasks, "count")
    compose = harbor_task(tasks, "compose", NOTES_TEST)  # its image from the compose file's main service
    (compose / "environment" / "Dockerfile").rename(compose / "environment" / "Dockerfile.moved")
    write(compose / "environment", {"app/Dockerfile": f"FROM {BASE}\nRUN mkdir -p /app && echo draft > /app/notes.txt\n",
                                    "docker-compose.yaml": "services:\n  main:\n    build: ./app\n    working_dir: /app\n"})
    harbor_task(tasks, "always-passes", "#!/bin/bash\necho 1 > /logs/verifier/reward.txt\n")
    harbor_task(tasks, "does-not-build", NOTES_TEST, dockerfile=f"FROM {BASE}\nRUN echo cannot build here && exit 3\n")
    write(tasks / "no-tests", {"instruction.md": "A task without tests.\n", "environment/Dockerfile": f"FROM {BASE}\n"})
    run_dir = tmp_path / "run"
    try:
        with StubServer(Teacher()) as server:
            cfg = compose_cfg("stage=[ingest,trajectory,export]", f"ingest.paths=[{tasks}]", f"backend.url={server.url}",
                              "certify.repeats=2", "export.formats=[harbor,messages]", "sandbox.max_containers=2")
            summaries = execute(cfg, run_dir)
        imported = {r["task_id"]: r for r in pl.read_parquet(run_dir / "imported.parquet").to_dicts()}
        assert summaries["ingest"]["tasks"] == 6
        assert {imported[f"collection-{t}"]["status"] for t in ("notes", "count", "compose")} == {"ready"}
        assert imported["collection-compose"]["workdir"] == "/app"
        notes = imported["collection-notes"]
        assert notes["certificate"]["certified"] and notes["certificate"]["container_runs"] == 4  # nop and oracle, twice
        assert notes["origin"]["format"] == "harbor" and notes["category"] == "file-editing" and notes["workdir"] == "/app"
        assert imported["collection-count"]["origin"]["format"] == "terminal_bench"
        assert imported["collection-count"]["verifier_timeout"] == 60.0
        assert imported["collection-always-passes"]["status"] == "rejected"
        assert "nop: the verifier passes" in imported["collection-always-passes"]["reason"]
        assert imported["collection-does-not-build"]["status"] == "failed"
        assert "image build failed" in imported["collection-does-not-build"]["reason"]
        assert "cannot build here" in imported["collection-does-not-build"]["reason"]
        assert "no tests/test.sh" in imported["collection-no-tests"]["reason"]

        rollouts = pl.read_parquet(run_dir / "trajectories.parquet")
        assert sorted(rollouts["task_id"]) == ["collection-compose", "collection-count", "collection-notes"]
        assert rollouts["reward"].to_list() == [1, 1, 1], rollouts["verifier_output"].to_list()
        index = {e["task_id"]: e for e in map(json.loads, (run_dir / "harbor" / "index.jsonl").read_text().splitlines())}
        assert index["collection-notes"]["solution_check"] == "passed", index
        toml = tomllib.loads((run_dir / "harbor" / "collection-count" / "task.toml").read_text())
        assert toml["metadata"]["category"] == "file-operations" and toml["metadata"]["source_format"] == "terminal_bench"
        assert check_harbor_task(run_dir / "harbor" / "collection-notes", "true") == "0"
        report = (run_dir / "report.html").read_text()
        assert '"name":"imported"' in report.replace(" ", "") and '"name":"synthesized"' not in report.replace(" ", "")
        assert leftovers(run_id(run_dir)) == []
    finally:
        remove_imported(run_dir)


def test_litecoders_own_exports_imported_again_are_solved(compose_cfg, tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    try:
        run_pipeline(compose_cfg, source, solving_teacher, "export.formats=[harbor,terminal_bench]")
        assert (source / "harbor").is_dir() and (source / "tbench").is_dir()
        again = tmp_path / "again"
        with StubServer(Teacher()) as server:
            # ``import``, the name the stage goes by, is an alias of ``ingest``
            cfg = compose_cfg("stage=[import,trajectory]", f"ingest.paths=[{source / 'harbor'},{source / 'tbench'}]",
                              f"backend.url={server.url}", "certify.repeats=1")
            summaries = execute(cfg, again)
        imported = pl.read_parquet(again / "imported.parquet")
        assert imported["status"].to_list() == ["ready", "ready"], imported["reason"].to_list()
        assert sorted(imported["origin"].struct.field("format")) == ["harbor", "terminal_bench"]
        rollouts = pl.read_parquet(again / "trajectories.parquet")
        assert rollouts["reward"].to_list() == [1, 1], rollouts["verifier_output"].to_list()
        assert summaries["trajectory"]["solved"] == 2 and "ingest" in summaries
    finally:
        remove_images(source)
        remove_imported(tmp_path / "again")


def test_import_names_what_is_wrong(compose_cfg, tmp_path):
    with pytest.raises(ConfigError, match="ingest.paths is empty"):
        execute(compose_cfg("stage=ingest"), tmp_path / "a")
    with pytest.raises(ConfigError, match="does not exist"):
        execute(compose_cfg("stage=ingest", f"ingest.paths=[{tmp_path / 'missing'}]"), tmp_path / "b")
