"""The stage runner on its own (no server, no engine): storing, pricing, budgets, the breaker,
progress; and a stage's per-item work called directly."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from litecoder.backends.base import Choice, Completion
from litecoder.budget import Budget, BudgetConfig
from litecoder.errors import BackendError, RequestError
from litecoder.runner import Done, run_items
from litecoder.stages.judge import ACCEPTED, JudgeRequest, JudgeStage, judgment_schema
from litecoder.store import DONE, FAILED, RunStore


class Client:
    """A scripted async client: each call returns the next reply (an exception is raised)."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.closed = False

    async def chat(self, messages, n=1, **params):
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return Completion(choices=[Choice(text=reply, finish_reason="stop", completion_tokens=5)], model="m", prompt_tokens=10,
                          completion_tokens=5, latency_s=0.0)

    async def aclose(self):
        self.closed = True


class FakeRun:
    def __init__(self, tmp_path, budget=None, diagnosis=None):
        self.cfg = OmegaConf.create({"run": {"progress": False, "progress_interval": 30.0}})
        self.store = RunStore(tmp_path / "store.sqlite")
        self.budget = Budget(OmegaConf.structured(BudgetConfig(**(budget or {}))))
        self.clients = []
        self._backend = SimpleNamespace(diagnose=lambda: diagnosis)

    def backend(self, stage):
        return self._backend

    def backend_config(self, stage):
        return OmegaConf.create({"price_input_per_mtok": 1.0, "price_output_per_mtok": 2.0})

    def client(self, stage):
        self.clients.append(Client([]))
        return self.clients[-1]

    def path(self, name):
        return name


def work(fail=()):
    async def one(item, client):
        usage = {"requests": 1, "prompt_tokens": 100, "completion_tokens": 50}
        record = {"item": item, "usage": usage}
        if item in fail:
            return Done([(str(item), FAILED, "error", "request failed: down", record)], usage, "down")
        return Done([(str(item), DONE, "ok", None, record)], usage)
    return one


def run(fake, items, one, **kwargs):
    options = {"total": len(items), "label": "test", "unit": "item", "limit": 2, "table": "t.parquet", **kwargs}
    return asyncio.run(run_items(fake, "stage", items, one, **options))


def test_every_item_is_stored_priced_and_counted_and_the_client_closed(tmp_path):
    fake = FakeRun(tmp_path)
    fake.store.open_stage("stage", {}, None, retry_failed=True)
    assert run(fake, list(range(5)), work(fail={3})) is None
    items = {i.key: i for i in fake.store.items("stage")}
    assert len(items) == 5 and items["3"].state == FAILED and items["0"].outcome == "ok"
    assert items["0"].record["usage"]["cost_usd"] == pytest.approx((100 * 1.0 + 50 * 2.0) / 1e6)  # priced in place
    assert fake.budget.requests == 5 and fake.budget.tokens == 750
    assert fake.clients[0].closed


def test_a_budget_stops_dispatching_and_says_which(tmp_path):
    fake = FakeRun(tmp_path, budget={"max_requests": 3})
    fake.store.open_stage("stage", {}, None, retry_failed=True)
    assert run(fake, list(range(10)), work(), limit=1) == "budget.max_requests=3 (spent 3)"
    assert len(fake.store.items("stage")) == 3


def test_one_breaker_rule_names_the_backends_diagnosis(tmp_path):
    fake = FakeRun(tmp_path, diagnosis="the vLLM server exited (code 1)")
    fake.store.open_stage("stage", {}, None, retry_failed=True)
    with pytest.raises(BackendError, match=r"stage requests keep failing.*t\.parquet.*vLLM server exited"):
        run(fake, list(range(3)), work(fail={0, 1, 2}))
    assert len(fake.store.items("stage")) == 3  # every failure is recorded before it stops
    fake = FakeRun(tmp_path / "second")
    fake.store.open_stage("stage", {}, None, retry_failed=True)
    assert run(fake, list(range(3)), work(fail={0, 1})) is None  # one success: no breaker


def test_the_judges_work_for_one_task_retries_a_reply_that_does_not_fit(tmp_path):
    criteria = [{"name": "clarity", "weight": 1.0, "scale_min": 1, "scale_max": 5, "min_score": None}]
    judge = OmegaConf.create({"criteria": criteria, "aggregation": "mean", "threshold": 3.0, "max_attempts": 2,
                              "max_reply_chars": 10_000, "rationale_max_chars": None})
    request = JudgeRequest(judge, "system", judgment_schema(judge), {}, "m")
    task = {"id": "t1", "domain": "d", "subtopic": "s", "prompt_variant": "v1", "text": "do it"}
    good = json.dumps({"clarity": {"rationale": "clear", "score": 4}})
    done = asyncio.run(JudgeStage().judge_one(request, task, Client(["not json", good])))
    ((key, state, outcome, reason, record),) = done.entries
    assert (key, state, outcome, reason) == ("t1", DONE, ACCEPTED, None)
    assert record["attempts"] == 2 and done.usage["requests"] == 2 and done.request_error is None
    done = asyncio.run(JudgeStage().judge_one(request, task, Client(["nope", "still nope"])))
    assert done.entries[0][1:3] == (FAILED, "unparsed") and "no valid judgment after 2 attempts" in done.entries[0][3]
    done = asyncio.run(JudgeStage().judge_one(request, task, Client([RequestError("HTTP 503: down")])))
    assert done.entries[0][1:3] == (FAILED, "error") and done.request_error == "HTTP 503: down"


def test_the_time_left_holds_steady_when_a_batch_of_concurrent_items_ends_together(tmp_path, monkeypatch):
    """Eight items run at once and take 60 s each; the finishing rate leaps when they end
    together, the time left does not."""
    from litecoder import progress

    clock = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    bar = progress.Progress(FakeRun(tmp_path), "test", 80, "item", concurrency=8)
    clock[0] = 60.0
    bar.update(1, seconds=60.0)
    first = bar.eta_seconds()
    for _ in range(7):
        bar.update(1, seconds=60.0)
    assert first == pytest.approx(79 * 60 / 8) and bar.eta_seconds() == pytest.approx(72 * 60 / 8)
    assert "eta 9m00s" in bar.line()
    rate_based = progress.Progress(FakeRun(tmp_path / "r"), "test", 80, "item")
    clock[0] = 120.0
    rate_based.update(8)
    assert rate_based.eta_seconds() == pytest.approx(60 / 8 * 72)  # no item times: the rate over 60 s


def test_a_resumed_stage_runs_only_what_is_not_finished(tmp_path):
    from litecoder.runner import open_items

    fake = FakeRun(tmp_path)
    fake.cfg = OmegaConf.create({"run": {"progress": False, "progress_interval": 30.0, "retry_failed": True}})
    stage = SimpleNamespace(name="stage", identity=lambda cfg, backend: {"v": 1})
    fake.backend_config = lambda name: None
    assert open_items(fake, stage, {"0", "1", "2", "3"}) == set()
    run(fake, [0, 1, 2, 3], work(fail={2}))
    finished = open_items(fake, stage, {"0", "1", "2", "3"})
    assert finished == {"0", "1", "3"}  # the failure is tried again
    stage.identity = lambda cfg, backend: {"v": 2}
    assert open_items(fake, stage, {"0", "1", "2", "3"}) == set()  # another identity: all stale, redone
