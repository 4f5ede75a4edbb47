"""Hostile buffer input: time offsets, snapshot paths, re-entrant match_fn, npz files, sizes.

Every rejected call names the argument, field or file, and leaves the buffer unchanged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import zipfile

import numpy as np
import pytest

from amago_fast.buffer import RelabelConfig, SnapshotError, TrajectoryBuffer
from amago_fast.buffer.synthetic import GoalRollouts, drive, goal_env_spec, plain_env_spec
from tests._buffers import ENGINES

SPEC = plain_env_spec(obs_dim=2)


def _traj(n: int = 3) -> dict[str, np.ndarray]:
    return {"obs": np.arange(2 * n, dtype=np.float32).reshape(n, 2),
            "action": np.zeros((n, 2), np.float32), "reward": np.ones(n, np.float32),
            "terminated": np.eye(1, n, n - 1, dtype=bool)[0], "truncated": np.zeros(n, bool)}


def _state(buf) -> tuple:
    return len(buf), buf.num_trajectories, buf.total_steps_added


# ----------------------------------------------------------------------------- time offsets
@pytest.mark.parametrize("cls", ENGINES)
@pytest.mark.parametrize("offset,expect", [
    (-100, "must be >= 0, got -100"),
    (3.7, "non-negative integer, got 3.7"),
    (np.array([1, 2]), r"integer scalar, got an array of shape \(2,\)"),
    ("5", "non-negative integer, got '5'"),
    (True, "non-negative integer, got True"),
    (2**63 - 2, r"time offset 9223372036854775806 \+ 3 rows exceeds the int64 time_index"),
])
def test_add_trajectory_offsets_are_validated(cls, offset, expect):
    buf = cls.from_env_spec(SPEC, 100)
    with pytest.raises(ValueError, match=rf"add_trajectory\(time_offset=\.\.\.\): .*{expect}"):
        buf.add_trajectory(_traj(), time_offset=offset)
    assert _state(buf) == (0, 0, 0)
    buf.add_trajectory(_traj(), time_offset=2**63 - 3)  # the last row's index is 2**63 - 1
    out = buf.sample_windows(2, 2)
    assert out["time_index"][out["mask"]].min() >= 2**63 - 3


@pytest.mark.parametrize("cls", ENGINES)
@pytest.mark.parametrize("offset,expect", [
    (np.int64(-100), "must be >= 0, got -100"),
    (np.float64(3.7), "non-negative integer, got np.float64"),
    (np.array([1, 2]), r"integer scalar, got an array of shape \(2,\)"),
    (np.str_("abc"), "non-negative integer, got np.str_"),
    (np.int64(2**63 - 2), "exceeds the int64 time_index"),
])
def test_import_npz_offsets_are_validated_naming_the_file(cls, tmp_path, offset, expect):
    """`__time_offset__` -100 used to be stored (time_index -100), 3.7 truncated to 3, and an
    array or a string gave a bare NumPy error."""
    path = tmp_path / "t.npz"
    np.savez(path, **_traj(), __time_offset__=offset)
    buf = cls.from_env_spec(SPEC, 100)
    with pytest.raises(ValueError, match=rf"import_npz: {path}: __time_offset__: .*{expect}"):
        buf.import_npz([path])
    assert _state(buf) == (0, 0, 0)


@pytest.mark.parametrize("cls", ENGINES)
def test_crafted_snapshot_offsets_cannot_wrap_time_index(cls, tmp_path):
    buf = cls.from_env_spec(SPEC, 100)
    buf.add_trajectory(_traj(), time_offset=7)
    buf.save(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    entry = manifest["arrays"]["pieces"]
    data = tmp_path / manifest["data_file"]
    raw = bytearray(data.read_bytes())
    pieces = np.frombuffer(raw, np.int64, count=4, offset=entry["offset"]).copy()
    assert pieces[3] == 7
    pieces[3] = 2**63 - 2  # + 3 rows wraps negative
    raw[entry["offset"]:entry["offset"] + 32] = pieces.tobytes()
    data.write_bytes(bytes(raw))
    with pytest.raises(SnapshotError, match="inconsistent"):
        cls.load(tmp_path, verify=False)


# ----------------------------------------------------------------------------- snapshot paths
@pytest.mark.parametrize("cls", ENGINES)
@pytest.mark.parametrize("name", ["../outside.bin", "/etc/hostname", "sub/data.bin",
                                  "manifest.json", None])
def test_snapshot_data_file_must_be_a_plain_name_inside_the_folder(cls, tmp_path, name):
    snap = tmp_path / "snap"
    buf = cls.from_env_spec(SPEC, 100)
    buf.add_trajectory(_traj())
    buf.save(snap)
    manifest = json.loads((snap / "manifest.json").read_text())
    # The attacker's copy of the real data, outside the snapshot: it must not be read.
    (tmp_path / "outside.bin").write_bytes((snap / manifest["data_file"]).read_bytes())
    manifest["data_file"] = name
    (snap / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(SnapshotError, match=r"data_file .* is not a plain data-<32 hex"):
        cls.load(snap)


@pytest.mark.parametrize("cls", ENGINES)
def test_snapshot_data_file_must_be_a_regular_file(cls, tmp_path):
    snap = tmp_path / "snap"
    buf = cls.from_env_spec(SPEC, 100)
    buf.add_trajectory(_traj())
    buf.save(snap)
    manifest = json.loads((snap / "manifest.json").read_text())
    data = snap / manifest["data_file"]
    moved = tmp_path / "elsewhere.bin"
    data.rename(moved)
    data.symlink_to(moved)  # a link out of the folder, under the expected name
    with pytest.raises(SnapshotError, match="is not a regular file"):
        cls.load(snap)


# ----------------------------------------------------------------------- re-entrant match_fn
@pytest.mark.parametrize("cls", ENGINES)
def test_match_fn_that_uses_the_same_buffer_is_refused_not_deadlocked(cls):
    spec = goal_env_spec(k=2)
    buf = cls.from_env_spec(spec, capacity_steps=300, num_envs=2, seed=2)
    drive([buf], GoalRollouts(spec, 2, seed=5, p_truncate=0.05), 100)
    before = _state(buf)
    calls = []

    def appends(achieved, goals):
        calls.append(1)
        rows = {f.name: np.zeros((1, *f.shape), f.dtype) for f in spec.observation}
        buf.reset_envs(rows, np.array([0]))
        return np.all(achieved == goals, axis=-1)

    result: dict = {}

    def run():
        try:
            buf.sample_windows(4, 6, relabel=RelabelConfig("all", 1.0, match_fn=appends))
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            result["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout=20)
    assert not t.is_alive(), "sample_windows deadlocked on a re-entrant match_fn"
    assert calls and isinstance(result.get("error"), RuntimeError)
    assert "reset_envs: called from inside this buffer's sample_windows" in str(result["error"])
    assert _state(buf) == before
    buf.sample_windows(4, 6)  # the buffer still works


# ----------------------------------------------------------------------------- mmap loads
def test_load_documents_the_mmap_truncation_hazard():
    doc = TrajectoryBuffer.load.__doc__
    assert "SIGBUS" in doc and "truncated" in doc and "default copies" in doc


@pytest.mark.slow
def test_mmap_load_then_truncation_is_the_documented_sigbus_and_copy_is_safe(tmp_path):
    """What the docstring warns of, shown in a child process: with mmap=True a truncated data
    file kills the process on the next sample (SIGBUS); the default copy keeps sampling."""
    script = textwrap.dedent(f"""
        import json, os, sys
        import numpy as np
        from amago_fast.buffer.synthetic import plain_env_spec
        from amago_fast.buffer import TrajectoryBuffer
        spec = plain_env_spec(obs_dim=2048)
        buf = TrajectoryBuffer.from_env_spec(spec, 4000)
        n = 3000
        buf.add_trajectory({{"obs": np.ones((n, 2048), np.float32),
                            "action": np.zeros((n, 2), np.float32),
                            "reward": np.zeros(n, np.float32),
                            "terminated": np.eye(1, n, n - 1, dtype=bool)[0],
                            "truncated": np.zeros(n, bool)}})
        buf.save({str(tmp_path)!r})
        loaded = TrajectoryBuffer.load({str(tmp_path)!r}, mmap=sys.argv[1] == "mmap")
        m = json.load(open({str(tmp_path)!r} + "/manifest.json"))
        os.truncate({str(tmp_path)!r} + "/" + m["data_file"], 4096)
        for _ in range(20):
            loaded.sample_windows(64, 64)
        print("sampled")
    """)
    copy = subprocess.run([sys.executable, "-c", script, "copy"], capture_output=True,
                          text=True, timeout=600)
    assert copy.returncode == 0 and "sampled" in copy.stdout, copy.stderr
    mapped = subprocess.run([sys.executable, "-c", script, "mmap"], capture_output=True,
                            text=True, timeout=600)
    assert mapped.returncode == -7  # SIGBUS


# ----------------------------------------------------------------------------- clear messages
@pytest.mark.parametrize("cls", ENGINES)
def test_sizes_that_cannot_be_allocated_name_the_field(cls):
    with pytest.raises(MemoryError, match=r"capacity_steps=1000000000000000: the buffer needs"):
        cls.from_env_spec(SPEC, 10**15)
    with pytest.raises(ValueError, match=r"num_envs must be an int in \[1, 2147483647\]"):
        cls.from_env_spec(SPEC, 100, 10**12)


@pytest.mark.parametrize("cls", ENGINES)
def test_out_of_range_unsigned_env_ids_are_shown_as_given(cls):
    buf = cls.from_env_spec(SPEC, 100, 2)
    rows = {"obs": np.zeros((1, 2), np.float32)}
    with pytest.raises(ValueError, match=r"out of range \[0, 2\): \[18446744073709551615\]"):
        buf.reset_envs(rows, np.array([2**64 - 1], np.uint64))
    full = {k: v[:1] for k, v in _traj().items()}
    with pytest.raises(ValueError, match=r"\[9223372036854775808\]"):
        buf.write_step(full, np.array([2**63], np.uint64), np.array([True]))
    assert _state(buf) == (0, 0, 0)


def _npy_member(shape: tuple, dtype: str = "<f4", payload: bytes = b"") -> bytes:
    header = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {shape}, }}".encode()
    header += b" " * (118 - len(header)) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + payload


@pytest.mark.parametrize("cls", ENGINES)
def test_bad_npz_files_are_named_and_nothing_is_added(cls, tmp_path):
    buf = cls.from_env_spec(SPEC, 100)
    good = tmp_path / "good.npz"
    np.savez(good, **_traj())
    trunc = tmp_path / "trunc.npz"
    trunc.write_bytes(good.read_bytes()[:200])
    rand = tmp_path / "rand.npz"
    rand.write_bytes(np.random.default_rng(0).bytes(500))
    huge = tmp_path / "huge.npz"
    with zipfile.ZipFile(huge, "w") as z:  # declares 8 TB, holds nothing
        z.writestr("obs.npy", _npy_member((10**12, 2)))
    pickled = tmp_path / "pickled.npz"
    with zipfile.ZipFile(pickled, "w") as z:
        z.writestr("obs.npy", _npy_member((1,), "|O", b"\x80\x04N."))
    cases = [(trunc, "cannot read it as an .npz file"), (rand, "cannot read it as an .npz file"),
             (huge, r"array 'obs': its header declares shape \(1000000000000, 2\) float32 "
                    r"\(8000000000000 bytes\) but it holds 0 bytes"),
             (pickled, "object .pickled. arrays are refused"),
             (tmp_path / "missing.npz", "No such file")]
    for path, expect in cases:
        with pytest.raises(ValueError, match=rf"import_npz: {path}: .*{expect}"):
            buf.import_npz([good, path])  # the good file first: still nothing is added
        assert _state(buf) == (0, 0, 0)
    with pytest.raises(TypeError, match="paths must be a list of file paths, got one str"):
        buf.import_npz(str(good))
    with pytest.raises(TypeError, match="got one PosixPath"):
        buf.import_npz(good)
    assert buf.import_npz([good]) == 1
    assert os.path.exists(good)
