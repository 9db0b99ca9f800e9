"""The contracts are checked, not only written down: mypy over litecoder and its plugins."""

from __future__ import annotations

import subprocess
import sys

from .conftest import REPO


def test_the_type_checker_finds_no_error():
    result = subprocess.run([sys.executable, "-m", "mypy", "--no-color-output"], cwd=REPO, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert "Success: no issues found" in result.stdout


def test_any_stays_rare_in_the_package():
    """``Any`` is kept for what has no type to give (config nodes OmegaConf types at run time,
    JSON, Ray's remote calls): new code is written against the contracts instead."""
    import re

    count = sum(len(re.findall(r"\bAny\b", path.read_text())) for path in (REPO / "litecoder").rglob("*.py"))
    assert count <= 60, f"{count} uses of Any in litecoder/ (at most 60)"
