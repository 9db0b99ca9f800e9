"""Names of a run's containers and images: valid for Docker whatever the run's name, and
distinct for runs of one name in two roots."""

from __future__ import annotations

import re

import pytest

from litecoder.sandboxes.names import MAX_TAG, image_tag, run_id

TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@pytest.mark.parametrize("name", ["plain", "run [1] 'quoted' \"too\"", "näme mit ümlauten", "试验", ".hidden",
                                  "-dash", "$HOME `x`", "x" * 250])
def test_every_run_name_gives_a_valid_tag(tmp_path, name):
    tag = image_tag(run_id(tmp_path / name), "0123456789abcdef")
    assert TAG.fullmatch(tag) and len(tag) <= MAX_TAG
    assert tag.endswith("-0123456789abcdef")


def test_a_long_item_is_cut_to_a_valid_tag(tmp_path):
    tag = image_tag(run_id(tmp_path / ("x" * 250)), "y" * 300)
    assert TAG.fullmatch(tag) and len(tag) == MAX_TAG


def test_the_run_id_is_the_directory_not_the_name(tmp_path, monkeypatch):
    first, second = run_id(tmp_path / "a" / "same"), run_id(tmp_path / "b" / "same")
    assert first != second and first.startswith("same-") and second.startswith("same-")
    monkeypatch.chdir(tmp_path / "..")
    assert run_id(f"{tmp_path.name}/a/same") == first  # resolved: relative or absolute, one id
    assert run_id(tmp_path / "a" / "same") == first  # stable
