"""Resuming a run: the checkpoint it continues from (the newest one every rank reads intact,
verified without running code) and what that checkpoint fixes — the config fields a resume
cannot change and the stored observation fields the env must still produce. Used by
``Trainer`` (resume) and ``evaluate_run`` (the stored fields)."""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from amago_fast import checkpoint as ckpt
from amago_fast.config import ConfigError, TrainConfig, config_to_dict
from amago_fast.distributed import DistContext

__all__ = ["check_resume_overrides", "choose_checkpoint", "fields_mismatch", "read_checkpoint",
           "saved_fields"]


# Fields a checkpoint's state fixes: a resume restores the weights (agent architecture), the
# buffer (capacity, trajectory cap), the per-env collector/env/exploration state (env, env
# count, exploration kind) and the RNG streams (seed), so an override of them could not take
# effect. Every other field (schedule, learner settings, evaluation, logging, dropout, KV cache
# dtype) is applied; env.kwargs may change where the stored observation fields still fit (the
# checkpoint's buffer is checked against the env, naming a field that does not).
_RESUME_FIXED = ("env.name", "env.num_envs", "buffer.capacity_steps",
                 "buffer.max_trajectory_len", "seed", "agent.")
_RESUME_CHANGEABLE = ("agent.dropout_emb", "agent.dropout_ff", "agent.dropout_attn_out",
                      "agent.kv_cache_dtype")


def check_resume_overrides(saved: TrainConfig, cfg: TrainConfig) -> None:
    """ConfigError naming every field `cfg` changes from the run's `saved` config that the
    restored state fixes (see _RESUME_FIXED), with both values."""
    def flat(d: dict, prefix: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            if isinstance(v, dict) and k not in ("kwargs", "eval_kwargs", "eval_sets",
                                                 "exploration"):
                out |= flat(v, f"{prefix}{k}.")
            else:
                out[f"{prefix}{k}"] = v
        return out

    old, new = flat(config_to_dict(saved)), flat(config_to_dict(cfg))
    bad = [f"{k} ({old[k]!r} in the run, {new.get(k)!r} given)" for k in old
           if k.startswith(_RESUME_FIXED) and k not in _RESUME_CHANGEABLE
           and old[k] != new.get(k)]
    kind_old = (old.get("exploration") or {}).get("kind")
    kind_new = (new.get("exploration") or {}).get("kind")
    if kind_old != kind_new:
        bad.append(f"exploration kind ({kind_old!r} in the run, {kind_new!r} given)")
    if bad:
        raise ConfigError(f"--resume cannot change {'; '.join(bad)}: the checkpoint's restored "
                          "state fixes them (start a new run to change them)")


def fields_mismatch(saved_fields: list, env: Any) -> str | None:
    """Why a run's stored fields (its buffer's schema) do not fit `env`'s transitions, or None
    when they do: what resume and eval check before any weights load, so that another env,
    other env kwargs, or the adapters' one-hot Discrete observations read by a run that stored
    indices are named as such instead of as a weight-shape mismatch."""
    from amago_fast.collector import check_fields_match

    try:
        check_fields_match(saved_fields, env)
    except ValueError as e:
        now = {f.name: np.dtype(f.dtype) for f in env.spec.observation}
        for f in saved_fields:
            stored = _DISCRETE_FORMS.get((np.dtype(f.dtype), now.get(f.name)))
            if stored is not None:
                what, option = stored
                return (f"{e} (Discrete observations are one-hot by default, int32 indices with "
                        f"discrete_obs='index'; this run stored them as {what}: --env.kwargs "
                        f"'{{\"discrete_obs\": \"{option}\"}}')")
        shapes = {f.name: tuple(f.shape) for f in env.spec.observation}
        for f in saved_fields:
            was, is_ = tuple(f.shape), shapes.get(f.name)
            if (is_ is not None and was != is_ and math.prod(was) == math.prod(is_)
                    and {len(was), len(is_)} == {1, 3}):
                if len(was) == 3:
                    how, keys = ("as a grid (the gymnasium adapter's MiniGrid default before "
                                 "code grids were flattened)"), "[]"
                else:
                    how, keys = "flat", f'["{f.name}"]'
                return (f"{e} (this run stored {f.name!r} {how}: --env.kwargs "
                        f"'{{\"flatten_keys\": {keys}}}')")
        return str(e)
    return None


# (stored dtype, the env's dtype now) of one observation field -> how the run stored its
# Discrete values and the discrete_obs option that reads them so.
_DISCRETE_FORMS = {
    (np.dtype(np.int32), np.dtype(np.uint8)): ("indices", "index"),
    (np.dtype(np.uint8), np.dtype(np.int32)): ("one-hot", "onehot"),
}


def saved_fields(checkpoint: Path) -> list | None:
    """The fields rank 0's buffer stored in `checkpoint` (its snapshot manifest's schema), or
    None when that cannot be read (then nothing is checked)."""
    from amago_fast.buffer import SnapshotError, snapshot_fields

    try:
        return snapshot_fields(checkpoint / "rank0" / "buffer")
    except SnapshotError:
        return None


def read_checkpoint(path: Path, dist: DistContext) -> tuple[dict, dict, Any]:
    """(learner state, this rank's state, its buffer) of checkpoint `path`, every file
    verified (sizes and sha256; the buffer's arrays by their snapshot manifest) and read
    without running code, before anything of the trainer changes. CheckpointError names
    the checkpoint and what failed."""
    from amago_fast.buffer import SnapshotError, TrajectoryBuffer

    ckpt.verify_checkpoint(path)
    # Onto the CPU (load_object): load_state_dict copies weights to the learner's device
    # itself, and RNG states must stay CPU ByteTensors.
    shared = ckpt.load_object(path / "learner.pt")
    rank_dir = path / f"rank{dist.rank}"
    state = ckpt.load_object(rank_dir / "state.pt")
    if not isinstance(shared, dict) or not isinstance(state, dict) or not isinstance(
            shared.get("learner"), dict) or "loss_module" not in shared["learner"]:
        raise ckpt.CheckpointError(f"{path}: learner.pt / state.pt do not hold a trainer's "
                                   "state")
    try:
        fingerprint = ckpt.model_fingerprint(shared["learner"]["loss_module"])
    except (AttributeError, TypeError, RuntimeError) as e:
        raise ckpt.CheckpointError(f"{path}: learner.pt holds no model weights: {e}") from e
    # Compare with the model exactly as saved (not as loaded: loading may upgrade an older
    # checkpoint, e.g. add PopArt's step counter, which changes the loaded state's hash).
    saved = state.get("model_fingerprint")
    if saved is not None and saved != fingerprint:
        who = (f"rank {dist.rank}'s model differs from rank 0's in this checkpoint (the "
               "ranks had drifted apart before it was written)"
               if dist.world_size > 1 else
               "the model in learner.pt differs from the one this run recorded in state.pt")
        raise ckpt.CheckpointError(f"{path}: {who}")
    try:
        buffer = TrajectoryBuffer.load(rank_dir / "buffer")
    except SnapshotError as e:
        raise ckpt.CheckpointError(f"{path}: buffer snapshot: {e}") from e
    return shared, state, buffer

def choose_checkpoint(run_dir: Path, dist: DistContext) -> tuple[Path, dict, dict, Any] | None:
    """The newest checkpoint every rank reads intact, with what it holds; None for a run
    with no checkpoint directory at all (a fresh start, said in a warning).

    A damaged newer checkpoint (missing manifest, truncated or corrupted file, refused
    pickle) is skipped with a warning and moved aside to ``checkpoints/damaged-<name>-*``
    (never deleted, and never again mistaken for the newest); when checkpoints exist and
    none is intact, CheckpointError names each and what failed, and nothing changes."""
    cands = dist.broadcast_object(
        [str(p) for p in ckpt.checkpoint_candidates(run_dir)])
    if not cands:
        warnings.warn(f"--resume {run_dir}: the run has no checkpoint yet; training "
                      "starts from step 0", stacklevel=3)
        return None
    failed: list[tuple[Path, str]] = []
    for cand in map(Path, cands):
        try:
            got: tuple | None = (cand, *read_checkpoint(cand, dist))
            reason = ""
        except ckpt.CheckpointError as e:
            got, reason = None, str(e)
        ok = dist.all_min([0 if got is None else 1])[0] == 1
        if ok:
            break
        failed.append((cand, reason or f"{cand}: damaged on another rank"))
    else:
        got = None
    if got is None:
        listing = "; ".join(reason for _, reason in failed)
        raise ckpt.CheckpointError(
            f"{run_dir} has checkpoints but none verifies ({listing}); nothing was "
            "changed: restore a checkpoint or move the run's checkpoints away")
    if failed:
        moved = []
        if dist.is_main:
            for bad, _ in failed:
                dest = bad.parent / f"damaged-{bad.name}-{os.urandom(4).hex()}"
                try:
                    os.replace(bad, dest)
                    moved.append(dest.name)
                except OSError:
                    moved.append(bad.name)
        dist.barrier()
        warnings.warn(
            f"resuming from {got[0].name}: newer checkpoint(s) failed verification "
            f"({'; '.join(r for _, r in failed)}); kept as {', '.join(moved) or 'is'}",
            stacklevel=3)
    return got  # type: ignore[return-value]
