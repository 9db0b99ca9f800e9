"""Benchmark copies are kept out: a small benchmark collection in both layouts (Harbor task
directories, Terminal-Bench 1 task directories), and sampled tasks that copy, paraphrase or
have nothing to do with its tasks."""

from __future__ import annotations

import polars as pl
import pytest

from litecoder.decontaminate import DecontaminateConfig, find_contaminated, read_collections
from litecoder.errors import ConfigError
from litecoder.run import execute

from .test_judge_stage import FAST, Model, by_keyword
from .stub_openai import StubServer

GIT = ("Resolve the merge conflict in /srv/repo/app.py so that both greetings are kept, then commit the merge "
       "with the message 'merge feature'.")
NGINX = ("Configure nginx as a reverse proxy that forwards requests on port 8080 to the two backends listening "
         "on ports 9001 and 9002, balancing them round robin.")
CSV = "Count the rows of /data/sales.csv whose region column is north and write the number to /root/answer.txt."

#: sampled tasks and the benchmark task each should match (None: clean)
SAMPLED = {
    "exact": (GIT, "harbor-bench/fix-git"),
    "shouted": (NGINX.upper() + "!!", "tb-bench/nginx-proxy"),  # the same words, cased and punctuated otherwise
    "paraphrase": ("Your team asks for help: please configure nginx as a reverse proxy that forwards requests on port "
                   "8080 to a single backend, and document it in /root/NOTES.md.", "tb-bench/nginx-proxy"),
    "unrelated": ("Train a logistic regression on /data/iris.csv with scikit-learn and write its accuracy to "
                  "/root/accuracy.txt.", None),
    "same topic": ("Set up a git repository in /srv/site with a pre-commit hook that rejects trailing whitespace.", None),
}


def write_collection(root):
    """Harbor tasks (instruction.md) in one collection, Terminal-Bench 1 tasks (task.yaml) in another."""
    harbor = root / "harbor-bench"
    for name, text in (("fix-git", GIT), ("count-csv", CSV)):
        (harbor / name / "tests").mkdir(parents=True)
        (harbor / name / "instruction.md").write_text(text + "\n")
        (harbor / name / "task.toml").write_text('schema_version = "1.4"\n')
    tb = root / "tb-bench" / "nginx-proxy"
    tb.mkdir(parents=True)
    (tb / "task.yaml").write_text("instruction: |-\n  " + NGINX + "\ndifficulty: medium\ncategory: networking\n")
    old = root / "tb-bench" / "old-style"  # Terminal-Bench's older layout lists descriptions
    old.mkdir()
    (old / "task.yaml").write_text("descriptions:\n  - key: base\n    description: Compress /var/log into a dated tarball.\n")
    return [str(harbor), str(root / "tb-bench")]


def test_both_layouts_are_read(tmp_path):
    tasks = {t.name: t.instruction.strip() for t in read_collections(write_collection(tmp_path))}
    assert tasks == {"harbor-bench/count-csv": CSV, "harbor-bench/fix-git": GIT, "tb-bench/nginx-proxy": NGINX,
                     "tb-bench/old-style": "Compress /var/log into a dated tarball."}


def test_copies_and_paraphrases_with_a_long_shared_phrase_are_caught_and_unrelated_tasks_pass(tmp_path):
    config = DecontaminateConfig(paths=write_collection(tmp_path))
    found = find_contaminated(((k, text) for k, (text, _) in SAMPLED.items()), config, shingle_size=3)
    assert {k: m.benchmark_task for k, m in found.items()} == {k: b for k, (_, b) in SAMPLED.items() if b}
    assert found["paraphrase"].kind == "ngram" and len(found["paraphrase"].phrase.split()) == 8
    assert "benchmark task tb-bench/nginx-proxy" in found["paraphrase"].reason()


def test_a_near_copy_without_a_long_shared_run_is_caught_by_its_similarity(tmp_path):
    # two small edits: the longest run shared with the benchmark is 10 words, most shingles survive
    near = GIT.replace("so that", "so").replace("the message", "a message")
    config = DecontaminateConfig(paths=write_collection(tmp_path), ngram_words=12, near_threshold=0.4)
    (match,) = find_contaminated([("near", near)], config, shingle_size=3).values()
    assert match.kind == "near" and match.benchmark_task == "harbor-bench/fix-git" and match.similarity >= 0.4
    assert "a near copy (similarity" in match.reason()
    strict = DecontaminateConfig(paths=config.paths, ngram_words=12, near_threshold=0.99)
    assert find_contaminated([("near", near)], strict, shingle_size=3) == {}


def test_a_wrong_path_is_a_config_error_not_a_silent_pass(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        read_collections([str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no task directory"):
        read_collections([str(tmp_path / "empty")])


def test_contaminated_tasks_are_recorded_with_their_match_and_never_judged(compose_cfg, tmp_path):
    paths = write_collection(tmp_path / "benchmarks")
    texts = ["GOOD " + text for text, _ in SAMPLED.values()]
    model = Model(texts, by_keyword)
    with StubServer(model) as server:
        cfg = compose_cfg("stage=[sample,judge]", f"backend.url={server.url}", *FAST, "sample.num_tasks=5", "sample.n=1",
                          "backend.max_in_flight=1", f"judge.decontaminate.paths=[{','.join(paths)}]")
        summaries = execute(cfg, tmp_path / "run")
    judgments = pl.read_parquet(tmp_path / "run" / "judgments.parquet")
    bad = judgments.filter(pl.col("verdict") == "contaminated").sort("contaminated_by")
    assert bad["contaminated_by"].to_list() == ["harbor-bench/fix-git", "tb-bench/nginx-proxy", "tb-bench/nginx-proxy"]
    assert set(bad["contamination_kind"]) == {"ngram"} and bad["reason"].str.starts_with("contaminated: ").all()
    assert sorted(model.judged) == sorted(t for t in texts if t.removeprefix("GOOD ") in
                                          (SAMPLED["unrelated"][0], SAMPLED["same topic"][0]))
    assert summaries["judge"]["contaminated"] == 3 and summaries["judge"]["accepted"] == 2
