"""Minari datasets in ``--data`` (amago_fast/offline.py): a local dataset written with
``minari.DataCollector`` around a gymnasium CartPole loads row for row (by id and by folder)
and trains an offline-only run; corrupted data is one error naming the file, the episode and
the field, and nothing is loaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

minari = pytest.importorskip("minari")
h5py = pytest.importorskip("h5py")
pytest.importorskip("jax")  # DataCollector's episode buffers (minari[create])

from amago_fast.cli import main  # noqa: E402
from amago_fast.envs import make_env  # noqa: E402
from amago_fast.offline import DatasetError, load_dataset, read_trajectories  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DATASET_ID = "cartpole/scripted-v0"


@pytest.fixture()
def cartpole_dataset(tmp_path, monkeypatch) -> Path:
    """5 CartPole episodes: push toward the pole's lean, a random push 30% of the time."""
    import gymnasium as gym
    from minari import DataCollector

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    env = DataCollector(gym.make("CartPole-v1"), record_infos=False, data_format="hdf5")
    rng = np.random.default_rng(0)
    for ep in range(5):
        obs, _ = env.reset(seed=ep)
        done = False
        while not done:
            a = int(obs[2] > 0) if rng.random() > 0.3 else int(rng.integers(2))
            obs, _, term, trunc, _ = env.step(a)
            done = term or trunc
    with pytest.warns(UserWarning):  # minari: no description / eval_env given
        env.create_dataset(dataset_id=DATASET_ID, algorithm_name="scripted", author="test",
                           author_email="test@example.com", code_permalink="tests")
    env.close()
    return tmp_path / "minari" / "cartpole" / "scripted-v0"


def _spec():
    env = make_env("gym:CartPole-v1", 1)
    spec = env.spec
    env.close()
    return spec


def test_minari_dataset_loads_row_for_row(cartpole_dataset: Path) -> None:
    spec = _spec()
    by_id = read_trajectories(f"minari:{DATASET_ID}", spec)
    by_folder = read_trajectories(str(cartpole_dataset), spec)
    ds = minari.load_dataset(DATASET_ID)
    episodes = list(ds.iterate_episodes())
    assert len(by_id) == len(by_folder) == len(episodes) == 5
    for (rows, offset), (rows2, _), ep in zip(by_id, by_folder, episodes):
        assert offset == 0
        assert all(np.array_equal(rows[k], rows2[k]) for k in rows)
        T = len(ep.actions)
        assert rows["observation"].shape == (T + 1, 4)
        np.testing.assert_array_equal(rows["observation"], ep.observations)
        assert rows["action"][0] == 0 and np.array_equal(rows["action"][1:], ep.actions)
        assert rows["reward"][0] == 0 and np.array_equal(rows["reward"][1:], ep.rewards)
        assert rows["terminated"][-1] == ep.terminations[-1]
        assert not rows["terminated"][0] and not rows["truncated"][0]
    buf = load_dataset(f"minari:{DATASET_ID}", spec)
    assert len(buf) == sum(len(ep.actions) + 1 for ep in episodes)


def test_minari_dataset_trains_offline(cartpole_dataset: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    code = main(["train", "--preset", "gym", "--env.name", "gym:CartPole-v1",
                 "--data", f"minari:{DATASET_ID}", "--data.offline_updates", "12",
                 "--data.online", "false", "--run-dir", str(run), "--eval_episodes", "2",
                 "--agent.d_model", "16", "--agent.num_layers", "1", "--agent.num_heads", "2",
                 "--agent.tstep_hidden", "16", "--agent.tstep_out", "16",
                 "--agent.actor_hidden", "16", "--agent.critic_hidden", "16",
                 "--batch_size", "4", "--window_len", "16", "--agent.context_len", "17",
                 "--progress_bar", "false", "--tensorboard", "false"])
    assert code == 0, capsys.readouterr().err
    from amago_fast.logger import read_csv

    train = read_csv(run / "train.csv")
    assert train["offline_updates"][-1] == 12
    ev = read_csv(run / "eval.csv")
    assert ev["episodes"][-1] == 2  # evaluated in the env after the offline phase


def test_bad_minari_data_names_file_episode_and_field(cartpole_dataset: Path) -> None:
    spec = _spec()
    data = cartpole_dataset / "data" / "main_data.hdf5"
    with h5py.File(data, "r+") as f:
        rewards = f["episode_3"]["rewards"]
        rewards[2] = np.nan
    with pytest.raises(DatasetError) as info:
        load_dataset(f"minari:{DATASET_ID}", spec)
    msg = str(info.value)
    assert f"{data} episode 3" in msg and "field 'reward' contains NaN/inf (row 3)" in msg
    # another env's spec: the converted fields do not fit
    tmaze = make_env("tmaze-passive", 1)
    with pytest.raises(DatasetError, match=r"episode 0: field 'observation' has shape"):
        read_trajectories(str(cartpole_dataset), tmaze.spec)
    tmaze.close()
    # not installed / not found: one line
    with pytest.raises(DatasetError, match="cannot open it as a Minari dataset"):
        read_trajectories("minari:cartpole/none-v0", spec)


def test_minari_missing_is_one_error(monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "minari", None)
    with pytest.raises(DatasetError, match=r"needs minari and h5py: pip install "
                                           r"'amago_fast\[minari\]'"):
        read_trajectories("minari:cartpole/scripted-v0", _spec())
