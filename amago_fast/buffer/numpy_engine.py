"""The buffer's storage engine in NumPy: the test oracle of the native engine, and its fallback.

Layout (docs/DESIGN.md "Data layout: rows"): a trajectory of T transitions is T+1 rows; row t
holds o_t, a_{t-1}, r_{t-1}, terminated/truncated on arriving at row t, and the goal fields.

Storage: one preallocated ring per field, ``capacity_steps`` rows. Committed trajectory pieces
are contiguous modulo the capacity; committing a piece evicts the oldest whole pieces until it
fits. Open (not yet ended) trajectories live in per-env staging and are copied into the ring
when they end (terminated | truncated) or reach ``max_trajectory_len`` transitions. A cut keeps
the boundary row on both sides: the continuation's row 0 is a copy of the cut piece's last row
(flags untouched), and its ``time_index`` keeps counting. Without ``max_trajectory_len`` a
trajectory is cut at ``capacity_steps - 1`` transitions, the most one piece can hold.

Sampling: ``mode="timesteps"`` picks a piece with probability proportional to its number of
transitions, ``mode="trajectories"`` uniformly; the start row is uniform in
``[0, max(T - L, 0)]`` so windows are full whenever the piece is long enough. Rows past the
piece's end are zero-filled with ``mask`` False. Every draw comes from
:mod:`amago_fast.buffer.rng`, so this engine and the native one (csrc/buffer/) give the same
windows, masks and relabeled rewards for the same seed and call counter.

Threads: one lock (``lock``) serialises writes, gathers and snapshots here; the native engine
uses a reader/writer lock so gathers run concurrently.
"""

from __future__ import annotations

import bisect
import threading

import numpy as np

from amago_fast.buffer import relabel as rl
from amago_fast.buffer import rng
from amago_fast.buffer.checks import Layout
from amago_fast.spaces import TERMINATED, TRUNCATED


class NumpyEngine:
    """Pieces, per-env staging and window gathers over the ring arrays ``ring`` (owned by the
    buffer: allocated, or mapped from a snapshot). Every write method takes unchecked user input,
    checks it with ``layout`` and changes nothing on a rejected call."""

    name = "numpy"

    def __init__(self, layout: Layout, ring: dict[str, np.ndarray]) -> None:
        self.layout = layout
        self.ring = ring
        self.lock = threading.RLock()  # mutations, gathers and save (one at a time)
        self.total_steps_added = 0
        self._init_storage()

    def _init_storage(self) -> None:
        lay = self.layout
        E = lay.num_envs
        self._pieces: list[list[int]] = []  # [id, pos, rows, time_offset], oldest first
        self._cum: list[int] = []  # cumulative transitions up to and including each piece
        self._write_pos = 0
        self._used = 0
        self._next_id = 0
        self._open_len = np.zeros(E, np.int64)
        self._open_offset = np.zeros(E, np.int64)
        small = E * lay.max_rows * lay.row_bytes <= 1 << 28
        self._staging = ({f.name: np.zeros((E, lay.max_rows, *f.shape), f.dtype)
                          for f in lay.fields} if small else None)
        self._staging_lists: list[dict] | None = (
            None if self._staging is not None else [dict() for _ in range(E)]
        )

    # ------------------------------------------------------------------ queries

    def used_rows(self) -> int:
        return self._used

    def num_pieces(self) -> int:
        return len(self._pieces)

    def open_lengths(self) -> np.ndarray:
        """Rows of each env's open trajectory (0: none open)."""
        return self._open_len

    def pieces(self) -> np.ndarray:
        """(n, 4) int64 rows (trajectory id, ring position, rows, time offset), oldest first."""
        return np.array(self._pieces, dtype=np.int64).reshape(-1, 4)

    def check_out(self, out, B: int, L: int) -> None:
        self.layout.check_out(out, B, L)

    # ------------------------------------------------------------------ streaming writes

    def reset_envs(self, rows, env_ids) -> None:
        lay = self.layout
        ids = lay.check_env_ids(env_ids)
        checked = lay.check_rows(rows, lay.obs_names, len(ids), "reset_envs")
        with self.lock:
            self._reset(ids, checked)

    def append_step(self, rows, env_ids) -> int:
        lay = self.layout
        ids = lay.check_env_ids(env_ids)
        checked = lay.check_rows(rows, lay.names, len(ids), "append_step")
        with self.lock:
            closed = [int(e) for e in ids if self._open_len[e] == 0]
            if closed:
                raise ValueError(
                    f"append_step: envs {closed[:8]} have no open trajectory (call reset_envs)"
                )
            self._append(ids, checked)
            self.total_steps_added += len(ids)
        return len(ids)

    def write_step(self, rows, env_ids, starts) -> int:
        lay = self.layout
        ids = lay.check_env_ids(env_ids)
        checked = lay.check_rows(rows, lay.names, len(ids), "write_step")
        if starts is None:
            starts = np.zeros(len(ids), np.bool_)
        elif not (isinstance(starts, np.ndarray) and starts.dtype == np.bool_
                  and starts.shape == (len(ids),)):
            got = (f"{starts.dtype} {starts.shape}" if isinstance(starts, np.ndarray)
                   else type(starts).__name__)
            raise ValueError(f"write_step: starts must be a bool array of shape "
                             f"({len(ids)},), got {got}")
        cont = ~starts
        with self.lock:
            closed = [int(e) for e in ids[cont] if self._open_len[e] == 0]
            if closed:
                raise ValueError(
                    f"write_step: envs {closed[:8]} have no open trajectory (call reset_envs)"
                )
            if starts.any():
                self._reset(ids[starts], {k: checked[k][starts] for k in lay.obs_names})
            appended = int(cont.sum())
            if appended:
                self._append(ids[cont], {k: v[cont] for k, v in checked.items()})
            self.total_steps_added += appended
        return appended

    # ------------------------------------------------------------------ storage

    def _stage_rows(self, e: int) -> dict:
        """Per-env staging arrays (preallocated when small, grown on demand otherwise)."""
        if self._staging is not None:
            return {k: v[e] for k, v in self._staging.items()}
        return self._staging_lists[e]

    def _stage_write(self, e: int, t: int, row: dict) -> None:
        if self._staging is not None:
            for k, v in row.items():
                self._staging[k][e, t] = v
            return
        st = self._staging_lists[e]
        for f in self.layout.fields:
            arr = st.get(f.name)
            if arr is None or arr.shape[0] <= t:
                new = np.zeros((max(8, 2 * (t + 1)) if arr is None else min(
                    self.layout.max_rows, 2 * arr.shape[0]), *f.shape), f.dtype)
                if arr is not None:
                    new[: arr.shape[0]] = arr
                st[f.name] = arr = new
            arr[t] = row.get(f.name, 0)

    def commit(self, rows: dict, offset: int) -> None:
        """Store checked ``rows`` (one piece) at the write position, evicting the oldest whole
        pieces until it fits. The caller holds ``lock``."""
        n = next(iter(rows.values())).shape[0]
        C = self.layout.capacity_steps
        while self._used + n > C:
            old = self._pieces.pop(0)
            self._cum.pop(0)
            self._used -= old[2]
        idx = (self._write_pos + np.arange(n)) % C
        for f in self.layout.fields:
            self.ring[f.name][idx] = rows[f.name]
        self._pieces.append([self._next_id, self._write_pos, n, offset])
        self._cum.append((self._cum[-1] if self._cum else 0) + n - 1)
        self._next_id += 1
        self._used += n
        self._write_pos = (self._write_pos + n) % C

    def _commit_open(self, e: int) -> None:
        n = int(self._open_len[e])
        st = self._stage_rows(e)
        self.commit({f.name: st[f.name][:n] for f in self.layout.fields},
                    int(self._open_offset[e]))

    def _reset(self, ids: np.ndarray, rows: dict) -> None:
        for i, e in enumerate(ids.tolist()):
            if self._open_len[e] >= 2:
                self._commit_open(e)
            row = {f.name: np.zeros(f.shape, f.dtype) for f in self.layout.fields}
            for k in self.layout.obs_names:
                row[k] = rows[k][i]
            self._stage_write(e, 0, row)
            self._open_len[e] = 1
            self._open_offset[e] = 0

    def _append(self, ids: np.ndarray, rows: dict) -> None:
        term, trunc = rows[TERMINATED], rows[TRUNCATED]
        max_rows = self.layout.max_rows
        for i, e in enumerate(ids.tolist()):
            t = int(self._open_len[e])
            self._stage_write(e, t, {k: v[i] for k, v in rows.items()})
            self._open_len[e] = t + 1
            if term[i] or trunc[i]:
                self._commit_open(e)
                self._open_len[e] = 0
            elif t + 1 == max_rows:
                self._commit_open(e)
                st = self._stage_rows(e)
                self._stage_write(e, 0, {f.name: st[f.name][t].copy()
                                         for f in self.layout.fields})
                self._open_len[e] = 1
                self._open_offset[e] += t

    # ------------------------------------------------------------------ snapshot state

    def get_state(self) -> dict:
        """Pieces, open trajectories (lengths, offsets, rows concatenated in env order), write
        position and next id. The caller holds ``lock``."""
        ol = self._open_len.copy()
        open_rows = {}
        for f in self.layout.fields:
            parts = [self._stage_rows(e)[f.name][: ol[e]]
                     for e in range(self.layout.num_envs) if ol[e]]
            open_rows[f.name] = (np.concatenate(parts) if parts
                                 else np.zeros((0, *f.shape), f.dtype))
        return {"pieces": self.pieces(), "open_len": ol,
                "open_offset": self._open_offset.copy(), "open_rows": open_rows,
                "write_pos": self._write_pos, "next_id": self._next_id}

    def set_state(self, state: dict) -> None:
        """Install a state checked by :meth:`Layout.check_state` (the ring already holds the
        snapshot's rows)."""
        self._init_storage()
        self._pieces = [list(map(int, r)) for r in state["pieces"]]
        cum = 0
        self._cum = []
        for p in self._pieces:
            cum += p[2] - 1
            self._cum.append(cum)
        self._used = sum(p[2] for p in self._pieces)
        self._write_pos = int(state["write_pos"])
        self._next_id = int(state["next_id"])
        at = 0
        for e in range(self.layout.num_envs):
            n = int(state["open_len"][e])
            for t in range(n):
                self._stage_write(e, t, {k: v[at + t] for k, v in state["open_rows"].items()})
            at += n
            self._open_len[e] = n
            self._open_offset[e] = int(state["open_offset"][e])

    # ------------------------------------------------------------------ sampling

    def sample(self, B: int, L: int, mode: str, relabel, out: dict, counter: int) -> None:
        """Fill ``out`` with B windows of L steps drawn with call counter ``counter``."""
        lay = self.layout
        with self.lock:
            if not self._pieces:
                raise ValueError("sample_windows: no committed trajectory yet")
            C = lay.capacity_steps
            base = self._cum[0] - (self._pieces[0][2] - 1)
            total = self._cum[-1] - base
            for b in range(B):
                x0 = rng.draw(lay.seed, counter, b, rng.DRAW_TRAJECTORY)
                if mode == "timesteps":
                    i = bisect.bisect_right(self._cum, base + rng.uniform_int(x0, total))
                else:
                    i = rng.uniform_int(x0, len(self._pieces))
                pid, pos, nrows, offset = self._pieces[i]
                T = nrows - 1
                s = rng.uniform_int(rng.draw(lay.seed, counter, b, rng.DRAW_START),
                                    max(T - L, 0) + 1)
                valid = min(L, T - s) + 1
                idx = (pos + s + np.arange(valid)) % C
                for f in lay.fields:
                    dst = out[f.name][b]
                    dst[:valid] = self.ring[f.name][idx]
                    dst[valid:] = 0
                out["mask"][b, :valid] = True
                out["mask"][b, valid:] = False
                out["time_index"][b, :valid] = offset + s + np.arange(valid)
                out["time_index"][b, valid:] = 0
                out["trajectory_id"][b] = pid
                out["start"][b] = s
                if relabel is not None:
                    rl.relabel_window(lay.goals, relabel, lay.seed, counter, b, self.ring,
                                      lay.fields, pos, T, s, valid, out)
