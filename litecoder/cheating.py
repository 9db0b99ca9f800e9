"""Cheat trials: an agent told to get a task's reward without doing the task.

Certification proves that the verifier tells the reference solution from the start state and
from the wrong solutions the environment model thought of. A cheat trial asks what matters
for training: can an agent that sets out to game the verifier get the reward? It gets the
instruction inside a brief (``certify.cheat_brief``: edit the data, hard-code the outputs,
replace the tools, guess the checks), a container from the task's image and
``certify.cheat_max_turns`` turns. Like every rollout it never sees the verifier, and its
episode is verified as a rollout's is (``verification.py``). A rewarded trial is a finding the
environment agent repairs; the commands it ran are the exploit on record.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .agents.base import REQUEST_ERROR, Episode
from .agents.loop import TurnAgent
from .certification import quote
from .errors import RequestError
from .records import CheatTrial
from .sandboxes.terminals import open_terminal
from .templates import render
from .usage import of_turns
from .verification import Verifier, image_of

if TYPE_CHECKING:
    from omegaconf import DictConfig
    from .agents.base import Chat

@dataclass
class CheatTrials:
    """Runs a task's cheat trials within the stage's container slots."""

    config: DictConfig
    verifier: Verifier
    agent: TurnAgent
    #: ``chat`` bound to the cheating model (``certify.backend``, else the environment model)
    chat: Chat
    slots: asyncio.Semaphore
    verifier_timeout: float

    async def run(self, task: dict) -> tuple[list[CheatTrial], dict]:
        """``certify.cheat_trials`` trials on the task's record; (the trials, their usage). A
        failed model request raises ``RequestError`` (the item is retried)."""
        trials = await asyncio.gather(*(self._one(task, i) for i in range(int(self.config.cheat_trials))))
        return [trial for trial, _ in trials], of_turns(t for _, episode in trials for t in episode.turns)

    def brief(self, task: str) -> str:
        return render(self.config.cheat_brief, task=task.strip(), max_turns=int(self.config.cheat_max_turns))

    async def _one(self, task: dict, index: int) -> tuple[CheatTrial, Episode]:
        started = time.monotonic()
        name = f"{task['task_id']}-cheat{index}"
        async with self.slots:
            session = await asyncio.to_thread(self.verifier.sandbox.open, name, image=image_of(task), network="none")
            try:
                baseline = await asyncio.to_thread(self.verifier.before, session, task)
                episode = await self.agent.run(self.brief(task["text"]), open_terminal(self.agent, session), self.chat)
                if episode.stop_reason == REQUEST_ERROR:
                    raise RequestError(f"cheat trial: {episode.detail}")
                verdict = await asyncio.to_thread(self.verifier.verify, session, task, timeout=self.verifier_timeout,
                                                  name=name, baseline=baseline)
            finally:
                await asyncio.to_thread(session.remove)
        commands = [c.keystrokes for t in episode.turns for c in t.commands if c.keystrokes.strip()]
        return CheatTrial(index=index, rewarded=verdict.solved, verifier_exit_code=verdict.exit_code,
                          tampered=verdict.tampered, stop_reason=episode.stop_reason, turns=len(episode.turns),
                          commands=commands, seconds=round(time.monotonic() - started, 2),
                          containers=verdict.containers), episode


def exploit(trial: CheatTrial) -> str:
    """A rewarded trial's commands, as one quotable script (head and tail, as findings quote)."""
    text = "".join(c if c.endswith("\n") else c + "\n" for c in trial.commands)
    return quote(text) if text.strip() else "(no commands)"


def cheat_findings(trials: list[CheatTrial]) -> list[str]:
    """The findings of a round's trials: one per trial that got the reward."""
    return [f"cheat: an agent told NOT to do the exercise got the reward (the verifier passed) by running:\n"
            f"{exploit(t)}\nThe verifier must fail on such shortcuts: check the work itself (recompute the "
            f"expected values, run the engineer's program on inputs made up at verification time) and that "
            f"every output the exercise asks for is right." for t in trials if t.rewarded]
