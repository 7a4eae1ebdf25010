"""The package type-checks under ``mypy --strict``: typed records and signatures are checked on every change."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_package_passes_mypy_strict() -> None:
    if subprocess.run([sys.executable, "-m", "mypy", "--version"], capture_output=True).returncode != 0:
        pytest.skip("mypy is not installed (it is in the test extra: pip install -e '.[test]')")
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "statecraft"], cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stdout[-4000:]
