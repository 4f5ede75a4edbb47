"""Data generators for the buffer's tests and benchmark (not part of the public API).

:class:`GoalRollouts` is a small vectorised multi-goal process that follows the
:class:`amago_fast.spaces.GoalSpec` rule exactly (as the real goal envs do), so the buffer's
replay with the original instruction must reproduce its rewards, active indices, completed marks
and terminal flags bit-for-bit. Achieved goals are drawn from a few values so goals do get
reached; with ``match="tolerance"`` they carry noise around those values.
"""

from __future__ import annotations

import numpy as np

from amago_fast.spaces import ActionSpec, EnvSpec, FieldSpec, GoalSpec


def goal_env_spec(k: int = 3, goal_dim: int = 2, obs_dim: int = 4, match: str = "exact",
                  eps: float = 0.0, goal_dtype=np.float32, image: tuple[int, ...] | None = None,
                  action: ActionSpec | None = None) -> EnvSpec:
    """An EnvSpec with a vector observation (optionally an image) and k-goal instructions."""
    goals = GoalSpec(k=k, goal_dim=goal_dim, goal_dtype=goal_dtype, match=match, eps=eps)
    obs = [FieldSpec("obs", (obs_dim,), np.float32)]
    if image is not None:
        obs.append(FieldSpec("image", image, np.uint8))
    return EnvSpec(
        name="goal_rollouts",
        observation=(*obs, *goals.fields()),
        action=action or ActionSpec("discrete", n=4),
        goals=goals,
    )


def plain_env_spec(obs_dim: int = 16, image: tuple[int, ...] | None = None,
                   action: ActionSpec | None = None) -> EnvSpec:
    """An EnvSpec without goals: a float32 vector observation and/or a uint8 image."""
    obs = []
    if obs_dim:
        obs.append(FieldSpec("obs", (obs_dim,), np.float32))
    if image is not None:
        obs.append(FieldSpec("image", image, np.uint8))
    return EnvSpec(name="plain", observation=tuple(obs),
                   action=action or ActionSpec("continuous", shape=(2,)))


class GoalRollouts:
    """N envs emitting buffer rows; goal fields follow the GoalSpec rule (if the spec has goals).

    ``reset_rows(ids)`` gives row 0 for those envs; ``step_rows()`` gives one full row for all
    envs and the ids that ended (terminated by reaching all goals, or truncated at random).
    """

    def __init__(self, spec: EnvSpec, num_envs: int, seed: int = 0, p_truncate: float = 0.05,
                 values: int = 3) -> None:
        self.spec = spec
        self.goals = spec.goals
        self.n = num_envs
        self.rng = np.random.default_rng(seed)
        self.p_truncate = p_truncate
        self.values = values
        g = self.goals
        if g is not None:
            self.instr = np.zeros((num_envs, g.k, g.goal_dim), g.goal_dtype)
            self.active = np.zeros(num_envs, np.int32)
            self.completed = np.zeros((num_envs, g.k), bool)
        self.t = np.zeros(num_envs, np.int64)

    def _achieved(self, n: int) -> np.ndarray:
        g = self.goals
        v = self.rng.integers(0, self.values, (n, g.goal_dim))
        if g.match == "tolerance":
            v = v + self.rng.uniform(-1.5 * g.eps, 1.5 * g.eps, v.shape)
        return v.astype(g.goal_dtype)

    def _obs(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        n = len(ids)
        rows = {}
        for f in self.spec.observation:
            if self.goals is not None and f.name in {x.name for x in self.goals.fields()}:
                continue
            if f.dtype == np.uint8:
                rows[f.name] = self.rng.integers(0, 256, (n, *f.shape), dtype=np.uint8)
            else:
                rows[f.name] = self.rng.standard_normal((n, *f.shape)).astype(f.dtype)
        if self.goals is not None:
            g = self.goals
            rows[g.goal_field] = self.instr[ids].copy()
            rows[g.active_field] = self.active[ids].copy()
            rows[g.completed_field] = self.completed[ids].copy()
        return rows

    def reset_rows(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        ids = np.asarray(ids, np.int64)
        self.t[ids] = 0
        g = self.goals
        if g is not None:
            self.instr[ids] = self.rng.integers(0, self.values, (len(ids), g.k, g.goal_dim))
            self.active[ids] = 0
            self.completed[ids] = False
        rows = self._obs(ids)
        if g is not None:
            rows[g.achieved_field] = self._achieved(len(ids))
        return rows

    def step_rows(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        ids = np.arange(self.n)
        self.t += 1
        reward = np.zeros(self.n, np.float32)
        terminated = np.zeros(self.n, bool)
        g = self.goals
        achieved = None
        if g is not None:
            achieved = self._achieved(self.n)
            for e in range(self.n):
                a = self.active[e]
                if a < g.k:
                    target = self.instr[e, a]
                    if g.match == "exact":
                        hit = bool(np.all(achieved[e] == target))
                    else:
                        diff = np.abs(achieved[e].astype(np.float64) - target.astype(np.float64))
                        hit = bool(np.all(diff <= g.eps))
                    if hit:
                        self.completed[e, a] = True
                        self.active[e] = a + 1
                        reward[e] = np.float32(g.goal_reward)
                terminated[e] = self.active[e] == g.k
        truncated = (self.rng.random(self.n) < self.p_truncate) & ~terminated
        rows = self._obs(ids)
        if g is not None:
            rows[g.achieved_field] = achieved
        act = self.spec.action
        if act.kind == "continuous":
            rows["action"] = self.rng.uniform(-1, 1, (self.n, *act.shape)).astype(np.float32)
        elif act.kind == "discrete":
            rows["action"] = self.rng.integers(0, act.n, self.n).astype(np.int32)
        else:
            rows["action"] = self.rng.integers(0, 2, (self.n, len(act.nvec))).astype(np.int32)
        rows["reward"] = reward
        rows["terminated"] = terminated
        rows["truncated"] = truncated
        return rows, np.nonzero(terminated | truncated)[0]


def drive(buffers, rollouts: GoalRollouts, steps: int, started: bool = False) -> None:
    """Stream ``steps`` vectorised steps into every buffer (next-step autoreset of ended envs)."""
    if not started:
        r0 = rollouts.reset_rows(np.arange(rollouts.n))
        for b in buffers:
            b.reset_envs(r0)
    for _ in range(steps):
        rows, done = rollouts.step_rows()
        for b in buffers:
            b.append_step(rows)
        if len(done):
            r0 = rollouts.reset_rows(done)
            for b in buffers:
                b.reset_envs(r0, done)
