"""Reading other harnesses' task directories: where a Harbor task's image comes from (its
Dockerfile, the main service of its docker-compose.yaml, or a prebuilt image) and where its
commands start."""

from __future__ import annotations

from pathlib import Path

import pytest

from litecoder.task_dirs import HARBOR, read_task


def harbor(root: Path, files: dict[str, str], toml: str = "") -> Path:
    files = {"instruction.md": "Do it.\n", "task.toml": toml, "tests/test.sh": "exit 0\n", **files}
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def read(directory: Path):
    return read_task(HARBOR, directory, directory, max_bytes=1 << 20)


def test_the_main_service_of_a_compose_file_is_built_from_its_context(tmp_path):
    task = read(harbor(tmp_path / "a", {
        "environment/docker-compose.yaml": "services:\n  main:\n    build:\n      context: ./app\n    working_dir: /srv\n",
        "environment/app/Dockerfile": "FROM debian:bookworm\nWORKDIR /app\n"}))
    assert task.context == str((tmp_path / "a" / "environment" / "app").resolve()) and task.image is None
    assert task.workdir == "/srv"  # the service's working_dir wins over the Dockerfile's WORKDIR
    assert "cd /srv " in task.verifier


def test_task_toml_workdir_wins_and_a_prebuilt_image_is_taken(tmp_path):
    task = read(harbor(tmp_path / "b", {"environment/docker-compose.yaml": "services:\n  main:\n    image: alpine:3\n"},
                       '[environment]\nworkdir = "/work"\n'))
    assert task.context is None and task.image == "alpine:3" and task.workdir == "/work"
    task = read(harbor(tmp_path / "c", {"environment/Dockerfile": "FROM debian:bookworm\nWORKDIR /app\n"}))
    assert task.context == str(tmp_path / "c" / "environment") and task.workdir == "/app"


@pytest.mark.parametrize("compose, error", [
    ("services:\n  main:\n    build: .\n  db:\n    image: postgres\n", r"services beside main \(db\)"),
    ("services:\n  main:\n    build:\n      context: .\n      dockerfile: Dockerfile.dev\n", "builds 'Dockerfile.dev'"),
    ("version: '3'\n", "has no services"),
    ("services:\n  main:\n    environment: {A: b}\n", "no main service"),
])
def test_a_compose_file_litecoder_cannot_run_says_why(tmp_path, compose, error):
    with pytest.raises(ValueError, match=error):
        read(harbor(tmp_path / "d", {"environment/docker-compose.yaml": compose, "environment/Dockerfile.dev": "FROM x\n"}))
