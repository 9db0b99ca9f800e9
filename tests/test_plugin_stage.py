"""A stage plugin that calls a model declares itself once and gets what the built-in stages
get, with no edit to litecoder: its place in ``stage=all``, its own backend and price, resume,
its spend line, a sweep column, and a section of the report."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Optional

import polars as pl

from litecoder import hookimpl
from litecoder.compare import comparison
from litecoder.page import Section, table
from litecoder.outcomes import ACCEPTED
from litecoder.run import execute
from litecoder.runner import Done
from litecoder.stage import ItemStage, Plan, model_stages, pipeline
from litecoder.store import DONE
from litecoder.usage import of_request

from .stub_openai import StubServer, completion_body
from .test_report import ACCEPT, TASKS


@dataclass
class TitlesConfig:
    max_tokens: int = 16
    #: its own model; null: the run's backend
    backend: Optional[Any] = None


class TitlesStage(ItemStage):
    """A short title for every accepted task."""

    name, order, calls_model = "titles", 25, True
    unit, table = "task", "titles.parquet"

    def identity(self, cfg, backend_config):
        return {"max_tokens": cfg.titles.max_tokens}

    def inputs(self, run):
        self.tasks = [i.record for i in run.store.items("judge", DONE) if i.outcome == ACCEPTED]
        return {t["task_id"] for t in self.tasks}

    def plan(self, run, finished):
        async def one(task: dict, client) -> Done:
            result = await client.chat([{"role": "user", "content": f"A title for: {task['text']}"}],
                                       max_tokens=run.cfg.titles.max_tokens)
            usage = of_request(result)
            record = {"task_id": task["task_id"], "title": result.choices[0].text.strip(), "usage": usage}
            return Done([(task["task_id"], DONE, "titled", None, record)], usage)

        todo = [t for t in self.tasks if t["task_id"] not in finished]
        return Plan(todo, one, total=len(todo), facts={"inputs": len(self.tasks)})

    def export(self, run):
        rows = [{"task_id": i.record["task_id"], "title": i.record["title"]} for i in run.store.items(self.name, DONE)]
        pl.DataFrame(rows, schema={"task_id": pl.String, "title": pl.String}).write_parquet(run.path(self.table))

    def report_section(self, run):
        rows = [[i.record["task_id"], i.record["title"]] for i in run.store.items(self.name, DONE)]
        return Section("Titles", "titles", table(["task", "title"], rows, "table-titles"))


class TitlesPlugin:
    @hookimpl
    def litecoder_register_stages(self, register):
        register("titles", TitlesStage, config=TitlesConfig)


class TitlingModel:
    """Samples the report tests' tasks, accepts every one, and titles them."""

    def __init__(self) -> None:
        self.tasks = iter(TASKS)

    def __call__(self, path, body):
        if path.endswith("chat/completions"):
            text = "A Title" if "A title for" in json.dumps(body) else ACCEPT
            return 200, completion_body([text], chat=True), 0
        return 200, completion_body([next(self.tasks) for _ in range(int(body.get("n", 1)))]), 0


def test_a_model_calling_stage_plugin_gets_pricing_a_sweep_column_and_a_report_section(plugins, compose_cfg, tmp_path):
    plugins.register(TitlesPlugin(), "titles-plugin")
    assert pipeline(plugins) == ["sample", "judge", "titles", "environment", "trajectory", "export"]
    assert "titles" in model_stages(plugins)
    run_dir = tmp_path / "sweep" / "run"
    with StubServer(TitlingModel()) as server:
        own_model = ["+backend@titles.backend=openai", f"titles.backend.base_url={server.url}/v1",
                     "titles.backend.model=titler", "titles.backend.api_key_env=null"]
        cfg = compose_cfg("stage=[sample,judge,titles]", f"backend.url={server.url}", "sample.num_tasks=3",
                          "sample.n=1", "domain=security", *own_model,
                          "+prices.titler={input_per_mtok:1000000,output_per_mtok:1000000}")
        summaries = execute(cfg, run_dir)
        asked = len(server.requests)
        again = execute(cfg, run_dir)  # resumed: every title is on record, none is asked for again
        assert len(server.requests) == asked and again["titles"][DONE] == summaries["titles"][DONE]
    titled = summaries["titles"]
    assert titled["inputs"] >= 1 and titled["titled"] == titled["inputs"] and titled[DONE] == titled["inputs"]
    assert pl.read_parquet(run_dir / "titles.parquet")["title"].to_list() == ["A Title"] * titled["inputs"]
    spend = json.loads((run_dir / "summary.json").read_text())["spend"]
    (row,) = [s for s in spend["stages"] if s["stage"] == "titles"]
    assert row["requests"] == titled["inputs"] and row["cost_usd"] == row["tokens"]  # $1 per token, its own price
    assert {s["stage"]: s["cost_usd"] for s in spend["stages"]}["sample"] == 0  # the run's model has no price
    assert "section-titles" in (run_dir / "report.html").read_text() and "table-titles" in (run_dir / "report.html").read_text()
    columns = comparison(tmp_path / "sweep").row(0, named=True)
    assert columns["titles_tokens"] == row["tokens"] and columns["titles_cost_usd"] == row["cost_usd"]

