"""The run store's reading paths that keep large stages out of memory, and the streamed tables."""

from __future__ import annotations

import polars as pl

from litecoder.store import DONE, FAILED, RunStore
from litecoder.tables import write_records_parquet

SCHEMA = {"id": pl.String, "n": pl.Int64, "ok": pl.Boolean, "tags": pl.List(pl.String), "at": pl.String}


def _record(n: int) -> dict:
    return {"id": f"t{n}", "n": n, "ok": n % 2 == 0, "tags": ["a", str(n)], "text": "x" * 50,
            "at": "2026-11-24T10:00:00+00:00", "nested": {"flag": True, "list": [1, None]}}


def _filled(tmp_path, count: int) -> RunStore:
    store = RunStore(tmp_path / "store.sqlite")
    # stored in reverse of the field order, so ordering by a field differs from storage order
    store.put("s", [(f"k{n}", FAILED if n == 3 else DONE, "ok", None, _record(n)) for n in reversed(range(count))])
    return store


def test_fields_are_picked_in_sqlite_with_their_json_types(tmp_path):
    store = _filled(tmp_path, 5)
    items = store.items("s", fields=("n", "ok", "nested", "missing"))
    assert [i.key for i in items] == ["k4", "k3", "k2", "k1", "k0"]
    assert items[0].record == {"n": 4, "ok": True, "nested": {"flag": True, "list": [1, None]}, "missing": None}
    assert items[1].record["ok"] is False and items[1].state == FAILED
    assert store.items("s", DONE, fields=("id",))[0].record == {"id": "t4"}
    assert store.record("s", "k2") == _record(2)
    assert store.record("s", "nope") is None


def test_batches_follow_the_field_order_and_survive_writes_between_them(tmp_path):
    store = _filled(tmp_path, 12)
    assert store.keys("s", order=("n",))[:3] == ["k0", "k1", "k2"]
    assert store.records("s", ["k5", "gone", "k1"]) == [_record(5), _record(1)]
    seen = []
    for batch in store.iter_records("s", state=DONE, order=("n",), batch=5):
        seen.append([r["n"] for r in batch])
        # a stage writes its results while it reads its inputs
        store.put("t", [(r["id"], DONE, "ok", None, {"from": r["n"]}) for r in batch])
    assert seen == [[0, 1, 2, 4, 5], [6, 7, 8, 9, 10], [11]]
    assert len(store.items("t")) == 11


def test_streamed_parquet_has_every_batch_typed(tmp_path):
    batches = [[_record(n) for n in range(start, start + 3)] for start in (0, 3, 6)]
    path = write_records_parquet(tmp_path / "out.parquet", iter(batches), SCHEMA, "at")
    frame = pl.read_parquet(path)
    assert frame["n"].to_list() == list(range(9))
    assert frame.schema["at"] == pl.Datetime("us", "UTC") and frame.schema["tags"] == pl.List(pl.String)
    assert frame["ok"].to_list()[:2] == [True, False]
    assert not list(tmp_path.glob(".*")), "no temporary file is left"


def test_an_empty_table_still_has_its_columns(tmp_path):
    frame = pl.read_parquet(write_records_parquet(tmp_path / "empty.parquet", iter([]), SCHEMA, "at"))
    assert frame.height == 0 and frame.columns == list(SCHEMA)


def test_feasible_tasks_are_joined_a_batch_at_a_time_in_task_order(tmp_path):
    """1200 tasks (three batches of the export), every third accepted: feasible.parquet has
    exactly those, in task order, with their scores."""
    import types

    from litecoder.stages.judge import FEASIBLE_FILE, JudgeStage
    from litecoder.stages.sample import SampleStage, sample_key

    store = RunStore(tmp_path / "store.sqlite")
    run = types.SimpleNamespace(store=store, path=lambda name: tmp_path / name)
    tasks = [{"id": f"task-{n:04d}", "text": f"task {n}", "status": "ok", "request_index": n // 2, "choice_index": n % 2,
              "created_at": "2026-11-24T10:00:00+00:00"} for n in range(1200)]
    store.put("sample", [(sample_key(t["request_index"], t["choice_index"]), DONE, "ok", None, t) for t in reversed(tasks)])
    verdicts = [{"task_id": t["id"], "verdict": "accepted" if n % 3 == 0 else "rejected", "aggregate": float(n % 5),
                 "scores": [{"criterion": "clarity", "score": n % 5, "rationale": "r"}],
                 "judged_at": "2026-11-24T10:00:00+00:00"} for n, t in enumerate(tasks)]
    store.put("judge", [(v["task_id"], DONE, v["verdict"], None, v) for v in verdicts])
    SampleStage().export(run)
    JudgeStage().export(run)
    feasible = pl.read_parquet(tmp_path / FEASIBLE_FILE)
    assert feasible["id"].to_list() == [f"task-{n:04d}" for n in range(0, 1200, 3)]
    assert feasible["aggregate"].to_list()[:3] == [0.0, 3.0, 1.0]
    assert feasible["scores"][1].to_list() == [{"criterion": "clarity", "score": 3, "rationale": "r"}]
    assert pl.read_parquet(tmp_path / "judgments.parquet").height == 1200
