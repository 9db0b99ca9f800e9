"""Certification: evidence that a prepared task's verifier is right.

Every check runs in a fresh container from the task's image, with no network: ``nop`` (the
verifier alone, on the untouched start state) must fail, ``oracle`` (the reference solution,
then the verifier) must pass, each of them ``certify.repeats`` times with the same answer
every time, and ``wrong`` (a plausible wrong solution the environment model wrote, then the
verifier) must fail. The environment stage gives the findings back to its agent for repair
rounds; this module only runs checks and reads their results.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from typing import TYPE_CHECKING

from .records import CheckRun, WrongSolution
from .replies import ask_json
from .review import UNUSABLE_REVIEW
from .templates import render
from .usage import new_usage
from .sandboxes.base import clip, run_verifier
from .verification import Verifier, image_of

if TYPE_CHECKING:
    from omegaconf import DictConfig
    from .backends.base import LLMClient

NOP, ORACLE, WRONG = "nop", "oracle", "wrong"
#: where a solution script is copied to run; the ``.litecoder`` prefix keeps it out of diffs
SOLUTION_PATH = "/tmp/.litecoder-solution.sh"
#: characters of a verifier's output quoted in a finding
QUOTED = 600

WRONG_SCHEMA = {
    "type": "object",
    "properties": {"wrong_solutions": {"type": "array", "maxItems": 10, "items": {
        "type": "object",
        "properties": {"mistake": {"type": "string", "maxLength": 500}, "script": {"type": "string", "maxLength": 8000}},
        "required": ["mistake", "script"], "additionalProperties": False}}},
    "required": ["wrong_solutions"],
    "additionalProperties": False,
}


def run_check(verifier: Verifier, task: dict, name: str, script: str | None, *,
              solution_timeout: float, verifier_timeout: float) -> dict:
    """One check in a fresh offline container from the task's image: ``script`` (if any), then
    the verifier, as a rollout is verified (``verification.py``). Returns a ``CheckRun``'s
    fields but ``check`` and ``index``."""
    started = time.monotonic()
    session = verifier.sandbox.open(name, image=image_of(task), network="none")
    try:
        if script is None:  # the untouched start state: nothing to keep apart from
            code, output = run_verifier(session, task["verifier"], verifier_timeout)
            return {"solution_exit_code": None, "verifier_exit_code": code, "verifier_output": output,
                    "seconds": round(time.monotonic() - started, 2), "tampered": []}
        baseline = verifier.before(session, task)
        session.write_files({SOLUTION_PATH: script}, mode=0o755)
        result = session.exec(f"cd /root && bash {SOLUTION_PATH}", timeout=solution_timeout)
        verdict = verifier.verify(session, task, timeout=verifier_timeout, name=name, baseline=baseline)
    finally:
        session.remove()
    return {"solution_exit_code": 124 if result.timed_out else result.exit_code,
            "verifier_exit_code": verdict.exit_code, "verifier_output": verdict.output,
            "seconds": round(time.monotonic() - started, 2), "tampered": verdict.tampered,
            "containers": verdict.containers}


class Certifier:
    """Runs a task's checks, at most as many containers at once as ``slots`` allows."""

    def __init__(self, config: DictConfig, verifier: Verifier, slots: asyncio.Semaphore, verifier_timeout: float) -> None:
        self.config, self.verifier, self.slots = config, verifier, slots
        self.verifier_timeout = verifier_timeout

    async def checks(self, task: dict, wrong: list[WrongSolution]) -> list[CheckRun]:
        """Every check of one round on the task's record (its image, verifier, solution and
        outputs), in parallel within the container slots (no oracle checks without a
        solution: an imported task may have none)."""
        repeats, solution = max(1, int(self.config.repeats)), task.get("solution")
        jobs: list[tuple[str, int, str | None]] = [(NOP, i, None) for i in range(repeats)]
        jobs += [(ORACLE, i, solution) for i in range(repeats) if solution is not None]
        jobs += [(WRONG, i, w.script) for i, w in enumerate(wrong)]
        return list(await asyncio.gather(*(self._one(task, *job) for job in jobs)))

    async def _one(self, task: dict, check: str, index: int, script: str | None) -> CheckRun:
        async with self.slots:
            fields = await asyncio.to_thread(
                run_check, self.verifier, task, f"{task['task_id']}-{check}{index}", script,
                solution_timeout=float(self.config.solution_timeout), verifier_timeout=self.verifier_timeout)
        return CheckRun(check=check, index=index, **fields)


def solved(run: CheckRun) -> bool:
    return run.verifier_exit_code == 0


def certificate(runs: list[CheckRun], wrong: list[WrongSolution], *, wanted_wrong: int,
                wrong_error: str | None = None) -> dict:
    """Read one round's runs: each check's verdict, the findings (in the words the agent
    and the record get), and whether the task is certified."""
    nop = [r for r in runs if r.check == NOP]
    oracle = [r for r in runs if r.check == ORACLE]
    tried = [(w, r) for w, r in zip(wrong, sorted((r for r in runs if r.check == WRONG), key=lambda r: r.index))]
    stable = len({solved(r) for r in nop}) <= 1 and len({solved(r) for r in oracle}) <= 1
    cert = {"nop": not any(solved(r) for r in nop), "oracle": all(solved(r) for r in oracle), "stable": stable,
            "wrong_total": len(tried), "wrong_caught": sum(not solved(r) for _, r in tried),
            "checks": [asdict(r) for r in runs], "cheats": [], "cheat_trials": None, "cheats_rewarded": None,
            "review": [], "review_passed": None}  # the model's checks (``adversarial.py``) fill these
    cert["findings"] = findings(cert, nop, oracle, tried, wanted_wrong, wrong_error)
    cert["certified"] = not cert["findings"]
    return cert


def findings(cert: dict, nop: list[CheckRun], oracle: list[CheckRun], tried: list[tuple[WrongSolution, CheckRun]],
             wanted_wrong: int, wrong_error: str | None) -> list[str]:
    found = []
    if not cert["stable"]:
        for state, runs in (("the untouched start state", nop), ("the state after the reference solution", oracle)):
            codes = [r.verifier_exit_code for r in runs]
            if len({c == 0 for c in codes}) > 1:
                found.append(f"unstable: the verifier gave different answers on {state}, exit codes {codes} "
                             f"over {len(runs)} runs")
    if cert["stable"] and not cert["nop"]:
        found.append("nop: the verifier passes (exit 0) on the untouched start state, so it does not check "
                     "that the exercise was done")
    failed = next((r for r in oracle if not solved(r)), None)
    if failed is not None and failed.tampered:
        found.append("oracle: the reference solution changed what the verifier relies on, outside the declared "
                     "outputs (declare them, or leave those files alone): " + "; ".join(failed.tampered[:5]))
    elif cert["stable"] and failed is not None:
        found.append(f"oracle: after the reference solution (exit {failed.solution_exit_code}) the verifier exits "
                     f"{failed.verifier_exit_code}: {quote(failed.verifier_output)}")
    for wrong, run in tried:
        if solved(run):
            found.append(f"wrong solution accepted: the verifier passes after a wrong solution ({wrong.mistake}):\n"
                         f"{quote(wrong.script)}")
    if wanted_wrong and not tried:
        found.append(f"no wrong solutions to try: {wrong_error or 'the model wrote none'}")
    return found


#: findings no repair can mend: the environment model wrote no wrong solutions, the review's
#: reply could not be read
UNREPAIRABLE = ("no wrong solutions", UNUSABLE_REVIEW)


def repairable(cert: dict) -> bool:
    """Whether the environment agent could mend what certification found."""
    return any(not f.startswith(UNREPAIRABLE) for f in cert["findings"])


def quote(text: str | None) -> str:
    return clip((text or "").strip(), QUOTED)[0] or "(no output)"


def rejection(cert: dict) -> str:
    """The reason a task that was not certified is rejected."""
    repairs = cert.get("repairs", 0)
    after = f" (after {repairs} repair round{'s' * (repairs != 1)})" if repairs else ""
    return f"certification failed{after}: " + "; ".join(f.splitlines()[0] for f in cert["findings"])


async def wrong_solutions(client: LLMClient, config: DictConfig, task: str, verifier: str, solution: str, *,
                          structured: bool) -> tuple[list[WrongSolution], dict, str | None]:
    """Ask the environment model for ``certify.wrong_solutions`` wrong solutions: (them, the
    request's usage, why there are none when the reply was unusable). Scripts equal to the
    reference solution are left out."""
    count = int(config.wrong_solutions)
    if count < 1:
        return [], new_usage(), None
    messages = [{"role": "system", "content": render(config.wrong_system, count=count)},
                {"role": "user", "content": render(config.wrong_instruction, task=task.strip(), verifier=verifier,
                                                   solution=solution, count=count)}]
    reply, usage, error = await ask_json(client, messages, WRONG_SCHEMA, name="wrong_solutions", config=config,
                                         structured=structured)
    if reply is None:
        return [], usage, f"the reply was not usable: {error}"
    wrong = [WrongSolution(w["mistake"].strip(), w["script"]) for w in reply["wrong_solutions"]
             if w["script"].strip() and w["script"].strip() != solution.strip()]
    return wrong[:count], usage, None
