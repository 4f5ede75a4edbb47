"""Dark Key-To-Door (meta-RL), NumPy-batched.

A `room_size` x `room_size` room. A *task* is a (key, door) pair of distinct cells, drawn
uniformly per trial (never on the start cell) and fixed for the whole trial. Each inner episode
starts with the agent at the start cell (the room's centre) without the key. Actions: 0 = up,
1 = right, 2 = down, 3 = left, 4 = stay (moves into walls leave the agent in place).

The room is *dark*: the observation ``observation`` float32 (4,) is only
``[x / (S-1), y / (S-1), t_episode / H, has_key]`` — no key or door positions — so the layout can
only be learned from earlier episodes of the same trial.

Reward: +1 the first time the agent steps on the key in an episode; +1 when it then steps on the
door (the door does nothing without the key), which ends the inner episode (terminated). Inner
episodes are also cut at `episode_max_steps` steps. The default trial (AMAGO's / Algorithm
Distillation's setting as we use it): 9 x 9 room, inner episodes of at most 50 steps, the trial
lasts `trial_max_steps` = 500 steps (as many episodes as fit; truncated at step 500).
A perfect agent that knows the layout scores 2 per episode; AMAGO reports ~38-40 per trial.
``info["success"]``: the inner episode reached the door with the key.
"""

from __future__ import annotations

import numpy as np

from amago_fast.envs.base import BatchedTaskEnv
from amago_fast.spaces import ActionSpec, FieldSpec

_MOVES = np.array([[0, 1], [1, 0], [0, -1], [-1, 0], [0, 0]], np.int64)


class DarkKeyToDoor(BatchedTaskEnv):
    """Dark Key-To-Door over `num_envs` envs (see the module docstring)."""

    _state_fields = ("key", "door", "pos", "has_key")

    def __init__(
        self,
        num_envs: int,
        room_size: int = 9,
        episode_max_steps: int = 50,
        trial_max_steps: int | None = 500,
        episodes_per_trial: int | None = None,
        seed: int = 0,
    ) -> None:
        if not isinstance(room_size, (int, np.integer)) or room_size < 3:
            raise ValueError(f"room_size must be an integer >= 3, got {room_size!r}")
        super().__init__(
            num_envs,
            seed=seed,
            episode_max_steps=episode_max_steps,
            episodes_per_trial=episodes_per_trial,
            trial_max_steps=trial_max_steps,
        )
        self.room_size = int(room_size)
        n = self.num_envs
        self.start = np.array([self.room_size // 2, self.room_size // 2], np.int64)
        self.key = np.zeros((n, 2), np.int64)
        self.door = np.zeros((n, 2), np.int64)
        self.pos = np.zeros((n, 2), np.int64)
        self.has_key = np.zeros(n, np.bool_)
        self.spec = self._make_spec(
            "key-to-door",
            [FieldSpec("observation", (4,), np.float32)],
            ActionSpec("discrete", n=5),
            extra={"room_size": self.room_size},
        )

    def _sample_tasks(self, idx: np.ndarray) -> None:
        s = self.room_size
        cells = s * s
        start_cell = self.start[0] * s + self.start[1]
        # Two distinct cells out of the cells other than the start: draw from [0, cells-1) and
        # skip the start cell; the second draw skips the first too.
        a = self.rng.integers(0, cells - 1, size=idx.size)
        a = a + (a >= start_cell)
        b = self.rng.integers(0, cells - 2, size=idx.size)
        lo, hi = np.minimum(a, start_cell), np.maximum(a, start_cell)
        b = b + (b >= lo)
        b = b + (b >= hi)
        self.key[idx] = np.stack([a // s, a % s], axis=1)
        self.door[idx] = np.stack([b // s, b % s], axis=1)

    def _reset_episodes(self, idx: np.ndarray) -> None:
        self.pos[idx] = self.start
        self.has_key[idx] = False

    def _transition(self, actions, active):
        new_pos = np.clip(self.pos + _MOVES[actions], 0, self.room_size - 1)
        self.pos = np.where(active[:, None], new_pos, self.pos)
        on_key = (self.pos == self.key).all(axis=1) & ~self.has_key & active
        on_door = (self.pos == self.door).all(axis=1) & self.has_key & active
        self.has_key = self.has_key | on_key
        reward = (on_key.astype(np.float32) + on_door.astype(np.float32)).astype(np.float32)
        return reward, on_door, on_door

    def _observe(self) -> dict[str, np.ndarray]:
        s1 = np.float32(self.room_size - 1)
        obs = np.empty((self.num_envs, 4), np.float32)
        obs[:, 0] = self.pos[:, 0] / s1
        obs[:, 1] = self.pos[:, 1] / s1
        obs[:, 2] = self.ep_t / np.float32(self.episode_max_steps)
        obs[:, 3] = self.has_key
        return {"observation": obs}
