"""TrajectoryBuffer behaviour, run against both engines (NumPy reference and native core)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from amago_fast.buffer import RelabelConfig, SnapshotError
from amago_fast.buffer.synthetic import GoalRollouts, drive, goal_env_spec, plain_env_spec
from amago_fast.spaces import ActionSpec, FieldSpec
from tests._buffers import ENGINES, NUMPY


def counting_spec():
    """obs = (trajectory uid, step) so every row says where it came from."""
    return plain_env_spec(obs_dim=2, action=ActionSpec("discrete", n=5))


def count_row(uid, t, n=1, done=False, trunc=False):
    return {
        "obs": np.array([[uid, t]] * n, np.float32),
        "action": np.full(n, t % 5, np.int32),
        "reward": np.full(n, float(t), np.float32),
        "terminated": np.full(n, done),
        "truncated": np.full(n, trunc),
    }


def reset_row(uid, n=1):
    return {"obs": np.array([[uid, 0]] * n, np.float32)}


def snapshot(buf):
    """Everything observable about a buffer's state (to check rejected calls change nothing)."""
    st = buf.storage.get_state()
    return (
        {k: v.copy() for k, v in buf.storage.ring.items()},
        {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in st.items()
         if k != "open_rows"},
        {k: v.copy() for k, v in st["open_rows"].items()},
        len(buf), buf.num_trajectories, buf.total_steps_added, buf.sample_counter,
    )


def assert_same_snapshot(a, b):
    for x, y in zip(a, b):
        if isinstance(x, dict):
            assert x.keys() == y.keys()
            for k in x:
                np.testing.assert_array_equal(x[k], y[k], err_msg=k)
        else:
            assert x == y


@pytest.mark.parametrize("cls", ENGINES)
def test_rows_layout_and_window(cls):
    buf = cls.from_env_spec(counting_spec(), capacity_steps=64, num_envs=1, seed=3)
    buf.reset_envs(reset_row(7))
    for t in range(1, 6):
        buf.append_step(count_row(7, t, done=t == 5))
    assert len(buf) == 6 and buf.num_trajectories == 1 and buf.total_steps_added == 5
    out = buf.sample_windows(4, 8)
    for b in range(4):
        s = out["start"][b]
        assert out["trajectory_id"][b] == 0
        valid = 6 - s
        assert out["mask"][b].tolist() == [True] * valid + [False] * (9 - valid)
        np.testing.assert_array_equal(out["time_index"][b, :valid], np.arange(s, 6))
        np.testing.assert_array_equal(out["obs"][b, :valid, 1], np.arange(s, 6))
        # padded rows are zero-filled, never a magic value
        assert not out["obs"][b, valid:].any() and not out["time_index"][b, valid:].any()
        # row 0 of the rollout: zero action/reward, flags False
        if s == 0:
            assert out["action"][b, 0] == 0 and out["reward"][b, 0] == 0
        assert out["terminated"][b, valid - 1] and not out["terminated"][b, : valid - 1].any()


@pytest.mark.parametrize("cls", ENGINES)
def test_max_length_cut_keeps_boundary_row(cls):
    buf = cls.from_env_spec(counting_spec(), capacity_steps=64, num_envs=1, max_trajectory_len=4)
    buf.reset_envs(reset_row(1))
    for t in range(1, 11):
        buf.append_step(count_row(1, t, done=t == 10))
    pieces = buf.storage.pieces()
    # 10 transitions cut at 4: pieces of rows 0-4, 4-8, 8-10 (boundary rows on both sides)
    assert pieces[:, 2].tolist() == [5, 5, 3]
    assert pieces[:, 3].tolist() == [0, 4, 8]
    out = buf.sample_windows(32, 3, mode="trajectories")
    for b in range(32):
        v = out["mask"][b]
        np.testing.assert_array_equal(out["obs"][b, v, 1], out["time_index"][b, v])
    assert buf.total_steps_added == 10 and len(buf) == 13


@pytest.mark.parametrize("cls", ENGINES)
def test_eviction_is_oldest_first_whole_trajectories(cls):
    buf = cls.from_env_spec(counting_spec(), capacity_steps=12, num_envs=1)
    for uid in range(5):
        buf.reset_envs(reset_row(uid))
        for t in range(1, 4):
            buf.append_step(count_row(uid, t, done=t == 3))
    # 4 rows each, capacity 12: the last three survive
    assert buf.num_trajectories == 3 and len(buf) == 12
    assert buf.storage.pieces()[:, 0].tolist() == [2, 3, 4]
    out = buf.sample_windows(64, 3)
    assert set(out["obs"][:, 0, 0].tolist()) <= {2.0, 3.0, 4.0}
    assert set(out["trajectory_id"].tolist()) <= {2, 3, 4}


@pytest.mark.parametrize("cls", ENGINES)
def test_multi_env_streaming_and_out_arrays(cls):
    spec = plain_env_spec(obs_dim=3, image=(4, 4, 3))
    buf = cls.from_env_spec(spec, capacity_steps=300, num_envs=4, seed=1)
    drive([buf], GoalRollouts(spec, 4, seed=0, p_truncate=0.2), 80)
    out = buf.allocate_batch(6, 5)
    ids = {k: id(v) for k, v in out.items()}
    res = buf.sample_windows(6, 5, out=out)
    assert res is out and {k: id(v) for k, v in res.items()} == ids
    assert out["image"].shape == (6, 6, 4, 4, 3) and out["image"].dtype == np.uint8
    again = cls.from_env_spec(spec, capacity_steps=300, num_envs=4, seed=1)
    drive([again], GoalRollouts(spec, 4, seed=0, p_truncate=0.2), 80)
    ref = again.sample_windows(6, 5)
    for k in ref:
        np.testing.assert_array_equal(ref[k], out[k], err_msg=k)


@pytest.mark.parametrize("cls", ENGINES)
def test_reset_commits_open_trajectory_and_append_needs_reset(cls):
    buf = cls.from_env_spec(counting_spec(), capacity_steps=32, num_envs=2)
    with pytest.raises(ValueError, match="no open trajectory"):
        buf.append_step(count_row(0, 1, n=2))
    buf.reset_envs(reset_row(0, n=2))
    buf.append_step(count_row(0, 1, n=2))
    buf.reset_envs(reset_row(1), np.array([1]))  # env 1's 1-transition piece is committed
    assert buf.num_trajectories == 1
    buf.reset_envs(reset_row(2), np.array([1]))  # a lone row 0 is dropped
    assert buf.num_trajectories == 1


@pytest.mark.parametrize("cls", ENGINES)
def test_sampling_modes_distribution(cls):
    buf = cls.from_env_spec(counting_spec(), capacity_steps=200, num_envs=1, seed=5)
    for uid, T in ((0, 2), (1, 40)):
        buf.reset_envs(reset_row(uid))
        for t in range(1, T + 1):
            buf.append_step(count_row(uid, t, done=t == T))
    ts = np.concatenate([buf.sample_windows(50, 4)["trajectory_id"] for _ in range(8)])
    tr = np.concatenate([buf.sample_windows(50, 4, mode="trajectories")["trajectory_id"]
                         for _ in range(8)])
    # timesteps: P(short) = 2/42; trajectories: 1/2
    assert (ts == 0).mean() < 0.15
    assert 0.35 < (tr == 0).mean() < 0.65
    # starts stay in [0, max(T - L, 0)]: full windows whenever the piece is long enough
    out = buf.sample_windows(100, 4)
    long = out["trajectory_id"] == 1
    assert out["mask"][long].all() and (out["start"][long] <= 36).all()


@pytest.mark.parametrize("cls", ENGINES)
def test_same_seed_same_windows_and_counter(cls):
    spec = plain_env_spec(obs_dim=2)
    a = cls.from_env_spec(spec, capacity_steps=100, num_envs=2, seed=11)
    b = cls.from_env_spec(spec, capacity_steps=100, num_envs=2, seed=11)
    drive([a, b], GoalRollouts(spec, 2, seed=2, p_truncate=0.1), 60)
    for _ in range(3):
        x, y = a.sample_windows(5, 7), b.sample_windows(5, 7)
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])
    assert a.sample_counter == 3
    c = cls.from_env_spec(spec, capacity_steps=100, num_envs=2, seed=12)
    drive([c], GoalRollouts(spec, 2, seed=2, p_truncate=0.1), 60)
    assert not np.array_equal(c.sample_windows(5, 7)["obs"], a.sample_windows(5, 7)["obs"])


# ---------------------------------------------------------------- goals and relabeling


@pytest.mark.parametrize("cls", ENGINES)
@pytest.mark.parametrize("match", ["exact", "tolerance"])
def test_relabel_none_reproduces_stored_goal_rows(cls, match):
    spec = goal_env_spec(k=3, match=match, eps=0.1)
    buf = cls.from_env_spec(spec, capacity_steps=400, num_envs=3, max_trajectory_len=12, seed=4)
    drive([buf], GoalRollouts(spec, 3, seed=1, p_truncate=0.03, values=2), 150)
    stored = buf.sample_windows(32, 10)
    buf._sample_counter -= 1  # same draws again
    replayed = buf.sample_windows(32, 10, relabel=RelabelConfig("none"))
    assert stored["reward"].any() and stored["terminated"].any()
    for k in stored:
        np.testing.assert_array_equal(stored[k], replayed[k], err_msg=k)


def _check_relabeled_window(out, b, goals):
    """Rewards/active/completed/terminated along the valid rows follow the rule for `goal`."""
    m = out["mask"][b]
    v = int(m.sum())
    assert m[:v].all() and not m[v:].any()
    instr = out[goals.goal_field][b, 0]
    for t in range(v):
        np.testing.assert_array_equal(out[goals.goal_field][b, t], instr)
    for t in range(1, v):
        prev, cur = out[goals.active_field][b, t - 1], out[goals.active_field][b, t]
        hit = cur == prev + 1
        assert cur in (prev, prev + 1)
        if hit:
            np.testing.assert_array_equal(out[goals.achieved_field][b, t], instr[prev])
        assert out["reward"][b, t] == (goals.goal_reward if hit else 0)
        assert out["terminated"][b, t] == (cur == goals.k)
        assert out[goals.completed_field][b, t].sum() == cur
    if v and out["terminated"][b, v - 1]:
        assert out["time_index"][b, v:].sum() == 0


@pytest.mark.parametrize("cls", ENGINES)
@pytest.mark.parametrize("strategy", ["all", "some", "final", "future"])
def test_relabeled_windows_follow_the_rule(cls, strategy):
    spec = goal_env_spec(k=3)
    buf = cls.from_env_spec(spec, capacity_steps=600, num_envs=4, seed=9)
    drive([buf], GoalRollouts(spec, 4, seed=3, p_truncate=0.02, values=4), 200)
    out = buf.sample_windows(24, 12, relabel=RelabelConfig(strategy, 1.0))
    plain = buf.sample_windows(24, 12)
    assert out["reward"].sum() > plain["reward"].sum()  # hindsight makes successes
    for b in range(24):
        _check_relabeled_window(out, b, spec.goals)


@pytest.mark.parametrize("cls", ENGINES)
def test_relabel_probability_zero_and_match_fn(cls):
    spec = goal_env_spec(k=2)
    buf = cls.from_env_spec(spec, capacity_steps=300, num_envs=2, seed=2)
    drive([buf], GoalRollouts(spec, 2, seed=5, p_truncate=0.05), 100)
    a = buf.sample_windows(8, 6, relabel=RelabelConfig("all", 0.0))
    buf._sample_counter -= 1
    b = buf.sample_windows(8, 6, relabel=RelabelConfig("none"))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    buf._sample_counter -= 1
    calls = []

    def exact(achieved, goals):
        calls.append(achieved.shape)
        return np.all(achieved == goals, axis=-1)

    c = buf.sample_windows(8, 6, relabel=RelabelConfig("all", 0.0, match_fn=exact))
    assert calls and all(len(s) == 3 for s in calls)
    for k in a:
        np.testing.assert_array_equal(a[k], c[k])
    with pytest.raises(ValueError, match="relabel"):
        cls.from_env_spec(plain_env_spec(), 50).sample_windows(1, 2, relabel=RelabelConfig())


def test_relabel_config_validation():
    with pytest.raises(ValueError, match="strategy"):
        RelabelConfig("sometimes")
    with pytest.raises(ValueError, match="probability"):
        RelabelConfig("all", 1.5)
    with pytest.raises(TypeError):
        RelabelConfig("all", 1.0, match_fn=3)


# ---------------------------------------------------------------- bad input


def _bad_cases(buf):
    good = count_row(0, 1, n=2)
    cases = []
    for key, val, exc in (
        ("obs", np.zeros((2, 2), np.float64), TypeError),
        ("obs", np.zeros((2, 3), np.float32), ValueError),
        ("obs", np.zeros((3, 2), np.float32), ValueError),
        ("action", np.zeros(2, np.int64), TypeError),
        ("reward", np.array([0.0, np.nan], np.float32), ValueError),
        ("reward", np.array([np.inf, 0.0], np.float32), ValueError),
        ("terminated", np.zeros(2, np.int8), TypeError),
    ):
        cases.append(("append_step", ({**good, key: val},), exc, key))
    cases.append(("append_step", ({**good, "bogus": np.zeros(2)},), ValueError, "bogus"))
    missing = dict(good)
    del missing["truncated"]
    cases.append(("append_step", (missing,), ValueError, "truncated"))
    cases.append(("append_step", (good, np.array([0, 5])), ValueError, "range"))
    cases.append(("append_step", (good, np.array([1, 1])), ValueError, "duplicate"))
    cases.append(("append_step", (good, np.array([0.0, 1.0])), TypeError, "integer"))
    cases.append(("append_step", (count_row(0, 1, n=3), np.array([0, 1])), ValueError, "rows"))
    cases.append(("append_step", ([1, 2],), TypeError, "dict"))
    cases.append(("reset_envs", ({"obs": np.zeros((2, 2), np.float32),
                                  "action": np.zeros(2, np.int32)},), ValueError, "action"))
    cases.append(("reset_envs", ({"obs": np.zeros((2, 2), np.int32)},), TypeError, "obs"))
    cases.append(("add_trajectory", (count_row(0, 1, n=1),), ValueError, "2 rows"))
    cases.append(("add_trajectory", ({**count_row(0, 1, n=4),
                                      "reward": np.full(4, np.nan, np.float32)},),
                  ValueError, "reward"))
    cases.append(("sample_windows", (4, 64), ValueError, "capacity"))
    cases.append(("sample_windows", (0, 4), ValueError, "batch_size"))
    cases.append(("sample_windows", (2, 4, None, None, "uniform"), ValueError, "mode"))
    out = buf.allocate_batch(2, 4)
    cases.append(("sample_windows", (2, 4, {**out, "obs": out["obs"][:, :, :1]}), ValueError,
                  "obs"))
    cases.append(("sample_windows", (2, 4, {**out, "mask": out["mask"].astype(np.int8)}),
                  TypeError, "mask"))
    cases.append(("sample_windows", (2, 4, {k: v for k, v in out.items() if k != "start"}),
                  ValueError, "start"))
    cases.append(("sample_windows", (2, 4, {**out, "extra": out["start"]}), ValueError, "extra"))
    return cases


@pytest.mark.parametrize("cls", ENGINES)
def test_bad_input_raises_and_leaves_buffer_unchanged(cls):
    buf = cls.from_env_spec(counting_spec(), capacity_steps=40, num_envs=2, seed=0)
    buf.reset_envs(reset_row(0, n=2))
    for t in range(1, 9):
        buf.append_step(count_row(0, t, n=2, done=t == 8))
    buf.reset_envs(reset_row(1, n=2))
    buf.append_step(count_row(1, 1, n=2))
    before = snapshot(buf)
    for method, args, exc, needle in _bad_cases(buf):
        with pytest.raises(exc) as info:
            getattr(buf, method)(*args)
        assert needle.lower() in str(info.value).lower(), (method, needle, str(info.value))
        assert_same_snapshot(before, snapshot(buf))
    # the buffer still works and is where it was
    buf.append_step(count_row(1, 2, n=2))


def test_constructor_errors():
    f = counting_spec().buffer_fields()
    with pytest.raises(ValueError, match="capacity"):
        NUMPY(f, capacity_steps=1)
    with pytest.raises(ValueError, match="max_trajectory_len"):
        NUMPY(f, capacity_steps=10, max_trajectory_len=10)
    with pytest.raises(ValueError, match="exactly one"):
        NUMPY(f, capacity_steps=10, capacity_bytes=100)
    with pytest.raises(ValueError, match="reward"):
        NUMPY([x for x in f if x.name != "reward"], capacity_steps=10)
    with pytest.raises(ValueError, match="seed"):
        NUMPY(f, capacity_steps=10, seed=-1)
    with pytest.raises(ValueError, match="goal"):
        NUMPY(f, capacity_steps=10, goals=goal_env_spec().goals)
    buf = NUMPY(f, capacity_bytes=1000)
    assert buf.capacity_steps == 1000 // buf.row_bytes
    with pytest.raises(ValueError, match="no committed trajectory"):
        buf.sample_windows(2, 3)


# ---------------------------------------------------------------- persistence and interop


def _filled(cls, seed=0, **kw):
    spec = goal_env_spec(k=2, image=(3, 3, 1))
    buf = cls.from_env_spec(spec, capacity_steps=120, num_envs=3, max_trajectory_len=15,
                            seed=seed, **kw)
    roll = GoalRollouts(spec, 3, seed=seed, p_truncate=0.05)
    drive([buf], roll, 90)
    return buf, roll


def _assert_same_samples(a, b, relabel=None):
    x, y = a.sample_windows(7, 9, relabel=relabel), b.sample_windows(7, 9, relabel=relabel)
    for k in x:
        np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.mark.parametrize("cls", ENGINES)
def test_save_load_resume_matches_uninterrupted(cls, tmp_path):
    buf, roll = _filled(cls)
    buf.sample_windows(3, 4)
    buf.save(tmp_path / "snap")
    # an independent copy continues uninterrupted; the loaded one resumes
    twin, twin_roll = _filled(cls)
    twin.sample_windows(3, 4)
    loaded = cls.load(tmp_path / "snap")
    assert (len(loaded), loaded.num_trajectories, loaded.total_steps_added,
            loaded.sample_counter) == (len(twin), twin.num_trajectories,
                                       twin.total_steps_added, twin.sample_counter)
    drive([loaded, twin], twin_roll, 40, started=True)  # open trajectories continue
    _assert_same_samples(loaded, twin, RelabelConfig("some", 0.5))
    _assert_same_samples(loaded, twin)


@pytest.mark.parametrize("cls", ENGINES)
def test_load_mmap_is_copy_on_write(cls, tmp_path):
    buf, roll = _filled(cls)
    buf.save(tmp_path / "s")
    files = sorted((tmp_path / "s").glob("data-*.bin"))
    assert len(files) == 1
    before = {p: p.read_bytes() for p in files}
    loaded = cls.load(tmp_path / "s", mmap=True)
    drive([loaded, buf], roll, 60, started=True)
    _assert_same_samples(loaded, buf)
    assert {p: p.read_bytes() for p in files} == before


@pytest.mark.parametrize("cls", ENGINES)
def test_snapshot_corruption_is_detected(cls, tmp_path):
    buf, _ = _filled(cls)
    snap = tmp_path / "s"
    buf.save(snap)
    manifest = json.loads((snap / "manifest.json").read_text())
    data = snap / manifest["data_file"]
    raw = data.read_bytes()
    at = manifest["arrays"]["ring_0"]["offset"] + 5
    data.write_bytes(raw[:at] + bytes([raw[at] ^ 1]) + raw[at + 1:])
    with pytest.raises(SnapshotError, match="checksum"):
        cls.load(snap)
    cls.load(snap, verify=False)  # checksums can be skipped (the bytes load)
    data.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(SnapshotError, match="truncated"):
        cls.load(snap)
    data.unlink()
    with pytest.raises(SnapshotError, match="missing"):
        cls.load(snap)
    data.write_bytes(raw)
    cls.load(snap)
    (snap / "manifest.json").write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(SnapshotError, match="version"):
        cls.load(snap)
    (snap / "manifest.json").write_text("{not json")
    with pytest.raises(SnapshotError, match="corrupt"):
        cls.load(snap)
    with pytest.raises(SnapshotError, match="no buffer snapshot"):
        cls.load(tmp_path / "nothing")
    bad = dict(manifest)
    bad["write_pos"] = 10**6
    (snap / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(SnapshotError, match="inconsistent"):
        cls.load(snap)


@pytest.mark.parametrize("cls", ENGINES)
def test_crash_mid_save_keeps_previous_snapshot(cls, tmp_path, monkeypatch):
    buf, roll = _filled(cls)
    snap = tmp_path / "s"
    buf.save(snap)
    reference = cls.load(snap)
    drive([buf], roll, 30, started=True)
    import amago_fast.buffer.persistence as br

    real_fsync = os.fsync
    calls = {"n": 0}

    def crash_at(n):
        def fsync(fd):
            calls["n"] += 1
            if calls["n"] == n:
                raise OSError("power cut (simulated)")
            return real_fsync(fd)
        return fsync

    for n in (1, 2):  # after the data file is written / while writing the new manifest
        calls["n"] = 0
        monkeypatch.setattr(br.os, "fsync", crash_at(n))
        with pytest.raises(OSError, match="simulated"):
            buf.save(snap)
        monkeypatch.setattr(br.os, "fsync", real_fsync)
        survivor = cls.load(snap)
        _assert_same_samples(survivor, reference)
        reference = cls.load(snap)
    assert len(list(snap.glob("data-*.bin"))) == 1
    buf.save(snap)  # a later save replaces it cleanly
    assert len(list(snap.glob("data-*.bin"))) == 1
    assert cls.load(snap).total_steps_added == buf.total_steps_added


@pytest.mark.parametrize("cls", ENGINES)
def test_export_import_npz_roundtrip(cls, tmp_path):
    buf, _ = _filled(cls)
    paths = buf.export_npz(tmp_path / "npz")
    assert len(paths) == buf.num_trajectories
    other = cls.from_env_spec(goal_env_spec(k=2, image=(3, 3, 1)), capacity_steps=120,
                              num_envs=1, max_trajectory_len=15)
    assert other.import_npz(paths) == len(paths)
    assert len(other) == len(buf) and other.num_trajectories == buf.num_trajectories
    np.testing.assert_array_equal(other.storage.pieces()[:, 2:], buf.storage.pieces()[:, 2:])
    # bad files are rejected before anything is added
    bad = tmp_path / "bad.npz"
    with np.load(paths[0]) as z:
        d = {k: z[k] for k in z.files}
    d["obs"] = d["obs"].astype(np.float64)
    np.savez(bad, **d)
    before = snapshot(other)
    with pytest.raises(TypeError, match="obs"):
        other.import_npz([paths[0], bad])
    assert_same_snapshot(before, snapshot(other))
    with pytest.raises(ValueError, match="cannot read"):
        other.import_npz([tmp_path / "missing.npz"])


@pytest.mark.parametrize("cls", ENGINES)
def test_add_trajectory_long_is_cut(cls):
    buf = cls.from_env_spec(counting_spec(), capacity_steps=50, max_trajectory_len=6)
    rows = {k: np.concatenate([count_row(0, t)[k] for t in range(15)]) for k in count_row(0, 0)}
    buf.add_trajectory(rows, time_offset=100)
    assert buf.storage.pieces()[:, 2].tolist() == [7, 7, 3]
    assert buf.storage.pieces()[:, 3].tolist() == [100, 106, 112]
    out = buf.sample_windows(20, 4)
    v = out["mask"]
    np.testing.assert_array_equal(out["obs"][..., 1][v] + 100, out["time_index"][v])


def test_fallback_without_native_core_warns_once():
    code = (
        "import sys, warnings\n"
        "sys.modules['amago_fast._core'] = None\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import amago_fast.buffer as b\n"
        "    import amago_fast.buffer\n"
        "msgs = [str(x.message) for x in w if 'NumPy reference' in str(x.message)]\n"
        "assert len(msgs) == 1, msgs\n"
        "assert not b.NATIVE_AVAILABLE\n"
        "from amago_fast.buffer.synthetic import plain_env_spec\n"
        "buf = b.TrajectoryBuffer.from_env_spec(plain_env_spec(), 10)\n"
        "assert buf.engine == 'numpy'\n"
        "try:\n"
        "    b.TrajectoryBuffer.from_env_spec(plain_env_spec(), 10, engine='native')\n"
        "except ValueError as e:\n"
        "    assert 'engine=' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('engine=native without the core was accepted')\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "AMAGO_FAST_CORE_PATH"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=Path(__file__).resolve().parents[2])
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def test_schema_from_fields_and_pinned_allocation():
    fields = [FieldSpec("x", (2,), np.float16), *plain_env_spec().buffer_fields()[1:]]
    buf = NUMPY(fields, capacity_steps=10)
    out = buf.allocate_batch(2, 3)
    assert out["x"].dtype == np.float16 and out["x"].shape == (2, 4, 2)
    import torch

    if torch.cuda.is_available():
        pinned = buf.allocate_batch(2, 3, pin_memory=True)
        assert pinned["x"].shape == (2, 4, 2)
