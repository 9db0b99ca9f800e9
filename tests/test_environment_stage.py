"""The environment stage on the real Docker engine, with a scripted agent (and the real one
in test_vllm.py): a merge-conflict repository, its verifier, and every failure path."""

from __future__ import annotations

import json
import re
import subprocess

import polars as pl
import pytest
from omegaconf import OmegaConf

from litecoder.run import execute
from litecoder.sandboxes.docker import DockerSandbox, DockerSandboxConfig
from litecoder.sandboxes.names import LABEL_RUN, LABEL_RUN_DIR, image_tag, run_id

from .stub_openai import StubServer, completion_body

pytestmark = pytest.mark.docker

CRITERIA = ["complexity_balance", "clarity", "resource_availability", "verifiability", "safety"]
ACCEPT = json.dumps({c: {"rationale": "fine", "score": 5} for c in CRITERIA})
TASK = "Resolve the merge conflict in the git repository /srv/repo so that app.py keeps both greetings, then commit the merge."

SETUP_CONFLICT = [
    "git config --global user.email dev@example.com && git config --global user.name Dev && git config --global init.defaultBranch main",
    "mkdir -p /srv/repo && cd /srv/repo && git init -q && printf 'greeting = \"hello\"\\n' > app.py && git add app.py && git commit -qm base",
    "cd /srv/repo && git checkout -q -b feature && printf 'greeting = \"hello, world\"\\n' > app.py && git commit -qam feature",
    "cd /srv/repo && git checkout -q main && printf 'greeting = \"hi\"\\n' > app.py && git commit -qam main-change",
    "cd /srv/repo && git merge feature; git status --short",
]
VERIFIER = """#!/bin/bash
cd /srv/repo || exit 1
if grep -qE '^(<<<<<<<|=======|>>>>>>>)' app.py; then exit 1; fi
if git rev-parse -q --verify MERGE_HEAD >/dev/null; then exit 1; fi
git log --merges --oneline | grep -q . || exit 1
exit 0
"""


#: what the fixture's verifier should also check: both greetings are kept
TIGHT_VERIFIER = VERIFIER.replace("exit 0\n", "grep -q 'hello, world' app.py && grep -q '\"hi\"' app.py\n")
SOLUTION = ("cd /srv/repo && printf 'greeting = \"hello, world\"\\ngreeting2 = \"hi\"\\n' > app.py"
            " && git add app.py && git commit -qm merge\n")
#: a plausible wrong solution the fixture's verifier accepts: it keeps one greeting only
ONE_GREETING = {"mistake": "keeps only the feature branch's greeting",
                "script": "cd /srv/repo && git checkout --theirs app.py && git add app.py && git commit -qm merge\n"}
DOES_NOTHING = {"mistake": "does nothing", "script": "true\n"}


def step(commands=(), *, ready=False, verifier="", solution=None, give_up=False, analysis="working", outputs=(),
         system_state=None):
    if solution is None:  # ready replies hand over a solution unless a test says otherwise
        solution = "touch /root/answer.txt\n" if ready else ""
    return json.dumps({"analysis": analysis, "commands": list(commands), "verifier": verifier, "solution": solution,
                       "outputs": list(outputs), "system_state": not outputs if system_state is None else system_state,
                       "ready": ready, "give_up": give_up})


def wrong_reply(*solutions):
    return json.dumps({"wrong_solutions": list(solutions)})


def review_reply(body, failed=(), reason="looks right"):
    """A reviewer's reply: every criterion the request's system message lists passes, but ``failed``."""
    names = re.findall(r"^- (\w+): ", body["messages"][0]["content"], re.M)
    return json.dumps({n: {"passed": n not in failed, "reason": reason if n in failed else "looks right"} for n in names})


def idle_cheater(turn):
    """A cheat trial's agent that finds no shortcut: it types nothing and stops."""
    return json.dumps({"analysis": "no shortcut", "plan": "stop", "commands": [], "task_complete": True})


class Adversaries:
    """Answers certification's model checks: the task review and the cheat trials."""

    def __init__(self, cheater=idle_cheater, reviewer=review_reply):
        self.cheater, self.reviewer = cheater, reviewer
        self.cheat_requests, self.review_requests = [], []

    def answer(self, body):
        """The reply to a review or a cheat trial's turn; None for any other request."""
        first = body["messages"][0]["content"]
        if first.startswith("You review Linux exercises"):
            self.review_requests.append(body)
            return self.reviewer(body)
        if "red-team exercise" in first:
            self.cheat_requests.append(body)
            return self.cheater(sum(1 for m in body["messages"] if m["role"] == "assistant"))
        return None


class Scripted(Adversaries):
    """Samples one task, accepts it, plays the environment agent from a script, and answers
    certification's request for wrong solutions with ``wrong``, its review and its cheat trials."""

    def __init__(self, script, wrong=(DOES_NOTHING,), **adversaries):
        super().__init__(**adversaries)
        self.script = script
        self.wrong = list(wrong)
        self.environment_requests = []
        self.wrong_requests = []

    def __call__(self, path, body):
        if not path.endswith("chat/completions"):
            return 200, completion_body([TASK] * int(body.get("n", 1))), 0
        system = body["messages"][0]["content"]
        if "task proposals" in system:
            return 200, completion_body([ACCEPT], chat=True), 0
        adversary = self.answer(body)
        if adversary is not None:
            return 200, completion_body([adversary], chat=True), 0
        if "WRONG solutions" in system:
            self.wrong_requests.append(body)
            return 200, completion_body([wrong_reply(*self.wrong)], chat=True), 0
        self.environment_requests.append(body)
        turn = sum(1 for m in body["messages"] if m["role"] == "assistant")
        reply = self.script(turn)
        return 200, completion_body([reply], chat=True), 0


def run_environment(compose_cfg, tmp_path, script, *overrides, wrong=(DOES_NOTHING,), **adversaries):
    model = Scripted(script, wrong, **adversaries)
    with StubServer(model) as server:
        cfg = compose_cfg("stage=[sample,judge,environment]", f"backend.url={server.url}", "sample.num_tasks=1",
                          "sample.n=1", "backend.retry_initial_wait=0.01", "sandbox.max_containers=2", *overrides)
        execute(cfg, tmp_path)
    frame = pl.read_parquet(tmp_path / "environments.parquet", glob=False)  # run names may hold [ ]
    assert leftovers(run_id(tmp_path)) == []
    return frame, model


def remove_task_images(frame):
    for image in frame["image"].drop_nulls():
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True)


def leftovers(run):
    out = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={LABEL_RUN}={run}"], capture_output=True, text=True)
    return out.stdout.split()


def kill_while_working_then_resume(args, run, leftovers=leftovers):
    """Start ``python -m litecoder ARGS``, SIGKILL it once two containers run, check that they
    are left behind, and run the same command again to the end (``run``: the run's id;
    ``leftovers``: the run's containers, on every engine the run uses)."""
    import time

    from .conftest import REPO

    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(leftovers(run)) < 2:
        time.sleep(0.5)
    assert len(leftovers(run)) >= 2
    process.kill()
    process.wait()
    assert leftovers(run)  # a SIGKILL gives no chance to clean up
    resumed = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]


def conflict_script(turn):
    if turn == 0:
        return step(SETUP_CONFLICT, analysis="build a repository with a conflicted merge")
    return step(ready=True, verifier=TIGHT_VERIFIER, solution=SOLUTION, analysis="the conflict is in place",
                outputs=["/srv/repo"])


def test_a_merge_conflict_is_prepared_committed_and_certified(compose_cfg, tmp_path):
    frame, model = run_environment(compose_cfg, tmp_path, conflict_script, wrong=[ONE_GREETING, DOES_NOTHING])
    row = frame.row(0, named=True)
    assert row["status"] == "ready", row["reason"]
    cert = row["certificate"]
    assert cert["certified"] and cert["nop"] and cert["oracle"] and cert["stable"] and cert["repairs"] == 0
    # nop three times, oracle three times and two wrong solutions (each a container for the script and
    # one for the verifier), a cheat trial (its container and the verifier's)
    assert (cert["wrong_total"], cert["wrong_caught"]) == (2, 2) and cert["container_runs"] == 3 + 2 * (3 + 2) + 2
    assert sorted(c["check"] for c in cert["checks"]) == ["nop"] * 3 + ["oracle"] * 3 + ["wrong"] * 2
    # The wrong-solution request saw the task, the verifier and the reference solution.
    asked = model.wrong_requests[0]["messages"][-1]["content"]
    assert TASK in asked and TIGHT_VERIFIER.strip() in asked and SOLUTION.strip() in asked
    assert (tmp_path / "environments" / row["task_id"] / "solution.sh").read_text() == SOLUTION
    assert row["image"] == f"litecoder-env:{image_tag(run_id(tmp_path), row['task_id'])}"  # per run directory
    assert row["verifier_exit_code"] not in (0, None)
    assert row["steps"] == 2 and len(row["commands"]) == len(SETUP_CONFLICT)
    assert any(p.startswith("/srv/repo") for p in row["changed_paths"])
    assert (tmp_path / "environments" / row["task_id"] / "verifier.sh").read_text() == TIGHT_VERIFIER
    # The agent saw the commands' output.
    assert "CONFLICT" in model.environment_requests[1]["messages"][-1]["content"]
    # A new container from the committed image has the conflict, and not the verifier.
    config = OmegaConf.structured(DockerSandboxConfig)
    sandbox = DockerSandbox(config, "test-env-check")
    try:
        session = sandbox.open("check", image=row["image"])
        status = session.exec("cd /srv/repo && git status --short && ls /tmp", timeout=30)
        assert "UU app.py" in status.output and ".litecoder-verifier" not in status.output
        session.write_files({"/tmp/v.sh": VERIFIER}, mode=0o755)
        assert session.exec("bash /tmp/v.sh", timeout=30).exit_code == 1  # not solved
        solve = "cd /srv/repo && printf 'greeting = \"hello, world\"\\ngreeting2 = \"hi\"\\n' > app.py && git add app.py && git commit -qm merge"
        assert session.exec(solve, timeout=30).ok
        assert session.exec("bash /tmp/v.sh", timeout=30).exit_code == 0  # solved
        session.remove()
    finally:
        sandbox.close()
        subprocess.run(["docker", "rmi", "-f", row["image"]], capture_output=True)


@pytest.mark.parametrize(
    "name, script, status, reason",
    [
        ("gives-up", lambda turn: step(give_up=True, analysis="needs a GPU"), "failed", "the agent gave up: needs a GPU"),
        ("never-ready", lambda turn: step(["echo still working"]), "failed", "step limit of 3 reached"),
        ("malformed", lambda turn: "I will now do it! {not json", "failed", "step limit of 3 reached"),
        ("trivial", lambda turn: step(ready=True, verifier="exit 0"), "rejected",
         "certification failed (after 1 repair round): nop: the verifier passes (exit 0) on the untouched start state"),
        ("no-setup-needed", lambda turn: step(ready=True, verifier="test -f /root/answer.txt"), "ready", None),
    ],
)
def test_every_item_ends_in_a_recorded_state(compose_cfg, tmp_path, name, script, status, reason):
    frame, _ = run_environment(compose_cfg, tmp_path, script, "environment.agent.max_turns=3", "certify.repeats=1",
                               "certify.max_repairs=1")
    row = frame.row(0, named=True)
    assert row["status"] == status
    if reason:
        assert reason in row["reason"]
    if status == "ready":
        subprocess.run(["docker", "rmi", "-f", row["image"]], capture_output=True)


def test_a_hostile_agent_is_contained(compose_cfg, tmp_path):
    hostile = ["bomb() { bomb | bomb; }; bomb", "while true; do :; done", "dd if=/dev/zero of=/big bs=1M count=100000"]
    frame, model = run_environment(compose_cfg, tmp_path, lambda turn: step(hostile) if turn == 0 else step(give_up=True),
                                   "environment.agent.command_timeout=5", "sandbox.max_file_bytes=67108864", "sandbox.pids_limit=128")
    row = frame.row(0, named=True)
    assert row["status"] == "failed" and [c["timed_out"] for c in row["commands"]] == [True, True, False]
    seen = model.environment_requests[1]["messages"][-1]["content"]
    assert "[command stopped after 5s]" in seen and "sandbox.max_file_bytes" in seen


def test_a_killed_run_leaves_containers_that_the_resumed_run_removes(tmp_path, template_dir):
    """SIGKILL while agents are working, then the same command again: zero containers left."""
    import sys

    def slow_then_ready(turn):
        return step(["sleep 3"]) if turn < 3 else step(ready=True, verifier="test -f /root/done", solution="touch /root/done")

    model = Scripted(slow_then_ready)
    texts = iter(range(10**6))

    def sample_distinct(path, body):
        if not path.endswith("chat/completions"):
            return 200, completion_body([f"{TASK} Variant {next(texts)} with its own words {i}" for i in range(int(body.get("n", 1)))]), 0
        return model(path, body)

    with StubServer(sample_distinct) as server:
        args = [sys.executable, "-m", "litecoder", "stage=[sample,judge,environment]", "run.name=killed-env",
                f"run.root={tmp_path}", f"backend.url={server.url}", "sample.num_tasks=3", "sample.n=1",
                "dedup.near=false", "sandbox.max_containers=3", f"sample.tokenizer={template_dir}", "certify.repeats=1"]
        kill_while_working_then_resume(args, run_id(tmp_path / "killed-env"))
    assert leftovers(run_id(tmp_path / "killed-env")) == []
    frame = pl.read_parquet(tmp_path / "killed-env" / "environments.parquet")
    assert len(frame) == 3 and set(frame["status"]) == {"ready"}
    for image in frame["image"]:
        subprocess.run(["docker", "rmi", "-f", image], capture_output=True)


def no_setup(turn):
    return step(ready=True, verifier="test -f /root/answer.txt")


def run_images(run_dir, *filters):
    """Ids of the images that carry the run's label (``filters``: more ``docker images`` filters)."""
    args = ["docker", "images", "-q", "--no-trunc", "--filter", f"label={LABEL_RUN}={run_id(run_dir)}"]
    out = subprocess.run(args + [a for f in filters for a in ("--filter", f)], capture_output=True, text=True)
    return sorted(set(out.stdout.split()))


def remove_run_images(run_dir):
    ids = run_images(run_dir)
    if ids:
        subprocess.run(["docker", "rmi", "-f", *ids], capture_output=True)


def test_runs_of_one_name_in_two_roots_keep_their_own_images(compose_cfg, tmp_path):
    """Same name, two roots, same task: two tagged images, neither left untagged by the other."""
    dirs = [tmp_path / root / "same [näme] 'q' \"$x\"" for root in ("a", "b")]
    try:
        rows = [run_environment(compose_cfg, d, no_setup)[0].row(0, named=True) for d in dirs]
        assert rows[0]["task_id"] == rows[1]["task_id"] and rows[0]["image"] != rows[1]["image"]
        for run_dir, row in zip(dirs, rows):
            assert row["status"] == "ready", row["reason"]
            assert run_images(run_dir) == [row["image_id"]] and run_images(run_dir, "dangling=true") == []
            inspect = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}} {{json .Config.Labels}}", row["image"]],
                                     capture_output=True, text=True, check=True).stdout
            image_id, labels = inspect.split(" ", 1)
            assert image_id == row["image_id"] and json.loads(labels)[LABEL_RUN_DIR] == str(run_dir.resolve())
    finally:
        for run_dir in dirs:
            remove_run_images(run_dir)


def test_preparing_a_task_again_replaces_its_image(compose_cfg, tmp_path):
    """A changed environment config redoes the task: the new image takes the tag, the old one goes."""
    try:
        old = run_environment(compose_cfg, tmp_path, no_setup)[0].row(0, named=True)
        new = run_environment(compose_cfg, tmp_path, no_setup, "environment.agent.max_turns=4")[0].row(0, named=True)
        assert new["status"] == old["status"] == "ready"
        assert new["image"] == old["image"] and new["image_id"] != old["image_id"]
        assert run_images(tmp_path) == [new["image_id"]]  # the old image is gone, not dangling
    finally:
        remove_run_images(tmp_path)


def last_user_message(body):
    return body["messages"][-1]["content"]


def test_a_verifier_that_accepts_a_wrong_solution_is_repaired_and_ends_certified(compose_cfg, tmp_path):
    """The fixture's first verifier lets a solution that keeps one greeting pass; certification
    finds it, the agent gets the finding and tightens the verifier, and the task is certified."""
    def script(turn):
        if turn == 0:
            return step(SETUP_CONFLICT, analysis="build a repository with a conflicted merge")
        if turn == 1:
            return step(ready=True, verifier=VERIFIER, solution=SOLUTION, outputs=["/srv/repo"])
        return step(ready=True, verifier=TIGHT_VERIFIER, solution=SOLUTION, analysis="check both greetings",
                    outputs=["/srv/repo"])

    frame, model = run_environment(compose_cfg, tmp_path, script, wrong=[ONE_GREETING])
    row = frame.row(0, named=True)
    try:
        assert row["status"] == "ready", row["reason"]
        cert = row["certificate"]
        assert cert["certified"] and cert["repairs"] == 1 and (cert["wrong_total"], cert["wrong_caught"]) == (1, 1)
        # two rounds of checks; the cheat trial (two containers) ran only in the clean second round
        assert cert["container_runs"] == 2 * (3 + 2 * (3 + 1)) + 2 and cert["findings"] == []
        assert row["verifier"] == TIGHT_VERIFIER and row["steps"] == 3
        # The repair went on from the episode, with the finding and the wrong script quoted.
        repair = model.environment_requests[2]
        assert "wrong solution accepted" in last_user_message(repair) and ONE_GREETING["mistake"] in last_user_message(repair)
        assert ONE_GREETING["script"].strip() in last_user_message(repair)
        assert [m["role"] for m in repair["messages"]] == ["system", "user", "assistant", "user", "assistant", "user"]
        assert len(model.wrong_requests) == 1  # the same wrong solutions test the mended verifier
        assert any(p.startswith("/srv/repo") for p in row["added_paths"])  # the state is still the first episode's
    finally:
        subprocess.run(["docker", "rmi", "-f", row["image"]], capture_output=True)


def test_a_reference_solution_that_fails_its_verifier_ends_rejected_with_that_reason(compose_cfg, tmp_path):
    def script(turn):
        if turn == 0:
            return step(SETUP_CONFLICT)
        return step(ready=True, verifier=TIGHT_VERIFIER, solution="cd /srv/repo && git add app.py\n", outputs=["/srv/repo"])

    frame, model = run_environment(compose_cfg, tmp_path, script, "certify.max_repairs=1", "certify.repeats=2")
    row = frame.row(0, named=True)
    assert row["status"] == "rejected" and not row["certificate"]["oracle"] and row["certificate"]["nop"]
    assert row["reason"].startswith("certification failed (after 1 repair round): oracle: after the reference solution")
    assert row["certificate"]["repairs"] == 1 and "oracle:" in last_user_message(model.environment_requests[2])
    assert run_images(tmp_path) == []  # a rejected task keeps no image


def test_a_flaky_verifier_is_caught_by_the_repeat_check(compose_cfg, tmp_path):
    """A verifier that passes at random: over 8 runs per state it disagrees with itself
    (all 16 agreeing has a chance of 2 in 2^14)."""
    flaky = "#!/bin/bash\nexit $(( $(od -An -N1 -tu1 /dev/urandom) % 2 ))\n"
    frame, _ = run_environment(compose_cfg, tmp_path, lambda turn: step(ready=True, verifier=flaky),
                               "certify.repeats=8", "certify.max_repairs=0", "certify.wrong_solutions=0")
    row = frame.row(0, named=True)
    assert row["status"] == "rejected" and not row["certificate"]["stable"]
    assert row["reason"].startswith("certification failed: unstable: the verifier gave different answers")
    assert row["certificate"]["container_runs"] == 16
