"""Episode statistics of collect / evaluate calls, and the evaluation's episode quotas."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from amago_fast.spaces import EnvSpec

# Evaluation's step cap reads an env's time limit as at most this many steps per episode (and
# uses it for envs that declare none): see default_eval_step_cap.
EVAL_STEPS_PER_EPISODE_CEILING = 100_000


class EpisodeLog:
    """Finished-rollout statistics of one collect/evaluate call, kept incrementally.

    A step extends a list of returns and adds to a sum of lengths (the absorber hands both over
    as a list and an int); :meth:`summary` only takes the means. Appending one array per field
    and step and concatenating them in `summary` cost ~4 µs more per collect call (~7 finished
    CartPole rollouts a call) plus ~1 µs per step for the arrays and the length gather.
    """

    def __init__(self) -> None:
        self.count = 0
        self.returns: list[float] = []
        self._length_sum = 0
        self._successes: list[np.ndarray] = []
        self.trial_episode_returns: list[np.ndarray] = []
        self.nonfinite = 0

    def add(self, returns: list[float], length_sum: int, info: dict[str, Any],
            pos: Any) -> None:
        """Rollouts that ended this step: their returns (a list of floats), the sum of their
        lengths (transitions), and the env's per-rollout info at positions `pos` of the step's
        batch (a list or an index array)."""
        self.count += len(returns)
        self.returns += returns
        self._length_sum += length_sum
        if "success" in info:
            succ = info["success"]
            if succ is not None:
                self._successes.append(np.asarray(succ)[pos])
        if "episode_returns" in info:
            ep_ret = info["episode_returns"]
            if ep_ret is not None:
                self.trial_episode_returns.append(np.asarray(ep_ret)[pos])

    def add_arrays(self, returns: np.ndarray, lengths: np.ndarray, info: dict[str, Any],
                   pos: np.ndarray) -> None:
        """:meth:`add` from arrays of the returns and lengths (the NumPy and sync paths)."""
        self.add(returns.tolist(), sum(lengths.tolist()), info, pos)

    def summary(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the per-env-name statistics, the extra entries of the top-level stats only)."""
        n = self.count
        out: dict[str, Any] = {"episodes": n}
        extra: dict[str, Any] = {}
        if n:
            # Plain Python over the (few) finished rollouts of one call: np.mean / np.std on a
            # short list cost ~15 µs per collect call, i.e. ~3 µs per vector step when a
            # collect call is a few vector steps.
            returns = self.returns
            mean = math.fsum(returns) / n
            out["return"] = mean
            out["return_std"] = math.sqrt(math.fsum([(x - mean) ** 2 for x in returns]) / n)
            out["length"] = self._length_sum / n
            extra["returns"] = returns
        if self._successes:
            # bool per episode, or (trial envs) the float share of a trial's successful inner
            # episodes, NaN where none finished: those trials carry no success information.
            succ = np.concatenate(self._successes).astype(np.float64)
            succ = succ[~np.isnan(succ)]
            if succ.size:
                out["success"] = float(succ.mean())
        if self.trial_episode_returns:
            ter = np.concatenate(self.trial_episode_returns)
            extra["trial_episode_returns"] = ter
            # The meta-RL check: is the first episode of a trial worse than the later ones?
            first = ter[:, 0]
            if np.isfinite(first).any():  # (a trial cut before its first episode ended: NaN)
                out["trial_first_episode_return"] = float(np.nanmean(first))
            later = ter[:, 1:]
            if np.isfinite(later).any():
                out["trial_later_episode_return"] = float(np.nanmean(later))
        return out, extra


class QuotaLog:
    """The episode log of an evaluation: each env slot counts toward its own quota.

    Slot i keeps its first ``quotas[i]`` finished rollouts; later ones in that slot are
    discarded (the slot keeps stepping, its results ignored), so envs whose episodes are short
    do not outweigh the others and the run reports exactly ``sum(quotas)`` episodes. Accepted
    rollouts go to an :class:`EpisodeLog` (the same summary as collect's); the per-slot
    returns, and the inner-episode returns of trial envs, are kept in finishing order. Env ids
    and lengths come from `rollouts`' state after the step (a done env keeps its time index,
    the rollout's length, until its autoreset step): sync batches are every env in order, async
    ones ``rollouts.batch_ids`` (`rollouts`: the evaluation's
    :class:`~amago_fast.collector.state.RolloutState`).
    """

    def __init__(self, quotas: list[int], rollouts: Any) -> None:
        self.inner = EpisodeLog()
        self.left = list(quotas)
        self.remaining = sum(quotas)
        self.slot_returns: list[list[float]] = [[] for _ in quotas]
        self.slot_episode_returns: list[list[list[float]]] = [[] for _ in quotas]
        self.has_trials = False
        self._rollouts = rollouts

    @property
    def count(self) -> int:
        return self.inner.count

    @property
    def nonfinite(self) -> int:
        return self.inner.nonfinite

    @nonfinite.setter
    def nonfinite(self, value: int) -> None:
        self.inner.nonfinite = value

    def add(self, returns: list[float], length_sum: int, info: dict[str, Any], pos: Any,
            lengths: np.ndarray | None = None) -> None:
        """As :meth:`EpisodeLog.add`; rollouts past their slot's quota are dropped."""
        pos_arr = np.asarray(pos, np.int64).reshape(-1)
        batch_ids = self._rollouts.batch_ids
        ids = pos_arr if batch_ids is None else np.asarray(batch_ids)[pos_arr]
        if lengths is None:
            lengths = self._rollouts.time_index[ids]
        ep_ret = info.get("episode_returns")
        ep_ret = None if ep_ret is None else np.asarray(ep_ret)
        keep: list[int] = []
        for j, slot in enumerate(ids.tolist()):
            if self.left[slot] <= 0:
                continue
            self.left[slot] -= 1
            self.remaining -= 1
            keep.append(j)
            self.slot_returns[slot].append(float(returns[j]))
            if ep_ret is not None:
                self.has_trials = True
                self.slot_episode_returns[slot].append(
                    np.asarray(ep_ret[pos_arr[j]], np.float64).reshape(-1).tolist())
        if keep:
            self.inner.add([float(returns[j]) for j in keep],
                           int(np.asarray(lengths)[keep].sum()), info, pos_arr[keep])

    def add_arrays(self, returns: np.ndarray, lengths: np.ndarray, info: dict[str, Any],
                   pos: np.ndarray) -> None:
        self.add(returns.tolist(), 0, info, pos, lengths)

    def summary(self) -> tuple[dict[str, Any], dict[str, Any]]:
        out, extra = self.inner.summary()
        extra["slot_returns"] = self.slot_returns
        if self.has_trials:
            extra["slot_episode_returns"] = self.slot_episode_returns
        return out, extra


def eval_quotas(num_episodes: int, num_envs: int) -> list[int]:
    """Episodes per env slot: ``num_episodes`` spread as evenly as possible (slot i gets
    ``num_episodes // num_envs``, plus one for ``i < num_episodes % num_envs``)."""
    base, extra = divmod(num_episodes, num_envs)
    return [base + (1 if i < extra else 0) for i in range(num_envs)]


def default_eval_step_cap(spec: EnvSpec, quotas: list[int]) -> int:
    """Env steps (summed over slots) an evaluation may take before it stops unfinished: per slot
    its quota × (the env's time limit + 1 for the autoreset step), the time limit read as at
    most :data:`EVAL_STEPS_PER_EPISODE_CEILING` (also the value for envs that declare none), so
    an env whose episodes never end stops after a bounded, reported number of steps."""
    t = spec.max_episode_steps
    t = EVAL_STEPS_PER_EPISODE_CEILING if t is None else min(int(t),
                                                             EVAL_STEPS_PER_EPISODE_CEILING)
    return max(1, len(quotas) * max(quotas) * (t + 1))
