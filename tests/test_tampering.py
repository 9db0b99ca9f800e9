"""Rewards no agent can game, on the real Docker engine with scripted models: a teacher that
only replaces a program its task's verifier calls is not solved, not kept and not exported,
for a task with declared outputs (verified in a fresh container) and for a task about the
system itself (verified in the agent's container behind the integrity guard); a teacher that
solves honestly still is."""

from __future__ import annotations

import json
import shutil
import tomllib

import polars as pl
import pytest

from litecoder.testing.harbor import run_oracle

from .test_environment_stage import step
from .test_trajectory_stage import Pipeline, remove_images, run_pipeline, terminus

pytestmark = pytest.mark.docker

COUNT_VERIFIER = '#!/bin/bash\ntest "$(cat /root/count.txt)" = 3\n'
COUNT_SOLUTION = "wc -l < /srv/data/input.txt > /root/count.txt\n"
USER_VERIFIER = "#!/bin/bash\npython3 -c 'import pwd; pwd.getpwnam(\"deploy\")'\n"


def count_task(turn):
    """A file-output task: the number of lines of a data file, written to /root/count.txt."""
    if turn == 0:
        return step(["mkdir -p /srv/data && printf 'alpha\\nbeta\\ngamma\\n' > /srv/data/input.txt"])
    return step(ready=True, verifier=COUNT_VERIFIER, solution=COUNT_SOLUTION, outputs=["/root/count.txt"])


def user_task(turn):
    """A system-state task: a user account exists."""
    return step(ready=True, verifier=USER_VERIFIER, solution="useradd -m deploy\n", system_state=True)


class TwoTeachers(Pipeline):
    """The first rollout is played by the tampering teacher, the second by the honest one:
    each types its commands, then declares the task done."""

    def __init__(self, environment, honest, tamper):
        super().__init__(None, environment)
        self.honest, self.tamper, self.started = honest, tamper, 0
        self.teacher = self.pick

    def pick(self, turn):
        if turn == 0:
            self.started += 1
            return terminus(self.tamper if self.started % 2 else self.honest)
        return terminus(complete=True)


@pytest.mark.parametrize("environment, honest, tamper, guard", [
    pytest.param(count_task, COUNT_SOLUTION, "printf '#!/bin/sh\\necho 3\\n' > /usr/local/bin/cat; chmod +x /usr/local/bin/cat\n",
                 None, marks=pytest.mark.harbor),
    pytest.param(user_task, "useradd -m deploy\n", "ln -sf /bin/true /usr/bin/python3\n",
                 "/usr/bin/python3: link replaced", marks=pytest.mark.harbor),
], ids=["file-output", "system-state"])
def test_a_teacher_that_replaces_a_program_the_verifier_calls_is_not_solved(compose_cfg, tmp_path, environment,
                                                                           honest, tamper, guard):
    pipeline = TwoTeachers(environment, honest, tamper)
    try:
        summaries, _ = run_pipeline(compose_cfg, tmp_path, None, "trajectory.rollouts=2", pipeline=pipeline)
        environments = pl.read_parquet(tmp_path / "environments.parquet")
        assert environments["status"].to_list() == ["ready"], environments["reason"].to_list()
        mode = "separate" if guard is None else "shared"
        assert environments["verification"].to_list() == [mode]
        rollouts = pl.read_parquet(tmp_path / "trajectories.parquet")
        by_status = {row["status"]: row for row in rollouts.iter_rows(named=True)}
        # with declared outputs the cheat is simply unsolved; the guard marks it tampered
        assert set(by_status) == {"kept", "dropped" if guard is None else "tampered"}, rollouts.to_dicts()
        cheat, fair = by_status.get("tampered") or by_status["dropped"], by_status["kept"]
        assert cheat["reward"] == 0 and fair["reward"] == 1 and {cheat["verification"], fair["verification"]} == {mode}
        page = (tmp_path / "report.html").read_text()
        assert f"{int(bool(guard))} tampered (the agent changed what the verifier relies on" in page
        if guard:  # the guard names what was changed, and the verifier never ran
            assert f"{guard}" in "; ".join(cheat["tampered"]) and cheat["verifier_exit_code"] is None
            assert cheat["reason"].startswith("tampered: the agent changed what the verifier relies on")
            assert summaries["trajectory"]["tampered"] == 1
        else:  # the fresh container never saw the fake cat, nor a count file
            assert cheat["tampered"] == [] and cheat["verifier_exit_code"] == 1
        # Difficulty counts the honest rollout only; only it is training data and the solution.
        tasks = pl.read_parquet(tmp_path / "trajectory_tasks.parquet")
        assert tasks.select("rollouts", "solved", "kept").row(0) == (1 if guard else 2, 1, 1)
        sft = (tmp_path / "sft" / "sharegpt.jsonl").read_text().splitlines()
        assert len(sft) == 1 and tamper.strip() not in sft[0]
        (task_dir,) = [p for p in (tmp_path / "harbor").iterdir() if p.is_dir()]
        solve = (task_dir / "solution" / "solve.sh").read_text()
        assert honest.strip() in solve and tamper.strip() not in solve
        toml = tomllib.loads((task_dir / "task.toml").read_text())
        if guard is None:
            assert toml["verifier"]["environment_mode"] == "separate"
            assert toml["artifacts"] == [{"source": "/root/count.txt"}]
        else:  # Harbor's shared verifier, behind the exported guard
            assert "environment_mode" not in toml["verifier"] and "artifacts" not in toml
            assert "/usr/bin/python3\tpython3.11" in (task_dir / "tests" / "links.tsv").read_text()
            assert "guard" in (task_dir / "tests" / "test.sh").read_text()
        (index,) = [json.loads(line) for line in (tmp_path / "harbor" / "index.jsonl").read_text().splitlines()]
        assert index["solution_check"] == "passed", index
        # Harbor itself: the honest solution 1.0, nothing 0.0, the tampering 0.0
        assert run_harbor(tmp_path, task_dir, tamper) == {"honest": 1.0, "nop": 0.0, "tampering": 0.0}
    finally:
        remove_images(tmp_path)


def run_harbor(tmp_path, task_dir, tamper):
    """Harbor itself on the exported task, three times over: its solve.sh (oracle 1.0), a
    solve.sh that does nothing (0.0), and one that tampers as the teacher did."""
    tasks = tmp_path / "harbor-tasks"
    for name, solve in (("honest", None), ("nop", "true\n"), ("tampering", tamper)):
        shutil.copytree(task_dir, tasks / name)
        toml = tasks / name / "task.toml"
        toml.write_text(toml.read_text().replace(f'name = "litecoder/{task_dir.name}"', f'name = "litecoder/{name}"'))
        if solve is not None:
            (tasks / name / "solution" / "solve.sh").write_text("#!/bin/bash\n" + solve)
    return run_oracle(tasks, tmp_path / "jobs", "separate-verifier")
