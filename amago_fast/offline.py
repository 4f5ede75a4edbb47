"""Bring your own data: offline and offline→online RL from a dataset of trajectories.

``amago-fast train --data PATH`` (``--data.path``) reads a dataset into a read-only trajectory
buffer beside the online one. ``--data.offline_updates N`` runs N gradient updates on the
dataset alone before any env step; ``--data.online false`` stops there (offline RL: no env
steps at all; evaluation still runs greedy episodes in the config's env); otherwise online
collection follows and every update draws ``--data.share`` of its windows from the dataset and
the rest from the online buffer (offline→online; 0: online windows only once any exist).

AMAGO's two offline objectives are learner settings: filtered behaviour cloning alone
(``--learner.dpg_coeff 0 --learner.bc_coeff 1``: imitate the dataset's actions where the
critic's advantage is positive) and DPG + filtered BC (the defaults: ``--learner.dpg_coeff 1
--learner.bc_coeff 0.1``). :data:`OFFLINE_OBJECTIVES` holds them as override dicts.

Accepted datasets (PATH):

- a folder of ``.npz`` files, one trajectory each, in the buffer's row layout
  (docs/DESIGN.md, "Data layout: rows"): every observation field of the env, ``action``,
  ``reward``, ``terminated`` and ``truncated`` as arrays of T+1 rows (row 0 is the first
  observation with zero action and reward; row t holds a_{t-1}, r_{t-1} and the done flags on
  arriving at o_t). ``TrajectoryBuffer.export_npz`` writes this format; a single ``.npz`` file
  is accepted too;
- a buffer snapshot (``TrajectoryBuffer.save``: a folder with manifest.json), a checkpoint
  directory (its ranks' buffer snapshots) or a run directory (its newest checkpoint's).

Every trajectory is read and checked before any is used — all fields present with the env's
shapes (dtypes converted only where no value can change kind), at least one transition, finite
observations and rewards, actions inside the env's action space, boolean done flags — and the
first problem is one :class:`DatasetError` naming the file and the field; a rejected dataset
leaves nothing loaded. ``.npz`` files are read with ``allow_pickle=False`` (no code runs).

Minari datasets (``pip install 'amago_fast[minari]'``: minari and h5py): ``--data
minari:<dataset_id>`` (a dataset in ``MINARI_DATASETS_PATH``, never downloaded here) or the path
of a dataset's folder (the one holding ``data/metadata.json``, or that ``data`` folder). Each
episode's observations go through the gymnasium adapter's conversion of the dataset's
observation space (one-hot Discrete entries, Dict / Tuple fields: the fields a ``gym:<id>`` run
of the same env trains on), Discrete actions lose the space's ``start``, and the episode is laid
out in the row layout above; the same checks then apply, errors naming
``<folder>/data/main_data.hdf5 episode <id>`` and the field.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from amago_fast.errors import ConfigError
from amago_fast.spaces import ACTION, TERMINATED, TRUNCATED, EnvSpec

__all__ = ["DataConfig", "DatasetError", "OFFLINE_OBJECTIVES", "load_dataset",
           "read_trajectories", "sample_mixed", "run_offline_phase"]

OFFLINE_OBJECTIVES: dict[str, dict[str, float]] = {
    # AMAGO's offline objectives as learner overrides (amago_fast/learner.py)
    "filtered-bc": {"learner.dpg_coeff": 0.0, "learner.bc_coeff": 1.0},
    "dpg-bc": {"learner.dpg_coeff": 1.0, "learner.bc_coeff": 0.1},
}

_NPZ_META = ("__time_offset__", "__trajectory_id__")  # written by TrajectoryBuffer.export_npz


class DatasetError(ConfigError):
    """A dataset that cannot be used; the message names the file and the field."""


@dataclass
class DataConfig:
    """An offline dataset and how training uses it (see amago_fast/offline.py)."""

    path: str = ""
    """Offline dataset (also `--data PATH`): a folder of .npz trajectories in the buffer's row
    layout, a buffer snapshot, a checkpoint or a run directory. Empty: none."""
    offline_updates: int = 0
    """Gradient updates on the dataset alone before any env step (offline RL)."""
    online: bool = True
    """After the offline updates, collect env steps and keep learning (offline→online); false:
    offline only (no env steps; evaluation still runs in the env)."""
    share: float = 0.5
    """Share of each online-phase batch's windows drawn from the dataset (the rest from the
    online buffer), in [0, 1]."""
    eval_interval: int = 0
    """Evaluate every this many offline updates (0: once, when the offline phase ends)."""
    log_interval: int = 100
    """Write train metrics every this many offline updates."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first invalid field."""
        def bad(name: str, why: str):
            raise ValueError(f"DataConfig.{name}={getattr(self, name)!r}: {why}")

        for name in ("offline_updates", "eval_interval"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                bad(name, "must be a non-negative integer")
        if not isinstance(self.log_interval, int) or self.log_interval < 1:
            bad("log_interval", "must be a positive integer")
        if not 0.0 <= float(self.share) <= 1.0:
            bad("share", "must be in [0, 1]")
        if not self.path and (self.offline_updates or not self.online):
            bad("path", "offline updates / offline-only training need a dataset (--data PATH)")
        if not self.online and self.offline_updates < 1:
            bad("offline_updates", "offline-only training (online=false) needs >= 1 update")

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# ------------------------------------------------------------------------------ reading
def _snapshot_dirs(path: Path) -> list[Path] | None:
    """The buffer snapshot folders `path` names (a snapshot, a checkpoint, a run), or None."""
    if (path / "manifest.json").is_file() and not (path / "learner.pt").is_file():
        return [path]
    if (path / "learner.pt").is_file():  # a checkpoint directory
        return sorted(p for p in path.glob("rank*/buffer") if p.is_dir())
    if (path / "checkpoints").is_dir():
        from amago_fast import checkpoint as ckpt

        latest = ckpt.latest_checkpoint(path)
        if latest is None:
            raise DatasetError(f"data.path: {path} is a run directory without a complete "
                               "checkpoint")
        return sorted(p for p in latest.glob("rank*/buffer") if p.is_dir())
    return None


def _npz_files(path: Path, scratch: Path) -> list[tuple[Path, str]]:
    """(file to read, how errors name it) for every trajectory of the dataset."""
    if path.is_file():
        if path.suffix != ".npz":
            raise DatasetError(f"data.path: {path} is not a .npz file or a dataset folder")
        return [(path, str(path))]
    snaps = _snapshot_dirs(path)
    if snaps is not None:
        if not snaps:
            raise DatasetError(f"data.path: {path} holds no buffer snapshot")
        return _export_snapshots(snaps, scratch)
    files = sorted(path.glob("*.npz"))
    if not files:
        raise DatasetError(f"data.path: {path} has no .npz trajectories (nor a buffer snapshot)")
    return [(f, str(f)) for f in files]


def _export_snapshots(snaps: list[Path], scratch: Path) -> list[tuple[Path, str]]:
    """The committed trajectories of buffer snapshots as .npz files under `scratch` (one
    checking path for every source; the snapshot loader verifies each array's sha256 first)."""
    from amago_fast.buffer import SnapshotError, TrajectoryBuffer

    out: list[tuple[Path, str]] = []
    for i, snap in enumerate(snaps):
        try:
            buf = TrajectoryBuffer.load(snap)
        except SnapshotError as e:
            raise DatasetError(f"data.path: {snap}: {e}") from None
        out += [(f, f"{snap} ({f.stem})") for f in buf.export_npz(scratch / f"snap{i}")]
    return out


def _check_array(name: str, arr: np.ndarray, f: Any, where: str) -> np.ndarray:
    if arr.dtype.kind not in "biuf":
        raise DatasetError(f"{where}: field {name!r} has dtype {arr.dtype} (numbers expected)")
    if arr.dtype != f.dtype:
        if not np.can_cast(arr.dtype, f.dtype, "same_kind") and not (
                f.dtype.kind in "iu" and arr.dtype.kind in "iub"):
            raise DatasetError(f"{where}: field {name!r} has dtype {arr.dtype}, the env stores "
                               f"{f.dtype}")
        if f.dtype.kind in "iu" and arr.size:
            info = np.iinfo(f.dtype)
            if arr.min() < info.min or arr.max() > info.max:
                raise DatasetError(f"{where}: field {name!r} has values outside {f.dtype}")
        arr = arr.astype(f.dtype)
    if arr.ndim != 1 + len(f.shape) or arr.shape[1:] != tuple(f.shape):
        raise DatasetError(f"{where}: field {name!r} has shape {arr.shape}, expected "
                           f"(T+1, {', '.join(map(str, f.shape))})".replace(", )", ")"))
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise DatasetError(f"{where}: field {name!r} contains NaN/inf (row {row})")
    return np.ascontiguousarray(arr)


def _check_actions(arr: np.ndarray, spec: EnvSpec, where: str) -> None:
    a = spec.action
    if a.kind == "discrete":
        bad = (arr < 0) | (arr >= a.n)
        space = f"[0, {a.n})"
    elif a.kind == "multidiscrete":
        bad = ((arr < 0) | (arr >= np.asarray(a.nvec))).any(axis=1)
        space = f"[0, {list(a.nvec)})"
    else:
        low, high = np.asarray(a.low), np.asarray(a.high)
        tol = 1e-6 * np.maximum(1.0, np.maximum(np.abs(low), np.abs(high)))
        bad = ((arr < low - tol) | (arr > high + tol)).any(axis=1)
        space = f"[{list(a.low)}, {list(a.high)}]"
    if np.any(bad):
        row = int(np.nonzero(bad)[0][0])
        raise DatasetError(f"{where}: field 'action' row {row} = {arr[row].tolist()} is "
                           f"outside the action space {space}")


def read_trajectories(path: str | Path, spec: EnvSpec) -> list[tuple[dict, int]]:
    """Every trajectory of the dataset at `path` as (rows, time offset), checked against the
    env's `spec` (see the module docstring); DatasetError naming the file and field."""
    minari_source = _minari_source(str(path))
    if minari_source is not None:
        return [_checked(data, spec, f"data.path: {label}")
                for data, label in _minari_episodes(minari_source, spec)]
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"data.path: {path} does not exist")
    with tempfile.TemporaryDirectory(prefix="amago_data_") as scratch:
        return _read_all(path, spec, Path(scratch))


MINARI_PREFIX = "minari:"


def _minari_source(text: str) -> Path | str | None:
    """The Minari dataset `text` names (a dataset id after ``minari:``, or the path of a
    dataset folder / its ``data`` folder), or None when it names none."""
    if text.startswith(MINARI_PREFIX):
        return text[len(MINARI_PREFIX):]
    path = Path(text)
    for data_dir in (path / "data", path):
        if (data_dir / "metadata.json").is_file() and (data_dir / "main_data.hdf5").is_file():
            return data_dir
    return None


def _minari_episodes(source: Path | str, spec: EnvSpec):
    """(data dict in the row layout, label) per episode of a Minari dataset."""
    try:
        import minari
    except ImportError:
        raise DatasetError(f"data.path: {source} is a Minari dataset; reading it needs minari "
                           "and h5py: pip install 'amago_fast[minari]'") from None
    from amago_fast.envs.gym_adapter import action_start, observation_fields
    from amago_fast.spaces import REWARD

    try:
        if isinstance(source, Path):
            dataset = minari.MinariDataset(source)
            where = source / "main_data.hdf5"
        else:
            dataset = minari.load_dataset(source, download=False)
            where = Path(dataset.spec.data_path) / "main_data.hdf5"
    except Exception as e:  # minari raises ValueError, FileNotFoundError, KeyError, ...
        raise DatasetError(f"data.path: {source}: cannot open it as a Minari dataset "
                           f"({type(e).__name__}: {e})") from None
    try:
        _, convert = observation_fields(dataset.observation_space, spec.name)
    except (ValueError, TypeError) as e:
        raise DatasetError(f"data.path: {where}: field 'observations': {e}") from None
    start = action_start(dataset.action_space)
    for ep in dataset.iterate_episodes():
        label = f"{where} episode {ep.id}"
        try:
            rows = dict(convert(ep.observations))
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise DatasetError(f"data.path: {label}: field 'observations' does not fit the "
                               f"dataset's observation space ({e})") from None
        actions = np.asarray(ep.actions)
        if start is not None and actions.dtype.kind in "iu":
            actions = actions - start
        first = np.zeros((1, *actions.shape[1:]), actions.dtype)
        rows[ACTION] = np.concatenate([first, actions])
        rows[REWARD] = np.concatenate([[0.0], np.asarray(ep.rewards, np.float64)])
        rows[TERMINATED] = np.concatenate([[False], np.asarray(ep.terminations)])
        rows[TRUNCATED] = np.concatenate([[False], np.asarray(ep.truncations)])
        yield rows, label


def _read_all(path: Path, spec: EnvSpec, scratch: Path) -> list[tuple[dict, int]]:
    out = []
    for file, label in _npz_files(path, scratch):
        where = f"data.path: {label}"
        try:
            with np.load(file, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError) as e:
            raise DatasetError(f"{where}: cannot read it as .npz ({e})") from None
        out.append(_checked(data, spec, where))
    return out


def _checked(data: dict[str, np.ndarray], spec: EnvSpec, where: str) -> tuple[dict, int]:
    """One trajectory's arrays checked against the env's row schema → (rows, time offset)."""
    schema = {f.name: f for f in spec.buffer_fields()}
    offset = int(data.pop(_NPZ_META[0], 0))
    data.pop(_NPZ_META[1], None)
    missing = [k for k in schema if k not in data]
    if missing:
        raise DatasetError(f"{where}: missing field {missing[0]!r} (the env's rows have "
                           f"{list(schema)})")
    extra = sorted(set(data) - set(schema))
    if extra:
        raise DatasetError(f"{where}: field {extra[0]!r} is not one of the env's "
                           f"{list(schema)}")
    rows = {k: _check_array(k, np.asarray(data[k]), f, where) for k, f in schema.items()}
    lengths = {k: v.shape[0] for k, v in rows.items()}
    n = lengths[ACTION]
    odd = [k for k, m in lengths.items() if m != n]
    if odd:
        raise DatasetError(f"{where}: field {odd[0]!r} has {lengths[odd[0]]} rows, "
                           f"'action' has {n}")
    if n < 2:
        raise DatasetError(f"{where}: field 'action' has {n} rows; a trajectory needs at "
                           "least 2 (one transition)")
    for k in (TERMINATED, TRUNCATED):
        if rows[k].dtype != np.bool_:
            raise DatasetError(f"{where}: field {k!r} must be booleans")
    _check_actions(rows[ACTION], spec, where)
    if offset < 0:
        raise DatasetError(f"{where}: field '__time_offset__' is negative")
    return rows, offset


def load_dataset(path: str | Path, spec: EnvSpec, seed: int = 0, max_trajectory_len=None):
    """A TrajectoryBuffer holding the whole dataset (every trajectory checked first: a
    rejected dataset leaves nothing loaded); DatasetError naming the file and field."""
    from amago_fast.buffer import TrajectoryBuffer

    trajs = read_trajectories(path, spec)
    rows_total = sum(r[ACTION].shape[0] for r, _ in trajs)
    buf = TrajectoryBuffer.from_env_spec(spec, capacity_steps=rows_total, num_envs=1,
                                         max_trajectory_len=max_trajectory_len, seed=seed)
    for rows, offset in trajs:
        buf.add_trajectory(rows, time_offset=offset)
    return buf


# ------------------------------------------------------------------------------ training
def sample_mixed(online: Any, offline: Any, batch_size: int, length: int, share: float,
                 relabel: Any = None) -> dict[str, np.ndarray]:
    """`batch_size` windows: round(share · batch_size) from `offline`, the rest from `online`
    (all from `offline` while `online` holds no rows), concatenated along the batch."""
    n_off = batch_size if len(online) == 0 else int(round(share * batch_size))
    if n_off == 0:
        return online.sample_windows(batch_size, length, relabel=relabel)
    if n_off == batch_size:
        return offline.sample_windows(batch_size, length, relabel=relabel)
    a = offline.sample_windows(n_off, length, relabel=relabel)
    b = online.sample_windows(batch_size - n_off, length, relabel=relabel)
    return {k: np.concatenate([a[k], b[k]]) for k in a}


def run_offline_phase(trainer: Any) -> bool:
    """The offline updates of ``trainer.cfg.data`` on ``trainer.dataset`` (continuing from
    ``trainer.offline_updates`` after a resume): train metrics every ``data.log_interval``
    updates, evaluation every ``data.eval_interval`` and when the phase ends. Returns True when
    a stop signal ended it early (the caller checkpoints)."""
    cfg, data = trainer.cfg, trainer.cfg.data
    pending: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    offset = trainer.train_seconds
    ran = 0
    while trainer.offline_updates < data.offline_updates:
        if trainer.stop_requested:
            return True
        batch = trainer.dataset.sample_windows(cfg.batch_size, cfg.window_len,
                                               relabel=trainer.relabel)
        metrics = trainer.learner.update(batch)  # Learner.update converts it
        trainer.updates += 1
        trainer.offline_updates += 1
        ran += 1
        if metrics.get("skipped_nonfinite"):
            trainer.skipped_updates += 1
        for k, v in metrics.items():
            pending.setdefault(k, []).append(float(v))
        trainer.train_seconds = offset + (time.perf_counter() - t0)
        done = trainer.offline_updates >= data.offline_updates
        if trainer.offline_updates % data.log_interval == 0 or done:
            row = {k: float(np.mean(v)) for k, v in pending.items()}
            row |= {"updates": trainer.updates, "offline_updates": trainer.offline_updates,
                    "updates_per_s": ran / max(time.perf_counter() - t0, 1e-9)}
            trainer.logger.log("train", row, trainer.env_steps, trainer.train_seconds)
            pending.clear()
        if done or (data.eval_interval and trainer.offline_updates % data.eval_interval == 0):
            stats = trainer.evaluate()
            trainer.last_eval = stats
            trainer.last_eval_step = trainer.env_steps
            trainer.logger.log("eval", {**stats, "offline_updates": trainer.offline_updates},
                               trainer.env_steps, trainer.train_seconds)
        if trainer.skipped_updates > cfg.max_skipped_updates:
            from amago_fast.errors import TrainingError

            raise TrainingError(f"{trainer.skipped_updates} offline updates were skipped for "
                                f"NaN/inf losses (max_skipped_updates="
                                f"{cfg.max_skipped_updates})")
    return False

