"""Tasks that need their domain's tools, end to end on the real Docker engine: a build_tools task
(a C program whose Makefile does not link) and a data_science task (a pandas report), each
prepared by a scripted environment agent that installs one more package through the registry
proxy and certified. The build task is solved offline by a scripted teacher; the data task is
exported with no teacher at all (its reference solution becomes solve.sh). Both are rebuilt from
a public Debian image with no litecoder image and run by Harbor itself with its oracle agent."""

from __future__ import annotations

import json
import shutil
import subprocess
import tomllib

import polars as pl
import pytest

from litecoder.run import execute
from litecoder.sandboxes.names import run_id

from .stub_openai import StubServer, completion_body
from .test_environment_stage import ACCEPT, DOES_NOTHING, Adversaries, leftovers, step, wrong_reply
from .test_trajectory_stage import terminus

pytestmark = [pytest.mark.docker, pytest.mark.harbor]

MAIN_C = r"""#include <stdio.h>
#include <string.h>
#include <zlib.h>
int main(int argc, char **argv) {
    const char *text = argc > 1 ? argv[1] : "";
    printf("%lu\n", crc32(0L, (const unsigned char *)text, strlen(text)));
    return 0;
}
"""
BUILD = {
    "domain": "build_tools",
    "task": "The C program in /root/crc does not build: `make` stops with a link error. Fix the Makefile so "
            "that `make` builds ./crc, which prints the CRC-32 of its argument.",
    "setup": [
        "apt-get update -qq && apt-get install -y -qq --no-install-recommends zlib1g-dev",
        f"mkdir -p /root/crc && cat > /root/crc/main.c <<'EOF'\n{MAIN_C}EOF",
        "printf 'crc: main.c\\n\\t$(CC) -o crc main.c\\n' > /root/crc/Makefile",
        "cd /root/crc && make; echo make exited $?",
    ],
    "verifier": "#!/bin/bash\ncd /root/crc || exit 1\nrm -f crc\nmake >/dev/null 2>&1 || exit 1\n"
                "test \"$(./crc hello)\" = 907060870\n",
    "solve": ["cd /root/crc && sed -i 's/-o crc main.c/-o crc main.c -lz/' Makefile\n", "make && ./crc hello\n"],
    "outputs": ["/root/crc"],
    "installed": ("debian", "zlib1g-dev="),
    "stage": "all",  # with a teacher: its rollout is the task's solution
}
REPORT = ("import pandas as pd; totals = pd.read_csv('/root/sales.csv').groupby('region', as_index=False)['amount'].sum(); "
          "open('/root/summary.md', 'w').write(totals.to_markdown(index=False))")
DATA = {
    "domain": "data_science",
    "task": "/root/sales.csv lists sales (region, amount). Write /root/summary.md: a Markdown table of the total "
            "amount per region, made with pandas' DataFrame.to_markdown().",
    "setup": [
        "python3 -m pip install -q --break-system-packages tabulate",
        "printf 'region,amount\\nnorth,10\\nsouth,12\\nnorth,20\\n' > /root/sales.csv",
    ],
    "verifier": "#!/bin/bash\ntest -f /root/summary.md || exit 1\n"
                "grep -qE '[|] *north *[|] *30(\\.0)? *[|]' /root/summary.md || exit 1\n"
                "grep -qE '[|] *south *[|] *12(\\.0)? *[|]' /root/summary.md\n",
    "solve": [f"python3 -c \"{REPORT}\"\n", "cat /root/summary.md\n"],
    "outputs": ["/root/summary.md"],
    "installed": ("python", "tabulate=="),
    "stage": "[sample,judge,environment,export]",  # no teacher: the reference solution is the task's
}


class Pipeline:
    """Sampler, judge, environment agent and teacher of one task, from scripts."""

    def __init__(self, case):
        self.case = case
        self.environment_prompts: list[str] = []
        self.teacher_outputs: list[str] = []
        self.adversaries = Adversaries()

    def __call__(self, path, body):
        if not path.endswith("chat/completions"):
            return 200, completion_body([self.case["task"]] * int(body.get("n", 1))), 0
        first = body["messages"][0]["content"]
        turn = sum(1 for m in body["messages"] if m["role"] == "assistant")
        if "task proposals" in first:
            return 200, completion_body([ACCEPT], chat=True), 0
        if "You prepare Linux containers" in first:
            self.environment_prompts.append(first)
            reply = step(self.case["setup"]) if turn == 0 else step(ready=True, verifier=self.case["verifier"],
                                                                       solution="".join(self.case["solve"]),
                                                                       outputs=self.case["outputs"])
            return 200, completion_body([reply], chat=True), 0
        if "WRONG solutions" in first:
            return 200, completion_body([wrong_reply(DOES_NOTHING)], chat=True), 0
        adversary = self.adversaries.answer(body)
        if adversary is not None:
            return 200, completion_body([adversary], chat=True), 0
        self.teacher_outputs.append(body["messages"][-1]["content"])
        replies = [terminus(*self.case["solve"], duration=3), terminus(complete=True), terminus(complete=True)]
        return 200, completion_body([replies[min(turn, 2)]], chat=True), 0


def run_case(compose_cfg, run_dir, case):
    model = Pipeline(case)
    with StubServer(model) as server:
        cfg = compose_cfg(f"stage={case['stage']}", f"domain={case['domain']}", f"backend.url={server.url}",
                          "sample.num_tasks=1", "sample.n=1", "backend.retry_initial_wait=0.01",
                          "export.formats=[sharegpt,harbor]",
                          "export.harbor.check_solution=false", "environment.agent.command_timeout=300",
                          "certify.repeats=1")
        summaries = execute(cfg, run_dir)
    assert leftovers(run_id(run_dir)) == []
    return summaries, model


def test_domain_tasks_are_prepared_with_packages_solved_offline_and_run_by_harbor(compose_cfg, tmp_path):
    from litecoder.testing.harbor import parse_task_toml, run_oracle, validate_trajectory

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    images = []
    try:
        for case in (BUILD, DATA):
            run_dir = tmp_path / case["domain"]
            summaries, model = run_case(compose_cfg, run_dir, case)
            env = pl.read_parquet(run_dir / "environments.parquet").row(0, named=True)
            images.append(env["image"])
            assert env["status"] == "ready", env["reason"]
            assert env["base_image"].startswith(f"litecoder-toolchain:{case['domain']}-") and env["network"] == "registries"
            assert summaries["environment"]["image"] == env["base_image"]
            # what the agent installed through the proxy is recorded with its version ...
            kind, prefix = case["installed"]
            assert any(p.startswith(prefix) for p in env[f"installed_{kind}"]), env[f"installed_{kind}"]
            if kind == "debian":
                assert "zlib1g-dev" in env["apt_history"]
            # ... and its files are not part of the starting state (the export installs it)
            assert not any(p.startswith(("/usr/include/zlib", "/var/lib/dpkg", "/usr/local/lib/python3"))
                           for p in env["changed_paths"]), env["changed_paths"]
            assert "install it with" in model.environment_prompts[0]  # the prompt says how

            cert = env["certificate"]
            assert cert["certified"] and cert["wrong_caught"] == cert["wrong_total"] == 1, cert["findings"]
            if case["stage"] == "all":
                rollout = pl.read_parquet(run_dir / "trajectories.parquet").row(0, named=True)
                assert rollout["reward"] == 1 and rollout["status"] == "kept", rollout["reason"]
                validate_trajectory(run_dir / rollout["trajectory"])  # Harbor's own ATIF model
                assert summaries["export"]["sharegpt_rows"] == 1
            else:  # a task-only export: the SFT format has no input and says so, the task format runs
                assert not (run_dir / "trajectories.parquet").exists() and "trajectory" not in summaries
                assert summaries["export"]["skipped"] == "sharegpt" and summaries["export"]["harbor_tasks"] == 1

            (task,) = [p for p in (run_dir / "harbor").iterdir() if p.is_dir()]
            dockerfile = (task / "environment" / "Dockerfile").read_text()
            assert "FROM debian:bookworm" in dockerfile and "litecoder-" not in dockerfile
            config = tomllib.loads((task / "task.toml").read_text())
            assert config["environment"]["network_mode"] == "no-network"
            assert config["metadata"]["toolchain_image"] == env["base_image"]
            metadata = config["metadata"]
            if case["stage"] == "all":  # one rollout, solved: pass rate 1
                assert (metadata["difficulty"], metadata["teacher_pass_rate"], metadata["solution"]) == (
                    "easy", 1.0, "teacher rollout")
            else:
                assert (metadata["difficulty"], metadata["solution"]) == ("unknown", "reference solution")
                assert "summary.md" in (task / "solution" / "solve.sh").read_text()
            assert metadata["certificate"] == {"certified": True, "nop": True, "oracle": True, "stable": True,
                                               "wrong_solutions_tried": 1, "wrong_solutions_caught": 1,
                                               "review_passed": True, "cheat_trials": 1, "cheats_rewarded": 0,
                                               "repairs": 0, "container_runs": 7}
            pinned = config["metadata"][f"{kind}_packages"]
            assert any(p.startswith(prefix) and p != prefix for p in pinned), pinned
            parsed = parse_task_toml(task / "task.toml")  # Harbor's task schema accepts it
            assert parsed["environment"]["network_mode"] == "no-network"
            shutil.copytree(task, tasks / task.name)
        # no image of the runs is left: the tasks rebuild from debian:bookworm and the registries
        for image in images:
            subprocess.run(["docker", "rmi", "-f", image], capture_output=True)
        rewards = run_oracle(tasks, tmp_path / "jobs", "toolchain-tasks")
        assert sorted(rewards.values()) == [1.0, 1.0], rewards
    finally:
        for image in images:
            subprocess.run(["docker", "rmi", "-f", image], capture_output=True)


def test_a_teacher_without_network_cannot_install_and_its_verifier_runs_offline(compose_cfg, tmp_path):
    """The teacher's container has no route out; with ``trajectory.network=registries`` it
    reaches the registries, and the verifier still runs with every network taken away."""
    # what the commands print differs from what they are typed as (the terminal echoes those)
    probe = ("test -n \"$http_proxy\" && echo proxy-$((2+2)); "
             "apt-get update 2>&1 | grep -q '^Get:' && echo reached-$((1+1))\n")
    case = dict(BUILD, solve=[probe, *BUILD["solve"]])
    # /proc/net/route holds its header line only when no network is left
    case["verifier"] = BUILD["verifier"].replace("cd /root/crc", "test \"$(wc -l < /proc/net/route)\" -le 1 || exit 1\ncd /root/crc")
    outputs = {}
    for network in ("none", "registries"):
        run_dir = tmp_path / network
        model = Pipeline(case)
        with StubServer(model) as server:
            cfg = compose_cfg("stage=[sample,judge,environment,trajectory]", "domain=build_tools",
                              f"backend.url={server.url}", "sample.num_tasks=1", "sample.n=1",
                              f"trajectory.network={network}", "environment.agent.command_timeout=300")
            execute(cfg, run_dir)
        env = pl.read_parquet(run_dir / "environments.parquet").row(0, named=True)
        subprocess.run(["docker", "rmi", "-f", env["image"]], capture_output=True)
        rollout = pl.read_parquet(run_dir / "trajectories.parquet").row(0, named=True)
        assert rollout["reward"] == 1, rollout  # the verifier saw no route at all
        outputs[network] = model.teacher_outputs[1]
    assert "reached-2" not in outputs["none"] and "proxy-4" not in outputs["none"]
    assert "reached-2" in outputs["registries"] and "proxy-4" in outputs["registries"]
