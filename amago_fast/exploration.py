"""Exploration applied by the collector on top of the policy's actions (training only).

- :class:`EpsilonGreedy` (discrete / multi-discrete): with probability eps_i an env's action is
  replaced by a uniform random one. eps anneals linearly from `eps_start` to `eps_end` over
  `anneal_steps` env steps; as in AMAGO each env i has its own multiplier u_i ~ U(0, 1), redrawn
  at each of its rollout starts, so eps_i = eps(t) * u_i and some envs explore much more than
  others (``randomize=False`` gives every env u_i = 1; ``multiplier_floor`` f > 0 draws u_i
  log-uniformly from [f, 1] instead, as Ape-X spreads ε over its actors, so that a share of the
  rollouts act almost on-policy).
  Optionally ε applies only in a window of each rollout's steps (``horizon``, ``explore_first``,
  ``explore_last``): steps t < explore_first or t >= horizon - explore_last explore, the others
  take the policy's own action. This is for tasks such as passive T-Maze, whose H - 1
  deterministic corridor steps make per-step ε-greedy the worst case: a useful exploratory turn
  at the junction needs a random action at the last step and none in the H - 1 steps before it,
  at most ~1.2% of episodes for corridor 20 whatever the ε schedule (max over ε of
  (1 - 3ε/4)^20 · ε/2). AMAGO's T-Maze experiments use the same kind of windowed schedule.
- :class:`BilevelEpsilonGreedy` (discrete / multi-discrete; the profiles' default when the env
  has an episode limit): ε is annealed over training *and* over each rollout's time steps, as in
  AMAGO's bilevel schedule. At rollout step t of a rollout of `horizon` steps
  ε = ε_first(n) + (ε_last(n) − ε_first(n)) · min(t / horizon, 1), where ε_first and ε_last anneal
  linearly over `anneal_steps` env steps n (first: `eps_first_start` → `eps_first_end`, last:
  `eps_last_start` → `eps_last_end`), times the same per-env U(0, 1) multiplier. Knowing nothing
  of the task, it explores early in a rollout (the first episodes of a meta-RL trial) and acts
  more on its own policy later. With ``late_start_prob`` p a rollout explores only from a step
  drawn uniformly from the horizon (the policy alone before it): a decision that comes after a
  long stretch that any random action spoils (T-Maze's junction after its corridor) is then
  explored in ~1/(1.5 T) of the episodes whatever ε is (passive T-Maze 50, simulated: 1.4%
  with p = 1 vs 0.05% with p = 0), where exploring from the first step reaches it almost never.
  ``late_start_draw="ends"`` draws that step's distance from one end of the rollout (first or
  last step, equal odds) log-uniformly instead: a rollout explores from near its start as often
  as AMAGO's schedule does, and a last-step decision is reached in a share that falls with
  log T instead of 1/T (the junction of a simulated T-Maze: 3.2% of episodes at T = 51 vs 1.3%
  uniform, 2.2% vs 0.22% at T = 301, 1.8% vs 0.08% at T = 1001).
  The profiles use p = 1 and q = 0.5 (below; amago_fast/profiles.py, docs/LEARNING.md).
  With ``decision_rollout_prob`` q, each rollout (drawn at its start) is with probability q a
  *decision rollout*: it takes the policy's own action everywhere except at decision points,
  the steps where the policy's action or the observation differs from the previous step of the
  same rollout, where it explores with the first-step ε (times the env's multiplier; annealed
  to ``decision_eps_end``, by default the first step's end value). A learned
  corridor is then walked without a spoiling random step and the choice at its end is explored
  in a share of rollouts that does not fall with the corridor's length. Simulated on passive
  T-Maze 50's observations at 8k of 25k annealing steps, the junction step is explored after a
  clean corridor in 10.8% of rollouts with q = 0.5 vs 4.4% without for a policy that turns
  there, and in 11.0% vs 4.1% for one that walks on (the observation changes at the junction
  even where the action does not). Where the observation changes at every
  step (CartPole, MiniGrid's views), a decision rollout explores every step with the
  first-step ε.
- :class:`GaussianNoise` (continuous): adds N(0, (std_i * half_range)^2) to the (tanh-bounded)
  policy action and clips to the action bounds; std anneals from `std_start` to `std_end` with the
  same per-env multiplier scheme. Its first `uniform_steps` env steps act uniformly at random
  over the action box instead (TD3 / SAC's start steps; the AIB protocol's random vector steps).
  With ``uniform_rollout_prob`` p > 0, each rollout (drawn at its start, per env) acts uniformly
  at random for its whole length with probability p, for the whole run: a stream of
  policy-independent data that keeps reaching states the current policy has stopped visiting.

Both are seeded, count env steps through :meth:`advance`, and save/restore with
``state_dict()`` / ``load_state_dict()``. Evaluation simply does not call them.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from amago_fast.spaces import ActionSpec, random_actions


def _unit_number(name: str, value: Any, include_one: bool = True) -> float:
    """`value` as a float in [0, 1] ([0, 1) with ``include_one=False``), or a ValueError naming
    `name`; bools and strings are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not (0.0 <= float(value) <= 1.0 if include_one else 0.0 <= float(value) < 1.0):
        raise ValueError(f"{name} must be a number in [0, {'1]' if include_one else '1)'}, "
                         f"got {value!r}")
    return float(value)


class _Annealed:
    kind = "annealed"

    def __init__(
        self, num_envs: int, start: float, end: float, anneal_steps: int, randomize: bool,
        seed: int, multiplier_floor: float = 0.0,
    ) -> None:
        if not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive integer, got {num_envs!r}")
        if not (0.0 <= end and 0.0 <= start):
            raise ValueError(f"exploration start/end must be >= 0, got {start}, {end}")
        if anneal_steps < 0:
            raise ValueError(f"anneal_steps must be >= 0, got {anneal_steps}")
        self.multiplier_floor = _unit_number("multiplier_floor", multiplier_floor,
                                             include_one=False)
        self.num_envs = int(num_envs)
        self.start, self.end, self.anneal_steps = float(start), float(end), int(anneal_steps)
        self.randomize = bool(randomize)
        self.rng = np.random.default_rng(seed)
        self.steps = 0
        self.scale = self._draw_scale(self.num_envs)

    def _draw_scale(self, n: int) -> np.ndarray:
        if not self.randomize:
            return np.ones(n)
        if self.multiplier_floor > 0.0:
            # log-uniform in [floor, 1]: every decade of ε gets the same share of rollouts, so
            # a share of them act almost on-policy (Ape-X's per-actor ε spread)
            return np.power(self.multiplier_floor, self.rng.random(n))
        return self.rng.random(n)

    def _annealed(self, start: float, end: float) -> float:
        """`start` moved linearly to `end` over the annealing steps (`end` once they are done)."""
        if self.anneal_steps == 0:
            return end
        frac = min(1.0, self.steps / self.anneal_steps)
        return start + (end - start) * frac

    def current(self) -> float:
        """The annealed value before the per-env multiplier."""
        return self._annealed(self.start, self.end)

    def per_env(self, env_ids: np.ndarray | None = None) -> np.ndarray:
        s = self.scale if env_ids is None else self.scale[env_ids]
        return self.current() * s

    def advance(self, env_steps: int) -> None:
        """Count `env_steps` environment steps toward the annealing schedule."""
        self.steps += int(env_steps)

    def reset_envs(self, env_ids: np.ndarray) -> None:
        """New rollouts in `env_ids`: redraw their multipliers."""
        ids = np.asarray(env_ids)
        if ids.size:
            self.scale[ids] = self._draw_scale(ids.size)

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "steps": self.steps,
            "scale": self.scale.copy(),
            "rng": copy.deepcopy(self.rng.bit_generator.state),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise ValueError(f"state is for {state.get('kind')!r} exploration, not {self.kind!r}")
        scale = np.asarray(state["scale"], dtype=np.float64)
        if scale.shape != (self.num_envs,):
            raise ValueError(f"state scale has shape {scale.shape}, expected ({self.num_envs},)")
        rng = np.random.default_rng()
        rng.bit_generator.state = copy.deepcopy(state["rng"])
        self.steps, self.scale, self.rng = int(state["steps"]), scale.copy(), rng


class EpsilonGreedy(_Annealed):
    """Per-env ε-greedy with an annealed ε and a per-env random multiplier (discrete actions)."""

    kind = "epsilon_greedy"

    def __init__(
        self,
        action: ActionSpec,
        num_envs: int,
        eps_start: float = 1.0,
        eps_end: float = 0.05,
        anneal_steps: int = 1_000_000,
        randomize: bool = True,
        seed: int = 0,
        horizon: int | None = None,
        explore_first: int = 0,
        explore_last: int = 0,
        multiplier_floor: float = 0.0,
    ) -> None:
        if not action.is_discrete:
            raise ValueError("EpsilonGreedy needs a discrete or multi-discrete action space")
        if not (0.0 <= eps_end <= 1.0 and 0.0 <= eps_start <= 1.0):
            raise ValueError(f"eps must be in [0, 1], got start={eps_start}, end={eps_end}")
        for name, v in (("explore_first", explore_first), ("explore_last", explore_last)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        if horizon is not None:
            if not isinstance(horizon, (int, np.integer)) or isinstance(horizon, bool) \
                    or horizon < 1:
                raise ValueError(f"horizon must be a positive integer or None, got {horizon!r}")
            if explore_first + explore_last == 0:
                raise ValueError("horizon given but explore_first = explore_last = 0: "
                                 "no step would ever explore")
        elif explore_first or explore_last:
            raise ValueError("explore_first/explore_last need the rollout horizon (horizon=...)")
        self.action = action
        self.horizon = None if horizon is None else int(horizon)
        self.explore_first, self.explore_last = int(explore_first), int(explore_last)
        super().__init__(num_envs, eps_start, eps_end, anneal_steps, randomize, seed,
                         multiplier_floor)
        # steps each env has acted in its current rollout (a window, the bilevel schedule)
        self.rollout_t = np.zeros(self.num_envs, np.int64)

    def reset_envs(self, env_ids: np.ndarray) -> None:
        """New rollouts in `env_ids`: redraw their multipliers and restart their step count."""
        super().reset_envs(env_ids)
        ids = np.asarray(env_ids)
        if ids.size:
            self.rollout_t[ids] = 0

    def in_window(self, env_ids: np.ndarray | None = None) -> np.ndarray:
        """Whether each env's current rollout step is one where ε applies (all True without a
        window)."""
        t = self.rollout_t if env_ids is None else self.rollout_t[env_ids]
        if self.horizon is None:
            return np.ones(t.shape, bool)
        return (t < self.explore_first) | (t >= self.horizon - self.explore_last)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "rollout_t": self.rollout_t.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        t = np.asarray(state.get("rollout_t", np.zeros(self.num_envs)), dtype=np.int64)
        if t.shape != (self.num_envs,):
            raise ValueError(f"state rollout_t has shape {t.shape}, expected ({self.num_envs},)")
        super().load_state_dict(state)
        self.rollout_t = t.copy()

    uses_observations = False
    """Whether :meth:`apply` wants the observations the policy acted on (the collector passes
    them only then)."""

    def _step_eps(self, actions: np.ndarray, env_ids: np.ndarray | None,
                  observations: dict[str, np.ndarray] | None) -> np.ndarray:
        """ε of each env for this step (before :meth:`apply` advances the step counts)."""
        return self.per_env(env_ids) * self.in_window(env_ids)

    def apply(self, actions: np.ndarray, env_ids: np.ndarray | None = None,
              observations: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """Actions (n, ...) of the envs `env_ids` (all if None) with ε-greedy replacement;
        `observations` (name -> (n, ...)), what the policy acted on, mark decision points."""
        actions = np.asarray(actions)
        n = actions.shape[0]
        envs = self.num_envs if env_ids is None else len(env_ids)
        if envs != n:
            raise ValueError(f"{n} actions for {envs} envs")
        replace = self.rng.random(n) < self._step_eps(actions, env_ids, observations)
        if env_ids is None:
            self.rollout_t += 1
        else:
            self.rollout_t[env_ids] += 1
        if self.action.kind == "discrete":
            rand = self.rng.integers(0, self.action.n, size=n, dtype=np.int32)
            return np.where(replace, rand, actions).astype(np.int32)
        nvec = np.asarray(self.action.nvec)
        rand = (self.rng.random((n, nvec.size)) * nvec).astype(np.int32)
        return np.where(replace[:, None], rand, actions).astype(np.int32)


LATE_START_DRAWS = ("uniform", "ends")


class BilevelEpsilonGreedy(EpsilonGreedy):
    """ε annealed over training and over each rollout's steps, per-env random multiplier.

    ``current()`` is the annealed ε at a rollout's first step (what the collector logs as
    ``exploration_value``); each env's ε at its current step comes from :meth:`per_env`.
    """

    kind = "bilevel_epsilon_greedy"

    def __init__(
        self,
        action: ActionSpec,
        num_envs: int,
        horizon: int,
        eps_first_start: float = 1.0,
        eps_first_end: float = 0.05,
        eps_last_start: float = 0.8,
        eps_last_end: float = 0.01,
        anneal_steps: int = 1_000_000,
        randomize: bool = True,
        seed: int = 0,
        late_start_prob: float = 0.0,
        late_start_draw: str = "uniform",
        multiplier_floor: float = 0.0,
        decision_rollout_prob: float = 0.0,
        decision_eps_end: float | None = None,
    ) -> None:
        if late_start_draw not in LATE_START_DRAWS:
            raise ValueError(f"late_start_draw must be one of {list(LATE_START_DRAWS)}, got "
                             f"{late_start_draw!r}")
        _unit_number("late_start_prob", late_start_prob)
        _unit_number("decision_rollout_prob", decision_rollout_prob)
        if decision_eps_end is not None:
            _unit_number("decision_eps_end", decision_eps_end)
        values = {"eps_first_start": eps_first_start, "eps_first_end": eps_first_end,
                  "eps_last_start": eps_last_start, "eps_last_end": eps_last_end}
        for name, v in values.items():
            _unit_number(name, v)
        if not isinstance(horizon, (int, np.integer)) or isinstance(horizon, bool) or horizon < 1:
            raise ValueError(f"horizon must be a positive integer, got {horizon!r}")
        # The parent's window is off (horizon=None there): every step may explore, with the
        # step-dependent ε below.
        super().__init__(action, num_envs, eps_first_start, eps_first_end, anneal_steps,
                         randomize, seed, multiplier_floor=multiplier_floor)
        self.rollout_horizon = int(horizon)
        self.last_start, self.last_end = float(eps_last_start), float(eps_last_end)
        self.late_start_prob = float(late_start_prob)
        self.late_start_draw = late_start_draw
        # The step from which each env's current rollout explores (0: from its first step).
        self.explore_from = self._draw_start(self.num_envs)
        self.decision_rollout_prob = float(decision_rollout_prob)
        # ε at decision points anneals from eps_first_start to this (default: eps_first_end)
        self.decision_end = float(eps_first_end if decision_eps_end is None
                                  else decision_eps_end)
        # Rollouts that explore only at decision points (see :meth:`_step_eps`).
        self.decision_rollout = self._draw_decision(self.num_envs)
        # The policy's own action at each env's previous step (before any replacement) and the
        # observation it acted on there, kept only with decision rollouts; rollout_t > 0 says
        # whether that previous step belongs to the current rollout.
        shape = (self.num_envs,) if action.kind == "discrete" else (self.num_envs,
                                                                    len(action.nvec))
        self.prev_action = np.zeros(shape, np.int64)
        self.prev_obs: dict[str, np.ndarray] | None = None  # allocated at the first observations

    def _draw_decision(self, n: int) -> np.ndarray:
        if self.decision_rollout_prob == 0.0:  # no draw: the RNG stream is as without the option
            return np.zeros(n, bool)
        return self.rng.random(n) < self.decision_rollout_prob

    def _draw_start(self, n: int) -> np.ndarray:
        """Per rollout: with probability late_start_prob a step drawn from the horizon by
        ``late_start_draw`` (the policy acts alone before it), else 0."""
        late = self.rng.random(n) < self.late_start_prob
        horizon = self.rollout_horizon
        if self.late_start_draw == "uniform":
            start = self.rng.integers(0, horizon, size=n)
        else:
            # "ends": the distance d in [1, horizon] from one end of the rollout is log-uniform
            # (floor(horizon ** U)), measured from the first step or from the last with equal
            # odds, so every octave of distance from either end gets the same share of rollouts.
            d = np.floor(np.power(float(horizon), self.rng.random(n))).astype(np.int64)
            d = np.clip(d, 1, horizon)
            from_first = self.rng.random(n) < 0.5
            start = np.where(from_first, d - 1, horizon - d)
        return np.where(late, start, 0)

    def reset_envs(self, env_ids: np.ndarray) -> None:
        """New rollouts in `env_ids`: new multipliers, step counts and exploration starts."""
        super().reset_envs(env_ids)
        ids = np.asarray(env_ids)
        if ids.size:
            self.explore_from[ids] = self._draw_start(ids.size)
            self.decision_rollout[ids] = self._draw_decision(ids.size)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "explore_from": self.explore_from.copy(),
                "decision_rollout": self.decision_rollout.copy(),
                "prev_action": self.prev_action.copy(),
                "prev_obs": (None if self.prev_obs is None else
                             {k: v.copy() for k, v in self.prev_obs.items()})}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        start = np.asarray(state.get("explore_from", np.zeros(self.num_envs)), dtype=np.int64)
        if start.shape != (self.num_envs,):
            raise ValueError(f"state explore_from has shape {start.shape}, expected "
                             f"({self.num_envs},)")
        decision = np.asarray(state.get("decision_rollout", np.zeros(self.num_envs, bool)),
                              dtype=bool)
        if decision.shape != (self.num_envs,):
            raise ValueError(f"state decision_rollout has shape {decision.shape}, expected "
                             f"({self.num_envs},)")
        prev = np.asarray(state.get("prev_action", np.zeros_like(self.prev_action)),
                          dtype=np.int64)
        if prev.shape != self.prev_action.shape:
            raise ValueError(f"state prev_action has shape {prev.shape}, expected "
                             f"{self.prev_action.shape}")
        prev_obs = state.get("prev_obs")
        if prev_obs is not None:
            if not isinstance(prev_obs, dict) or any(
                    np.shape(v)[:1] != (self.num_envs,) for v in prev_obs.values()):
                raise ValueError(f"state prev_obs must map names to arrays of {self.num_envs} "
                                 "rows")
            prev_obs = {str(k): np.array(v) for k, v in prev_obs.items()}
        super().load_state_dict(state)
        self.explore_from, self.decision_rollout = start.copy(), decision.copy()
        self.prev_action, self.prev_obs = prev.copy(), prev_obs

    def _last(self) -> float:
        return self._annealed(self.last_start, self.last_end)

    def per_env(self, env_ids: np.ndarray | None = None) -> np.ndarray:
        """ε of each env at its current rollout step (before :meth:`apply` advances it)."""
        t = self.rollout_t if env_ids is None else self.rollout_t[env_ids]
        s = self.scale if env_ids is None else self.scale[env_ids]
        start = self.explore_from if env_ids is None else self.explore_from[env_ids]
        progress = np.minimum(t / self.rollout_horizon, 1.0)
        first = self.current()
        return (first + (self._last() - first) * progress) * s * (t >= start)

    @property
    def uses_observations(self) -> bool:  # type: ignore[override]
        return self.decision_rollout_prob > 0.0

    def _decision_points(self, actions: np.ndarray, env_ids: np.ndarray | None,
                         observations: dict[str, np.ndarray] | None) -> np.ndarray:
        """Whether, at each env's step, the policy's action or (when given) the observation
        differs from the previous step of the same rollout (a decision point); records both as
        the new previous ones."""
        ids = slice(None) if env_ids is None else env_ids
        n = actions.shape[0]
        prev = self.prev_action[ids]
        changed = actions != prev if actions.ndim == 1 else (actions != prev).any(axis=1)
        if observations is not None:
            if self.prev_obs is None:
                self.prev_obs = {k: np.zeros((self.num_envs, *np.shape(v)[1:]),
                                             np.asarray(v).dtype)
                                 for k, v in observations.items()}
            obs = {k: np.asarray(v) for k, v in observations.items()}
            for k, v in obs.items():  # every check before any state is written
                if k not in self.prev_obs or v.shape != (n, *self.prev_obs[k].shape[1:]):
                    raise ValueError(f"observation {k!r} of shape {v.shape} does not match "
                                     "the exploration's earlier observations")
            for k, v in obs.items():
                changed |= (v != self.prev_obs[k][ids]).reshape(n, -1).any(axis=1)
                self.prev_obs[k][ids] = v
        self.prev_action[ids] = actions  # `changed` already holds the comparison
        return changed & (self.rollout_t[ids] > 0)  # a rollout's first step has no previous

    def _step_eps(self, actions: np.ndarray, env_ids: np.ndarray | None,
                  observations: dict[str, np.ndarray] | None) -> np.ndarray:
        """A decision rollout explores only at decision points, with ε annealed from the
        first-step start to ``decision_eps_end`` (times the env's multiplier); the other
        rollouts follow :meth:`per_env`."""
        eps = self.per_env(env_ids)
        if self.decision_rollout_prob == 0.0:
            return eps
        ids = slice(None) if env_ids is None else env_ids
        decision_eps = self._annealed(self.start, self.decision_end)
        at_decision = (decision_eps * self.scale[ids]
                       * self._decision_points(actions, env_ids, observations))
        return np.where(self.decision_rollout[ids], at_decision, eps)


class GaussianNoise(_Annealed):
    """Annealed Gaussian noise, per-env std multiplier, clipped to bounds (continuous actions)."""

    kind = "gaussian"

    def __init__(
        self,
        action: ActionSpec,
        num_envs: int,
        std_start: float = 0.5,
        std_end: float = 0.05,
        anneal_steps: int = 1_000_000,
        randomize: bool = True,
        seed: int = 0,
        multiplier_floor: float = 0.0,
        uniform_steps: int = 0,
        uniform_rollout_prob: float = 0.0,
    ) -> None:
        if action.kind != "continuous":
            raise ValueError("GaussianNoise needs a continuous action space")
        if isinstance(uniform_steps, bool) or not isinstance(uniform_steps, (int, np.integer)) \
                or uniform_steps < 0:
            raise ValueError(f"uniform_steps must be an integer >= 0, got {uniform_steps!r}")
        self.uniform_rollout_prob = _unit_number("uniform_rollout_prob", uniform_rollout_prob)
        self.uniform_steps = int(uniform_steps)
        self.action = action
        self.low = np.asarray(action.low, np.float32)
        self.high = np.asarray(action.high, np.float32)
        self.half_range = (self.high - self.low) / 2
        super().__init__(num_envs, std_start, std_end, anneal_steps, randomize, seed,
                         multiplier_floor)
        self.uniform_rollout = self._draw_uniform_rollout(self.num_envs)

    def _draw_uniform_rollout(self, n: int) -> np.ndarray:
        if self.uniform_rollout_prob == 0.0:  # no draw: runs without the option keep their rng
            return np.zeros(n, np.bool_)
        return self.rng.random(n) < self.uniform_rollout_prob

    def reset_envs(self, env_ids: np.ndarray) -> None:
        """New rollouts in `env_ids`: redraw their multipliers and uniform-rollout flags."""
        super().reset_envs(env_ids)
        ids = np.asarray(env_ids)
        if ids.size:
            self.uniform_rollout[ids] = self._draw_uniform_rollout(ids.size)

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"uniform_rollout": self.uniform_rollout.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # states saved before the option existed carry no flags: no rollout is uniform
        flags = np.asarray(state.get("uniform_rollout", np.zeros(self.num_envs, np.bool_)),
                           dtype=np.bool_)
        if flags.shape != (self.num_envs,):
            raise ValueError(f"state uniform_rollout has shape {flags.shape}, expected "
                             f"({self.num_envs},)")
        super().load_state_dict(state)
        self.uniform_rollout = flags.copy()

    def apply(self, actions: np.ndarray, env_ids: np.ndarray | None = None) -> np.ndarray:
        actions = np.asarray(actions, dtype=np.float32)
        n = actions.shape[0]
        std = self.per_env(env_ids)
        if std.shape[0] != n:
            raise ValueError(f"{n} actions for {std.shape[0]} envs")
        if self.steps < self.uniform_steps:
            # TD3 / SAC start steps: the untrained policy's action is close to one constant
            # push in every state (pre-tanh means ±0.3–0.6 across states of a fresh aib-di
            # agent, spread 0.1–0.2), which pins a point mass to a wall before any update.
            return random_actions(self.action, n, self.rng)
        noise = self.rng.standard_normal(actions.shape).astype(np.float32)
        noisy = actions + noise * (std[:, None].astype(np.float32) * self.half_range)
        out = np.clip(noisy, self.low, self.high).astype(np.float32)
        uniform = self.uniform_rollout if env_ids is None else self.uniform_rollout[env_ids]
        if uniform.any():
            out[uniform] = random_actions(self.action, int(uniform.sum()), self.rng)
        return out


EXPLORATION_KINDS = ("epsilon_greedy", "bilevel", "gaussian")


def make_exploration(action: ActionSpec, num_envs: int, seed: int = 0, **kwargs: Any):
    """The exploration named by ``kind`` (``epsilon_greedy``, ``bilevel`` or ``gaussian``);
    without ``kind``: EpsilonGreedy for discrete actions, GaussianNoise for continuous ones. The
    other keyword arguments go to that class."""
    kind = kwargs.pop("kind", None)
    if kind is None:
        kind = "epsilon_greedy" if action.is_discrete else "gaussian"
    if kind not in EXPLORATION_KINDS:
        raise ValueError(f"kind must be one of {list(EXPLORATION_KINDS)}, got {kind!r}")
    if kind == "gaussian":
        return GaussianNoise(action, num_envs, seed=seed, **kwargs)
    if not action.is_discrete:
        raise ValueError(f"exploration kind {kind!r} needs a discrete action space; "
                         "continuous actions take kind 'gaussian'")
    if kind == "bilevel":
        return BilevelEpsilonGreedy(action, num_envs, seed=seed, **kwargs)
    return EpsilonGreedy(action, num_envs, seed=seed, **kwargs)
