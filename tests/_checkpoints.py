"""Shared helper of the checkpoint tests: re-sealing a checkpoint after its files were edited."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from amago_fast import checkpoint as ckpt


def reseal(path: Path) -> None:
    """Rewrite a checkpoint manifest's sizes and sha256 for its files as they are now (what an
    attacker crafting a run directory would do, or a test that edits a checkpoint on purpose)."""
    manifest = json.loads((path / ckpt.MANIFEST).read_text())
    for rel, entry in manifest["files"].items():
        entry["size"] = (path / rel).stat().st_size
        if "sha256" in entry:
            entry["sha256"] = hashlib.sha256((path / rel).read_bytes()).hexdigest()
    (path / ckpt.MANIFEST).write_text(json.dumps(manifest))
