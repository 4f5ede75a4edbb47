"""``amago-fast eval RUN --video DIR``: real MP4s of a trained gymnasium run's greedy episodes,
read back (frame count = the episode's steps + 1, frame shape), envs that cannot render named in
one line, existing videos never replaced, nothing written outside DIR."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from amago_fast.cli import main
from amago_fast.trainer import Trainer
from tests._tiny_run import tiny_tmaze_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")
iio = pytest.importorskip("imageio.v2")
pytest.importorskip("imageio_ffmpeg")


def _train(tmp_path: Path, name: str, **overrides) -> Path:
    cfg = tiny_tmaze_config(log_dir=str(tmp_path), run_name=name, eval_interval=0,
                            checkpoint_interval=0, **overrides)
    Trainer(cfg, tmp_path / name).train()
    return tmp_path / name


@pytest.fixture(scope="module")
def cartpole_run(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("video"), "cartpole",
                  **{"env.name": "gym:CartPole-v1", "env.kwargs": {}})


def _step(run: Path) -> int:
    from amago_fast.deploy import resolve_checkpoint

    return int(resolve_checkpoint(run).name.split("-")[1])


def _episode_lengths(run: Path, episodes: int) -> list[int]:
    """Greedy CartPole episode lengths of the run's policy with the video's seed, from a plain
    gymnasium loop (the independent count the videos must match)."""
    import gymnasium as gym

    from amago_fast.deploy import load_agent

    policy = load_agent(run, observation_space=gym.make("CartPole-v1").observation_space)
    env = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")],
                                   autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
    obs, _ = env.reset(seed=12345)
    policy.reset(1)
    lengths, n, reward, done = [], 0, None, None
    while len(lengths) < episodes:
        a = policy.act(obs, reward, done)
        obs, reward, term, trunc, _ = env.step(a)
        done = term | trunc
        if n == -1:  # the autoreset step: the new episode's first observation
            n = 0
            continue
        n += 1
        if done[0]:
            lengths.append(n)
            n = -1
    env.close()
    return lengths


def test_eval_video_writes_readable_mp4s(cartpole_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "videos"
    assert main(["eval", str(cartpole_run), "--episodes", "2", "--video", str(out),
                 "--video-episodes", "2"]) == 0
    paths = sorted(out.glob("*.mp4"))
    step = _step(cartpole_run)
    assert [p.name for p in paths] == [
        f"gym-CartPole-v1-{step:012d}-ep000.mp4", f"gym-CartPole-v1-{step:012d}-ep001.mp4"]
    assert sorted(os.listdir(out)) == [p.name for p in paths]  # no temporaries left
    printed = capsys.readouterr().out
    assert all(str(p) in printed for p in paths)
    lengths = _episode_lengths(cartpole_run, 2)
    for path, steps in zip(paths, lengths):
        reader = iio.get_reader(path, format="FFMPEG")
        frames = [np.asarray(f) for f in reader]
        reader.close()
        # the reset frame plus one per step; CartPole renders 600x400
        assert len(frames) == steps + 1
        assert frames[0].shape == (400, 600, 3) and frames[0].dtype == np.uint8
        assert frames[0].std() > 0  # not a blank frame


def test_eval_video_never_replaces_and_stays_in_dir(cartpole_run: Path, tmp_path: Path,
                                                    capsys) -> None:
    out = tmp_path / "videos"
    out.mkdir()
    existing = out / f"gym-CartPole-v1-{_step(cartpole_run):012d}-ep001.mp4"
    existing.write_bytes(b"user's file")
    assert main(["eval", str(cartpole_run), "--episodes", "1", "--video", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ep001.mp4 exists" in err[0] and "never replaced" in err[0]
    assert existing.read_bytes() == b"user's file"
    assert sorted(os.listdir(out)) == [existing.name]  # nothing written, not even ep000
    # a dangling link under a video's name counts as taken (writing would follow it out of DIR)
    outside = tmp_path / "outside.mp4"
    existing.unlink()
    existing.symlink_to(outside)
    assert main(["eval", str(cartpole_run), "--episodes", "1", "--video", str(out)]) == 2
    assert not outside.exists()
    # DIR a regular file: one line
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["eval", str(cartpole_run), "--episodes", "1", "--video", str(afile)]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_eval_video_env_that_cannot_render(tmp_path: Path, capsys) -> None:
    run = _train(tmp_path, "tmaze")
    capsys.readouterr()
    out = tmp_path / "videos"
    assert main(["eval", str(run), "--episodes", "1", "--video", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'tmaze-passive' cannot render" in err[0]
    assert not out.exists()


def test_eval_video_of_a_mixture_task(tmp_path: Path) -> None:
    """A mixture run records one task's slot: the first task by default, the one
    ``--env-kwargs '{"only": label}'`` names otherwise (Acrobot renders 500x500)."""
    from amago_fast.video import record_videos

    run = _train(tmp_path, "mix", **{"env.kwargs": {}, "env.num_envs": 2,
                                     "env.mixture": ["gym:CartPole-v1", "gym:Acrobot-v1"]})
    first = record_videos(run, tmp_path / "v", episodes=1)
    other = record_videos(run, tmp_path / "v", episodes=1, env_kwargs={"only": "gym-Acrobot-v1"})
    assert first[0].name.startswith("gym-CartPole-v1-") and other[0].name.startswith(
        "gym-Acrobot-v1-")
    reader = iio.get_reader(other[0], format="FFMPEG")
    frame = np.asarray(reader.get_data(0))
    reader.close()
    assert frame.shape == (500, 500, 3)
