"""The NumPy absorb path: one step's bookkeeping and buffer write in whole-array NumPy.

The reference the native path (:mod:`.native_absorb`, collector/absorb.h) is tested against,
the fallback without the compiled core (or with float observations other than float32), and the
exact non-finite screening when a NaN/inf appears (the native pass hands such a step back
unchanged). ~30 NumPy calls per step, no per-env Python loop.
"""

from __future__ import annotations

import numpy as np

from amago_fast.collector.state import RolloutState


class NumpyAbsorb:
    """The NumPy absorb path of one :class:`RolloutState`."""

    def __init__(self, st: RolloutState) -> None:
        self.st = st

    def absorb(self, obs, reward, term, trunc, info, idx, actions, log) -> int:
        """Store one step's transitions and advance the bookkeeping; returns how many were
        stored. `idx`: the env ids of the batch (async), None for all envs in order (sync).
        `actions`: fresh (owned) array of the actions that produced this step's transitions;
        it is stored as is and never written to afterwards.

        Envs whose previous step ended their rollout (``pending_reset``) were autoreset by the
        env: their observation opens a new rollout and nothing is stored for them (their reward
        is the env's placeholder: zeroed before the non-finite check, since EnvPool's async
        dm_control pools leave it uninitialised); every other env appends one full row — one
        ``buffer.write_step`` call for both.
        """
        st = self.st
        names = st.obs_names
        new = st.pending_reset if idx is None else st.pending_reset[idx]
        any_new = bool(np.count_nonzero(new))  # count_nonzero: 0.3 µs, .any(): 1.3 µs
        if any_new:
            reward = reward.copy()  # the env's array is not ours to write
            reward[new] = 0.0
        obs, reward = st.validate(obs, reward, idx, log)
        if idx is None:
            m = st.n
            time_index = st.time_index + 1
            ep_return = st.ep_return + reward
        else:
            m = len(idx)
            time_index = st.time_index[idx] + 1
            ep_return = st.ep_return[idx] + reward
        prev_reward = reward.astype(np.float32)  # a fresh copy (see the class docstring)
        done = term | trunc
        stored = m
        # `new` is never written to later (sync: pending_reset is replaced, not updated;
        # async: it is a gather), so it can wait in _pending_write as is.
        st.store(obs, actions, reward, term, trunc, idx, new if any_new else None)
        prev_action = actions
        if any_new:
            new_pos = new.nonzero()[0]
            new_ids = new_pos if idx is None else idx[new_pos]
            stored = m - new_pos.size
            # A new rollout's row is its first observation with zero previous action/reward
            # and time_index 0; its done flags are False by the next-step rule (masked anyway).
            prev_action = actions.copy()  # `actions` itself may still be owed to the buffer
            prev_action[new_pos] = 0
            prev_reward[new_pos] = 0.0
            time_index[new_pos] = 0
            ep_return[new_pos] = 0.0
            done[new_pos] = False
            st.new_rollouts(new_ids)
        if idx is None:
            # No copy of the observations: rows are read by the next act() before the env
            # steps again, the buffer copies what it stores and state_dict() copies.
            st.rows = {k: obs[k] for k in names}
            st.prev_action = prev_action
            st.prev_reward = prev_reward
            st.time_index = time_index
            st.ep_return = ep_return
            st.pending_reset = done
        else:
            rows = st.rows
            for k in names:
                rows[k][idx] = obs[k]
            st.prev_action[idx] = prev_action
            st.prev_reward[idx] = prev_reward
            st.time_index[idx] = time_index
            st.ep_return[idx] = ep_return
            st.pending_reset[idx] = done
            st.batch_ids = idx
            st.batch_rows = st.batch_rows_of(obs, prev_action, prev_reward, time_index)
        if log is not None and np.count_nonzero(done):
            d_pos = done.nonzero()[0]
            log.add_arrays(ep_return[d_pos], time_index[d_pos], info, d_pos)
        return stored
