"""Bring your own data (amago_fast/offline.py): npz folders, buffer snapshots and run
directories load; bad data is one error naming the file and field with nothing loaded;
offline-only runs take no env step; offline→online mixes the dataset's share of windows; the
offline phase resumes; and a T-Maze dataset from a noisy scripted player trains an
offline-only agent (slow)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from amago_fast.buffer import TrajectoryBuffer
from amago_fast.collector import Collector
from amago_fast.config import ConfigError
from amago_fast.envs import make_env
from amago_fast.offline import DatasetError, load_dataset, read_trajectories, sample_mixed
from amago_fast.trainer import Trainer
from tests._tiny_run import tiny_tmaze_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class NoisyTMazePlayer:
    """Walks right and turns toward the cue seen at t = 0; a uniformly random action instead
    with probability `eps` at the junction and `step_eps` elsewhere."""

    def __init__(self, eps: float, seed: int = 0, step_eps: float = 0.0) -> None:
        self.eps, self.step_eps, self.rng = eps, step_eps, np.random.default_rng(seed)

    def init_state(self, n):
        return np.zeros(n, np.float32)

    def reset_state(self, cue, ids):
        cue[ids] = 0.0
        return cue

    def act(self, rows, cue, sample, env_ids=None):
        obs = rows["observation"]
        cue = np.where(rows["time_index"] == 0, obs[:, 1], cue)
        junction = obs[:, 0] == 1
        act = np.where(junction, np.where(cue > 0, 1, 3), 0)
        noisy = self.rng.random(len(cue)) < np.where(junction, self.eps, self.step_eps)
        act = np.where(noisy, self.rng.integers(0, 4, len(cue)), act)
        return act.astype(np.int32), cue


def write_tmaze_dataset(directory: Path, steps: int, corridor: int = 3, eps: float = 0.5,
                        step_eps: float = 0.0, seed: int = 1,
                        num_envs: int = 4) -> TrajectoryBuffer:
    env = make_env("tmaze-passive", num_envs, seed=seed, corridor_length=corridor)
    buf = TrajectoryBuffer.from_env_spec(env.spec, steps * 2, num_envs)
    Collector(env, NoisyTMazePlayer(eps, seed, step_eps), buf).collect(steps)
    buf.export_npz(directory)
    return buf


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("data") / "npz"
    buf = write_tmaze_dataset(d, 120)
    return d, buf


def _spec():
    return make_env("tmaze-passive", 1, corridor_length=3).spec


def test_npz_folders_snapshots_and_runs_load_the_same_trajectories(dataset, tmp_path):
    d, buf = dataset
    loaded = load_dataset(d, _spec())
    assert loaded.num_trajectories == buf.num_trajectories > 10
    assert len(loaded) == len(buf)
    buf.save(tmp_path / "snap")
    assert load_dataset(tmp_path / "snap", _spec()).num_trajectories == buf.num_trajectories
    one = sorted(d.glob("*.npz"))[0]
    assert load_dataset(one, _spec()).num_trajectories == 1
    # A run directory: its newest checkpoint's buffer.
    t = Trainer(tiny_tmaze_config(checkpoint_interval=0, eval_interval=0), tmp_path / "run")
    t.train()
    from_run = load_dataset(tmp_path / "run", _spec())
    assert from_run.num_trajectories == t.buffer.num_trajectories
    assert len(from_run) == len(t.buffer)


def _bad_copy(src: Path, dst: Path, edit) -> Path:
    shutil.copytree(src, dst)
    target = sorted(dst.glob("*.npz"))[3]
    with np.load(target) as z:
        data = {k: z[k] for k in z.files}
    edit(data)
    target.unlink()
    np.savez(target, **data)
    return target


def _set(key, value):
    return lambda d: d.__setitem__(key, value(d))


BAD = [
    ("missing", lambda d: d.pop("reward"), "missing field 'reward'"),
    ("extra", _set("bonus", lambda d: d["reward"]), "field 'bonus' is not one of"),
    ("shape", _set("observation", lambda d: d["observation"][:, :1]),
     "field 'observation' has shape"),
    ("rows", _set("reward", lambda d: d["reward"][:-1]), "field 'reward' has"),
    ("nan", _set("observation", lambda d: np.where(np.arange(len(d["observation"]))[:, None]
                                                   == 2, np.nan, d["observation"])
                 .astype(np.float32)), "field 'observation' contains NaN/inf (row 2)"),
    ("nan-reward", _set("reward", lambda d: np.full_like(d["reward"], np.inf)),
     "field 'reward' contains NaN/inf"),
    ("action", _set("action", lambda d: np.full_like(d["action"], 7)),
     "field 'action' row 0 = 7 is outside the action space [0, 4)"),
    ("negative", _set("action", lambda d: np.full_like(d["action"], -1)),
     "outside the action space"),
    ("float-action", _set("action", lambda d: d["action"] + 0.5), "field 'action' has dtype"),
    ("done-ints", _set("terminated", lambda d: d["terminated"].astype(np.float32)),
     "field 'terminated' has dtype"),
    ("short", lambda d: d.update({k: v[:1] for k, v in d.items() if np.ndim(v)}),
     "at least 2"),
    ("objects", _set("reward", lambda d: np.array([object()] * len(d["reward"]))),
     "cannot read it"),
]


@pytest.mark.parametrize("name, edit, message", BAD, ids=[b[0] for b in BAD])
def test_bad_data_is_one_error_naming_file_and_field(dataset, tmp_path, name, edit, message):
    d, _ = dataset
    bad = _bad_copy(d, tmp_path / "bad", edit)
    with pytest.raises(DatasetError) as e:
        read_trajectories(tmp_path / "bad", _spec())
    assert message in str(e.value) and str(bad) in str(e.value)
    assert len(str(e.value).splitlines()) == 1


def test_a_rejected_dataset_starts_nothing(dataset, tmp_path):
    d, _ = dataset
    _bad_copy(d, tmp_path / "bad", _set("action", lambda d: np.full_like(d["action"], 9)))
    cfg = tiny_tmaze_config(**{"data.path": str(tmp_path / "bad")})
    t = Trainer(cfg, tmp_path / "run")
    with pytest.raises(ConfigError, match="data.path: .*outside the action space"):
        t.train()
    assert not (tmp_path / "run" / "config.json").exists()
    with pytest.raises(ConfigError, match="does not exist"):
        Trainer(tiny_tmaze_config(**{"data.path": str(tmp_path / "nope")}), tmp_path / "r2").train()
    with pytest.raises(ConfigError, match="data.path"):  # offline-only without a dataset
        Trainer(tiny_tmaze_config(**{"data.online": False, "data.offline_updates": 3}),
                tmp_path / "r3")


def test_offline_only_takes_no_env_step_and_resumes_its_phase(dataset, tmp_path):
    d, _ = dataset
    cfg = tiny_tmaze_config(**{"data.path": str(d), "data.online": False,
                               "data.offline_updates": 12, "data.log_interval": 5,
                               "data.eval_interval": 6, "checkpoint_interval": 0})
    t = Trainer(cfg, tmp_path / "run")
    result = t.train()
    assert result["env_steps"] == 0 and result["updates"] == 12
    assert t.collector.total_env_steps == 0 and len(t.buffer) == 0
    assert "success" in result["eval"]
    evals = (tmp_path / "run" / "eval.csv").read_text().splitlines()
    assert len(evals) == 3  # header + after 6 and 12 updates
    t2 = Trainer.resume(tmp_path / "run", {"data.offline_updates": 20})
    assert t2.train()["updates"] == 20 and t2.env_steps == 0


def test_offline_then_online_keeps_the_update_ratio(dataset, tmp_path):
    d, _ = dataset
    cfg = tiny_tmaze_config(**{"data.path": str(d), "data.offline_updates": 10,
                               "data.share": 0.5, "learning_starts": 0,
                               "updates_per_env_step": 0.25, "checkpoint_interval": 0})
    t = Trainer(cfg, tmp_path / "run")
    result = t.train()
    assert t.offline_updates == 10
    assert result["updates"] == 10 + int(t.env_steps * 0.25) and t.env_steps >= 96


def test_sample_mixed_draws_the_datasets_share(dataset):
    d, _ = dataset
    spec = _spec()
    offline = load_dataset(d, spec)
    online = TrajectoryBuffer.from_env_spec(spec, 1000, 1)
    n = 12
    rows = {"observation": np.full((n, 2), 5.0, np.float32), "action": np.zeros(n, np.int32),
            "reward": np.zeros(n, np.float32), "terminated": np.zeros(n, bool),
            "truncated": np.zeros(n, bool)}
    online.add_trajectory(rows)
    for share, expect in ((0.25, 2), (0.5, 4), (0.0, 0), (1.0, 8)):
        batch = sample_mixed(online, offline, 8, 4, share)
        from_online = (batch["observation"][:, 0, 0] == 5.0).sum()
        assert 8 - from_online == expect
    empty = TrajectoryBuffer.from_env_spec(spec, 1000, 1)
    batch = sample_mixed(empty, offline, 8, 4, 0.0)  # no online rows yet: all from the dataset
    assert (batch["observation"][:, 0, 0] != 5.0).all()


@pytest.mark.parametrize("objective", ["dpg-bc", pytest.param("filtered-bc",
                                                                marks=pytest.mark.slow)])
def test_offline_only_agent_solves_tmaze_from_a_noisy_players_data(tmp_path, objective):
    """4 000 steps of a player that errs at random (10% of corridor steps, 50% at the junction:
    success 0.37 in the data), then 2 000 offline updates and no env step. Measured on the
    2-core box: greedy success 1.0 from 1 000 updates on (dpg-bc) / 1 500 (filtered-bc);
    11.2 s / 9.4 s quiet (100-260 s at load ~12-17), so filtered-bc is marked slow."""
    from amago_fast.offline import OFFLINE_OBJECTIVES
    from tests._api_run import solved_tmaze_config

    buf = write_tmaze_dataset(tmp_path / "data", 4000, corridor=5, eps=0.5, step_eps=0.1,
                              seed=5, num_envs=8)
    assert buf.num_trajectories > 600
    cfg = solved_tmaze_config(tmp_path, **{"data.path": str(tmp_path / "data"),
                                           "data.online": False,
                                           "data.offline_updates": 2000,
                                           "data.eval_interval": 500,
                                           **OFFLINE_OBJECTIVES[objective]})
    t = Trainer(cfg, tmp_path / "run")
    result = t.train()
    assert result["env_steps"] == 0 and t.collector.total_env_steps == 0
    assert result["eval"]["success"] == 1.0, result["eval"]
