"""The terminal_bench exporter, tested with the fixtures litecoder ships for plugin authors
(``litecoder_plugins``, ``litecoder_cli``, ``litecoder_stub_model``): the scripted model plays
sampler, judge, environment agent and teacher; Docker runs for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from litecoder.sandboxes.names import LABEL_RUN, run_id
from litecoder.testing import completion_body
from litecoder_terminal_bench.exporter import RUN_TESTS, TEST_OUTPUTS, pytest_summary, task_yaml

TASK = "Count the lines of /srv/data/input.txt and write the number alone to /root/count.txt."
CRITERIA = ["complexity_balance", "clarity", "resource_availability", "verifiability", "safety"]
VERIFIER = '#!/bin/bash\ntest "$(cat /root/count.txt 2>/dev/null)" = 3\n'
SOLUTION = "wc -l < /srv/data/input.txt > /root/count.txt\n"
WRONG = [{"mistake": "writes the file name after the number", "script": "wc -l /srv/data/input.txt > /root/count.txt"}]


def _environment(turn: int) -> str:
    if turn == 0:
        commands = ["mkdir -p /srv/data && printf 'alpha\\nbeta\\ngamma\\n' > /srv/data/input.txt"]
        return json.dumps({"analysis": "make the input file", "commands": commands, "verifier": "",
                           "solution": "", "outputs": [], "system_state": False, "ready": False, "give_up": False})
    return json.dumps({"analysis": "ready", "commands": [], "verifier": VERIFIER, "solution": SOLUTION,
                       "outputs": ["/root/count.txt"], "system_state": False, "ready": True, "give_up": False})


def _teacher(turn: int) -> str:
    commands = [{"keystrokes": "wc -l < /srv/data/input.txt > /root/count.txt\n", "duration": 0.3}] if turn == 0 else []
    return json.dumps({"analysis": "count the lines", "plan": "wc -l", "commands": commands, "task_complete": turn > 0})


def scripted_model(path: str, body: dict):
    """One task; the judge accepts it, the environment agent makes the input, certification gets a
    wrong solution, the teacher solves it."""
    if not path.endswith("chat/completions"):
        return 200, completion_body([TASK] * int(body.get("n", 1))), 0
    system = body["messages"][0]["content"]
    turn = sum(m["role"] == "assistant" for m in body["messages"])
    if "task proposals" in system:
        reply = json.dumps({c: {"rationale": "fine", "score": 5} for c in CRITERIA})
    elif "You prepare Linux containers" in system:
        reply = _environment(turn)
    elif "WRONG solutions" in system:
        reply = json.dumps({"wrong_solutions": WRONG})
    elif system.startswith("You review Linux exercises"):  # every criterion of the review passes
        names = [line[2:].split(":", 1)[0] for line in system.splitlines() if line.startswith("- ")]
        reply = json.dumps({name: {"passed": True, "reason": "fine"} for name in names})
    elif "red-team exercise" in system:  # the cheat trial finds no shortcut
        reply = json.dumps({"analysis": "none", "plan": "stop", "commands": [], "task_complete": True})
    else:
        reply = _teacher(turn)
    return 200, completion_body([reply], chat=True), 0


def test_the_exporter_is_registered_through_its_entry_point(litecoder_plugins, litecoder_cli):
    entry = litecoder_plugins.registry("exporter").entry("terminal_bench")
    assert entry.plugin == "terminal_bench"
    assert litecoder_plugins.sources["terminal_bench"].startswith("litecoder-terminal-bench ")
    listing = litecoder_cli("--info", "plugins")
    assert "terminal_bench  [litecoder-terminal-bench 0.1.0]\n    exporter terminal_bench" in listing.stdout


def test_task_yaml_keeps_the_instruction_verbatim():
    text = "Fix the build.\n\n  Keep `make test` green: 100% of it.\n"
    loaded = yaml.safe_load(task_yaml({"instruction": text, "tags": ["a", "b"], "max_test_timeout_sec": 30.0}, "# x\n"))
    assert loaded == {"instruction": text, "tags": ["a", "b"], "max_test_timeout_sec": 30.0}


@pytest.mark.parametrize("solved", [True, False])
def test_run_tests_reports_in_pytests_summary_with_and_without_pytest(tmp_path, solved):
    """run-tests.sh under real pytest, and its fallback without pytest, give the same summary."""
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "verifier.sh").write_text("exit 0\n" if solved else "echo wrong >&2; exit 1\n")
    (tests / "test_outputs.py").write_text(TEST_OUTPUTS)
    (tests / "run-tests.sh").write_text(RUN_TESTS)
    no_pytest = tmp_path / "bin"
    no_pytest.mkdir()
    (no_pytest / "python3").write_text("#!/bin/sh\nexit 1\n")  # `python3 -c 'import pytest'` fails
    (no_pytest / "python3").chmod(0o755)
    with_pytest = tmp_path / "bin-pytest"
    with_pytest.mkdir()
    (with_pytest / "python3").symlink_to(sys.executable)
    expected = {"test_task_is_solved": "PASSED" if solved else "FAILED"}
    for path in (with_pytest, no_pytest):
        env = {**os.environ, "TEST_DIR": str(tests), "PATH": f"{path}:{os.environ['PATH']}"}
        env.pop("PYTEST_ADDOPTS", None)
        result = subprocess.run(["bash", str(tests / "run-tests.sh")], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert pytest_summary(result.stdout) == expected, result.stdout + result.stderr
        assert (result.returncode == 0) == solved


@pytest.mark.docker
def test_a_solved_task_becomes_a_terminal_bench_task_that_its_solution_passes(litecoder_cli, litecoder_stub_model):
    litecoder_stub_model.handler = scripted_model
    common = ["run.name=tb", f"backend.url={litecoder_stub_model.url}", "backend.retry_initial_wait=0.01"]
    run_dir = litecoder_cli.outputs / "tb"
    try:
        made = litecoder_cli("stage=[sample,judge,environment,trajectory]", *common, "sample.num_tasks=1", "sample.n=1",
                             "sample.template.prefix='{system}\\nTask:'", "sample.template.stop=[END]", "certify.repeats=1")
        assert made.returncode == 0, made.stderr[-3000:]
        assert "kept=1" in made.stderr and "solved=1" in made.stderr, made.stderr[-3000:]

        exported = litecoder_cli("stage=export", *common, "export.formats=[terminal_bench]")
        assert exported.returncode == 0, exported.stderr[-3000:]
        (entry,) = [json.loads(line) for line in (run_dir / "tbench" / "index.jsonl").read_text().splitlines()]
        assert entry["status"] == "exported" and entry["solution_check"] == "passed", entry
        assert not (run_dir / "harbor").exists()  # only the format that was asked for

        task = run_dir / entry["path"]
        assert sorted(p.name for p in (run_dir / "tbench").iterdir()) == sorted([task.name, "index.jsonl"])
        assert sorted(str(p.relative_to(task)) for p in task.rglob("*")) == [
            "Dockerfile", "docker-compose.yaml", "run-tests.sh", "solution.sh", "state.tar", "task.yaml",
            "tests", "tests/test_outputs.py", "tests/verifier.sh"]
        meta = yaml.safe_load((task / "task.yaml").read_text())
        assert meta["instruction"].strip() == TASK
        assert {"author_name", "author_email", "difficulty", "category", "tags"} <= set(meta)
        assert meta["parser_name"] == "pytest" and meta["max_test_timeout_sec"] > 0 and meta["max_agent_timeout_sec"] > 0
        assert "synthetic" in meta["tags"]
        compose = yaml.safe_load((task / "docker-compose.yaml").read_text())
        assert compose["services"]["client"]["build"] == {"dockerfile": "Dockerfile"}
        assert compose["services"]["client"]["network_mode"] == "none"
        assert "wc -l < /srv/data/input.txt > /root/count.txt" in (task / "solution.sh").read_text()
        assert "ADD state.tar /" in (task / "Dockerfile").read_text()

        # As the harness does: build, run the agent's part, copy tests/ and run-tests.sh to /tests, run it.
        assert run_task(task, "bash /oracle/solution.sh") == {"test_task_is_solved": "PASSED"}
        assert run_task(task, "true") == {"test_task_is_solved": "FAILED"}  # the starting state is not solved
    finally:
        images = subprocess.run(["docker", "images", "-q", "--filter", f"label={LABEL_RUN}={run_id(run_dir)}"],
                                capture_output=True, text=True).stdout.split()
        if images:
            subprocess.run(["docker", "rmi", "-f", *images], capture_output=True)


def run_task(task, agent_command: str) -> dict[str, str]:
    """Build the task's Dockerfile, run ``agent_command``, then the tests; pytest's summary."""
    from omegaconf import OmegaConf

    from litecoder.sandboxes.docker import DockerSandbox, DockerSandboxConfig

    tag = f"litecoder-tbench-test:{task.name}"
    build = subprocess.run(["docker", "build", "-q", "-t", tag, str(task)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    sandbox = DockerSandbox(OmegaConf.structured(DockerSandboxConfig), "tbench-plugin-test")
    try:
        session = sandbox.open("check", image=tag)
        session.write_files({"/oracle/solution.sh": (task / "solution.sh").read_text()}, mode=0o755)
        session.exec(agent_command, timeout=120)
        files = {f"/tests/{p.name}": p.read_text() for p in (task / "tests").iterdir()}
        session.write_files({**files, "/tests/run-tests.sh": (task / "run-tests.sh").read_text()}, mode=0o755)
        return pytest_summary(session.exec("TEST_DIR=/tests bash /tests/run-tests.sh", timeout=120).output)
    finally:
        sandbox.close()
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)
