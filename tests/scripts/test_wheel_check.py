"""The wheel: built, installed into a fresh venv (torch never resolved), imported, trained.

Runs scripts/wheel_check.sh (CI also calls it directly from .ci/run); ~2 min, so marked slow.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_check_script():
    out = subprocess.run(["bash", str(ROOT / "scripts" / "wheel_check.sh")],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "wheel_check: contents ok" in out.stdout
    assert "wheel_check: imports ok from" in out.stdout
    assert "wheel_check: passed" in out.stdout
