"""A run from a file: ``amago-fast train --config FILE.json [--<field> VALUE ...]``.

The file is JSON in the layout of a run's ``config.json`` (``config_to_dict``): an earlier run's
config.json starts an identical run (give a new ``--run_name``/``--run-dir``: an existing run is
never overwritten), and a partial file — ``{"env": {"name": "gym:Acrobot-v1"}, "batch_size":
32}`` — sets only what it names, over TrainConfig's defaults or over ``--preset``'s values when
one is given. Command-line overrides apply on top of the file. The fields a file names count as
typed by the user: a profile-sized config (``profile``, amago_fast/profiles.py) sizes only the
fields neither the file nor the command line set.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from amago_fast.config import TrainConfig, config_from_dict

__all__ = ["read_config_file", "named_fields"]


def named_fields(data: dict[str, Any], cfg: Any, prefix: str = "") -> list[str]:
    """The dotted leaf names a config dict `data` sets, walking the dataclass tree of `cfg`
    (dict-valued fields such as ``env.kwargs`` are leaves, not sections)."""
    out: list[str] = []
    for key, value in data.items():
        current = getattr(cfg, key, None)
        if dataclasses.is_dataclass(current) and not isinstance(current, type) and \
                isinstance(value, dict):
            out += named_fields(value, current, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}")
    return out


def read_config_file(path: str | os.PathLike,
                     base: TrainConfig | None = None) -> tuple[TrainConfig, list[str]]:
    """(the config `path` describes over `base` (default: TrainConfig()), the dotted names it
    sets). ValueError naming the file when it cannot be read as a JSON object; ConfigError
    naming the field for an unknown one (``config_from_dict``); `base` is not modified."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ValueError(f"--config {path}: cannot read it ({e.strerror or e})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--config {path}: not JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: expected a JSON object of config fields, got "
                         f"{type(data).__name__}")
    base = base if base is not None else TrainConfig()
    cfg = config_from_dict(data, base=base)
    return cfg, named_fields(data, base)
