"""An :class:`~amago_fast.spaces.EnvSpec` as JSON, so a run directory describes its own agent.

The trainer writes ``<run_dir>/env_spec.json`` next to ``config.json``: with it,
:func:`amago_fast.load_agent` rebuilds the agent of any run — one trained on a user's own env
included, which no env name in the config can rebuild — without constructing an env. Only
plain JSON types are written and read (no pickles); ``EnvSpec.extra`` (free-form backend
notes, not part of the agent's shape) is not stored.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from amago_fast.spaces import ActionSpec, EnvSpec, FieldSpec, GoalSpec

__all__ = ["SPEC_FILE", "spec_to_dict", "spec_from_dict", "save_spec", "load_spec"]

SPEC_FILE = "env_spec.json"
_VERSION = 1


def _field(f: FieldSpec) -> dict[str, Any]:
    return {"name": f.name, "shape": list(f.shape), "dtype": np.dtype(f.dtype).str}


def spec_to_dict(spec: EnvSpec) -> dict[str, Any]:
    """The spec as JSON-able dicts (dtypes as NumPy type strings, e.g. ``"<f4"``)."""
    a = spec.action
    out: dict[str, Any] = {
        "version": _VERSION,
        "name": spec.name,
        "observation": [_field(f) for f in spec.observation],
        "action": {"kind": a.kind, "n": a.n, "nvec": list(a.nvec), "shape": list(a.shape),
                   "low": list(a.low), "high": list(a.high)},
        "max_episode_steps": spec.max_episode_steps,
        "goals": None,
    }
    g = spec.goals
    if g is not None:
        out["goals"] = {
            "k": g.k, "goal_dim": g.goal_dim, "goal_dtype": np.dtype(g.goal_dtype).str,
            "match": g.match, "eps": g.eps, "goal_reward": g.goal_reward,
            "goal_field": g.goal_field, "achieved_field": g.achieved_field,
            "active_field": g.active_field, "completed_field": g.completed_field,
        }
    return out


def spec_from_dict(data: Any, where: str = "env spec") -> EnvSpec:
    """Rebuild an EnvSpec from :func:`spec_to_dict` output; ValueError naming what is wrong."""
    try:
        if not isinstance(data, dict) or data.get("version") != _VERSION:
            raise ValueError(f"not a version-{_VERSION} env spec")
        obs = tuple(FieldSpec(f["name"], tuple(f["shape"]), np.dtype(f["dtype"]))
                    for f in data["observation"])
        a = data["action"]
        action = ActionSpec(a["kind"], n=int(a["n"]), nvec=tuple(int(v) for v in a["nvec"]),
                            shape=tuple(int(s) for s in a["shape"]),
                            low=tuple(float(x) for x in a["low"]),
                            high=tuple(float(x) for x in a["high"]))
        g = data["goals"]
        goals = None
        if g is not None:
            goals = GoalSpec(int(g["k"]), int(g["goal_dim"]), np.dtype(g["goal_dtype"]),
                             g["match"], float(g["eps"]), float(g["goal_reward"]),
                             g["goal_field"], g["achieved_field"], g["active_field"],
                             g["completed_field"])
        steps = data["max_episode_steps"]
        return EnvSpec(str(data["name"]), obs, action, goals=goals,
                       max_episode_steps=None if steps is None else int(steps))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{where}: invalid env spec ({type(e).__name__}: {e})") from None


def save_spec(spec: EnvSpec, path: str | os.PathLike) -> None:
    """Write the spec as JSON, atomically (temp file + fsync + rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(spec_to_dict(spec), fh, indent=1)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_spec(path: str | os.PathLike) -> EnvSpec:
    """Read a spec written by :func:`save_spec`; ValueError naming the file when it is bad."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    return spec_from_dict(data, str(path))
