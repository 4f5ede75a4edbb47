"""Passive and active T-Maze (Ni et al. 2023, "When do Transformers shine in RL?"), NumPy-batched.

Layout: a corridor of cells x = 0..H (H = `corridor_length`), the junction at x = H, two arms at
(H, +1) ("up") and (H, -1) ("down"). A cue c in {+1, -1}, drawn uniformly per episode, names the
rewarded arm. Actions: 0 = right (x+1), 1 = up, 2 = left (x-1), 3 = down. Moves into walls leave
the agent where it is (left at x = 0, right at the junction, up/down anywhere in the corridor).
Up/down at the junction enter the arm y = +1 / -1.

Observation ``observation`` float32 (2,), the "ambiguous position" encoding of Ni et al.'s code:
  - ``[0, c]`` where the cue is shown (passive: only at t = 0, at x = 0; active: whenever the
    agent stands on the oracle cell x = 0),
  - ``[1, y]`` at the junction (y = 0 there, +-1 once in an arm),
  - ``[0, 0]`` everywhere else in the corridor.
The three kinds never coincide: the cue is in the second entry with a 0 first entry, so the cue
+1 ``[0, 1]`` differs from the junction ``[1, 0]`` (a cue in the first entry, ``[c, 0]``, would
make the cue +1 look exactly like the junction).

Rewards: -1/H for every action other than "right" taken while in the corridor (x < H); at the
last step of the episode +1 if the agent stands in the cued arm. Optimal return = 1.0, reached by
going right H times and then taking the cued turn.

- **Passive** (``tmaze-passive``): the agent starts on the oracle cell x = 0 and sees the cue at
  t = 0 only. Episode length H + 1 (terminated at the last step).
- **Active** (``tmaze-active``, our exact variant): the agent starts at x = 1 seeing [0, 0]; the
  cue is visible only while standing on the oracle cell x = 0, so it must first step left. That
  one left step (1 -> 0) is not penalized, any other non-right corridor action is. Episode length
  H + 2 (one step back, H steps right, one turn).

``info["success"]`` at the final step: the agent stands in the cued arm.
"""

from __future__ import annotations

import numpy as np

from amago_fast.envs.base import BatchedTaskEnv
from amago_fast.spaces import ActionSpec, FieldSpec

RIGHT, UP, LEFT, DOWN = 0, 1, 2, 3


class TMaze(BatchedTaskEnv):
    """Passive or active T-Maze over `num_envs` envs (see the module docstring)."""

    _state_fields = ("cue", "x", "y")

    def __init__(
        self,
        num_envs: int,
        corridor_length: int = 50,
        active: bool = False,
        seed: int = 0,
        episodes_per_trial: int | None = 1,
        trial_max_steps: int | None = None,
    ) -> None:
        if not isinstance(corridor_length, (int, np.integer)) or corridor_length < 1:
            raise ValueError(f"corridor_length must be a positive integer, got {corridor_length!r}")
        self.corridor_length = int(corridor_length)
        self.active = bool(active)
        horizon = self.corridor_length + (2 if self.active else 1)
        super().__init__(
            num_envs,
            seed=seed,
            episode_max_steps=horizon,
            episodes_per_trial=episodes_per_trial,
            trial_max_steps=trial_max_steps,
        )
        self.horizon = horizon
        n = self.num_envs
        self.cue = np.ones(n, np.float32)
        self.x = np.zeros(n, np.int64)
        self.y = np.zeros(n, np.int64)
        name = "tmaze-active" if self.active else "tmaze-passive"
        self.spec = self._make_spec(
            name,
            [FieldSpec("observation", (2,), np.float32)],
            ActionSpec("discrete", n=4),
            extra={"corridor_length": self.corridor_length},
        )

    def _sample_tasks(self, idx: np.ndarray) -> None:
        self.cue[idx] = np.where(self.rng.random(idx.size) < 0.5, 1.0, -1.0)

    def _reset_episodes(self, idx: np.ndarray) -> None:
        self.x[idx] = 1 if self.active else 0
        self.y[idx] = 0

    def _transition(self, actions, active):
        h = self.corridor_length
        a = actions
        in_corridor = self.x < h
        penalized = in_corridor & (a != RIGHT)
        if self.active:
            penalized &= ~((a == LEFT) & (self.x == 1))
        reward = np.where(penalized, np.float32(-1.0 / h), np.float32(0.0)).astype(np.float32)
        at_junction = (self.x == h) & (self.y == 0)
        dx = np.where(a == RIGHT, 1, np.where(a == LEFT, -1, 0))
        dx = np.where(at_junction | (self.y != 0), 0, dx)
        new_x = np.clip(self.x + dx, 0, h)
        dy = np.where(at_junction & (a == UP), 1, np.where(at_junction & (a == DOWN), -1, 0))
        self.x = np.where(active, new_x, self.x)
        self.y = np.where(active, self.y + dy, self.y)
        last = self.ep_t >= self.horizon
        success = last & (self.y == self.cue)
        reward = reward + np.where(success, np.float32(1.0), np.float32(0.0))
        return reward.astype(np.float32), last, success

    def _observe(self) -> dict[str, np.ndarray]:
        n = self.num_envs
        obs = np.zeros((n, 2), np.float32)
        if self.active:
            show_cue = self.x == 0
        else:
            show_cue = (self.x == 0) & (self.ep_t == 0)
        junction = self.x == self.corridor_length
        obs[:, 0] = junction
        obs[:, 1] = np.where(junction, self.y, np.where(show_cue, self.cue, 0.0))
        return {"observation": obs}
