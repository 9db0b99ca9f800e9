"""Pass rates and difficulty labels from finished rollouts, and the pass-rate band."""

from __future__ import annotations

from litecoder.difficulty import DifficultyConfig, in_band, label, pass_rates


def rollouts(task_id, rewards):
    return [{"task_id": task_id, "reward": r, "status": "kept" if r else "dropped"} for r in rewards]


def test_pass_rates_and_labels_per_task():
    records = rollouts("a", [1, 0]) + rollouts("b", [0]) + rollouts("c", [1] * 9 + [0]) + rollouts("d", [1] + [0] * 9)
    rows = {r["task_id"]: r for r in pass_rates(records, DifficultyConfig())}
    assert rows["a"] == {"task_id": "a", "rollouts": 2, "solved": 1, "kept": 1, "pass_at_1": 0.5, "pass_at_k": 1.0,
                         "difficulty": "medium"}
    assert rows["b"]["pass_at_k"] == 0.0 and rows["b"]["difficulty"] == "unsolved"
    assert rows["c"]["difficulty"] == "easy" and rows["d"]["difficulty"] == "hard"  # 0.9 > 0.8; 0.1 < 0.2


def test_thresholds_are_config_and_no_rollouts_is_unknown():
    strict = DifficultyConfig(easy_above=0.95, hard_below=0.5)
    assert [label(p, strict) for p in (0.0, 0.4, 0.5, 0.9, 1.0)] == ["unsolved", "hard", "medium", "medium", "easy"]
    assert label(None, strict) == "unknown"


def test_the_band_keeps_tasks_the_teacher_neither_always_nor_never_solves():
    band = [0.1, 0.9]
    assert [in_band(p, band) for p in (0.0, 0.1, 0.5, 0.9, 1.0, None)] == [False, True, True, True, False, False]
    assert in_band(None, None) and in_band(1.0, None)
