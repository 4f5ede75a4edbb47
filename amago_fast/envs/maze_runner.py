"""Multi-goal MazeRunner-style gridworld with hindsight-relabelable instructions, NumPy-batched.

Mazes: at construction, `num_layouts` mazes of `maze_size` x `maze_size` cells (odd size; the
border is wall) are generated from the env seed: a depth-first-search perfect maze over the odd
cells, then each remaining interior wall between two open cells is knocked out with probability
`loop_prob` so there are several routes. Each episode draws one layout, a start cell and k
distinct goal cells (all open, none on the start), uniformly.

Actions: 0 = up (y+1), 1 = right (x+1), 2 = down, 3 = left; a move into a wall stays in place.

Observation fields:
  - ``observation`` float32 (11,): the 3 x 3 wall view around the agent (row-major over
    dx, dy in -1..1; 1 = wall) and the position / (maze_size - 1);
  - the :class:`~amago_fast.spaces.GoalSpec` fields: ``goal`` float32 (k, 2) the instruction
    (goal cells, to be reached in order), ``achieved`` float32 (2,) the current cell,
    ``goal_active`` int32 () the index of the goal pursued, ``goal_completed`` bool (k,).

Reward and termination follow *exactly* the GoalSpec rule (exact match, goal_reward 1): after
each move, if ``goal_active < k`` and ``achieved == goal[goal_active]`` the goal is completed,
reward 1 and ``goal_active += 1``; the episode terminates when ``goal_active == k``; it is
truncated after `episode_max_steps` steps. Goals are rarely met by chance: in the default 15 x 15
mazes a uniformly random policy completes the first goal in a small fraction of episodes and all
k = 3 almost never, which is what hindsight relabeling is for.
``info["success"]``: all k goals completed.
"""

from __future__ import annotations

import numpy as np

from amago_fast.envs.base import BatchedTaskEnv
from amago_fast.spaces import ActionSpec, FieldSpec, GoalSpec

_MOVES = np.array([[0, 1], [1, 0], [0, -1], [-1, 0]], np.int64)
_VIEW = np.array([(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1)], np.int64)


def generate_maze(size: int, rng: np.random.Generator, loop_prob: float) -> np.ndarray:
    """One maze as a (size, size) uint8 wall grid (1 = wall), open cells connected."""
    walls = np.ones((size, size), np.uint8)
    cells = [(x, y) for x in range(1, size - 1, 2) for y in range(1, size - 1, 2)]
    start = cells[int(rng.integers(len(cells)))]
    walls[start] = 0
    stack = [start]
    seen = {start}
    while stack:  # iterative DFS carving (runs once per layout at construction)
        x, y = stack[-1]
        nbrs = [
            (x + dx, y + dy)
            for dx, dy in ((0, 2), (2, 0), (0, -2), (-2, 0))
            if 0 < x + dx < size - 1 and 0 < y + dy < size - 1 and (x + dx, y + dy) not in seen
        ]
        if not nbrs:
            stack.pop()
            continue
        nx, ny = nbrs[int(rng.integers(len(nbrs)))]
        walls[(x + nx) // 2, (y + ny) // 2] = 0
        walls[nx, ny] = 0
        seen.add((nx, ny))
        stack.append((nx, ny))
    for x in range(1, size - 1):
        for y in range(1, size - 1):
            if walls[x, y] and (x + y) % 2 == 1:  # a wall between two odd cells
                horiz = x % 2 == 0 and walls[x - 1, y] == 0 and walls[x + 1, y] == 0
                vert = y % 2 == 0 and walls[x, y - 1] == 0 and walls[x, y + 1] == 0
                if (horiz or vert) and rng.random() < loop_prob:
                    walls[x, y] = 0
    return walls


class MazeRunner(BatchedTaskEnv):
    """Multi-goal maze navigation over `num_envs` envs (see the module docstring)."""

    # The layouts are part of the state: a run resumed into an env built with another seed
    # continues in the checkpoint's mazes.
    _state_fields = ("walls", "layout", "pos", "goals", "active_goal", "completed")

    def __init__(
        self,
        num_envs: int,
        num_goals: int = 3,
        maze_size: int = 15,
        episode_max_steps: int | None = None,
        num_layouts: int = 64,
        loop_prob: float = 0.1,
        seed: int = 0,
    ) -> None:
        if not isinstance(num_goals, (int, np.integer)) or num_goals < 1:
            raise ValueError(f"num_goals must be a positive integer, got {num_goals!r}")
        if not isinstance(maze_size, (int, np.integer)) or maze_size < 5 or maze_size % 2 == 0:
            raise ValueError(f"maze_size must be an odd integer >= 5, got {maze_size!r}")
        if num_layouts < 1:
            raise ValueError(f"num_layouts must be >= 1, got {num_layouts}")
        if not 0.0 <= loop_prob <= 1.0:
            raise ValueError(f"loop_prob must be in [0, 1], got {loop_prob}")
        self.k = int(num_goals)
        self.maze_size = int(maze_size)
        open_cells = ((self.maze_size - 1) // 2) ** 2
        if self.k + 1 > open_cells:
            raise ValueError(f"{num_goals} goals do not fit a {maze_size}x{maze_size} maze")
        if episode_max_steps is None:
            episode_max_steps = 50 * self.k
        super().__init__(num_envs, seed=seed, episode_max_steps=episode_max_steps)
        layout_rng = np.random.default_rng([seed, 0x4D415A45])
        self.walls = np.stack(
            [generate_maze(self.maze_size, layout_rng, loop_prob) for _ in range(num_layouts)]
        )
        self.free = [np.argwhere(w == 0) for w in self.walls]
        n = self.num_envs
        self.layout = np.zeros(n, np.int64)
        self.pos = np.zeros((n, 2), np.int64)
        self.goals = np.zeros((n, self.k, 2), np.int64)
        self.active_goal = np.zeros(n, np.int32)
        self.completed = np.zeros((n, self.k), np.bool_)
        self.goal_spec = GoalSpec(k=self.k, goal_dim=2, goal_dtype=np.float32, match="exact")
        self.spec = self._make_spec(
            "maze-runner",
            [FieldSpec("observation", (11,), np.float32), *self.goal_spec.fields()],
            ActionSpec("discrete", n=4),
            goals=self.goal_spec,
            extra={"maze_size": self.maze_size, "num_layouts": num_layouts},
        )

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self.free = [np.argwhere(w == 0) for w in self.walls]

    def _sample_tasks(self, idx: np.ndarray) -> None:
        pass  # every episode draws its own layout, start and goals in _reset_episodes

    def _reset_episodes(self, idx: np.ndarray) -> None:
        self.layout[idx] = self.rng.integers(0, len(self.walls), size=idx.size)
        for i in idx:  # per-episode draw of k+1 distinct cells: only at episode starts
            free = self.free[self.layout[i]]
            pick = self.rng.choice(len(free), size=self.k + 1, replace=False)
            self.pos[i] = free[pick[0]]
            self.goals[i] = free[pick[1:]]
        self.active_goal[idx] = 0
        self.completed[idx] = False

    def _transition(self, actions, active):
        target = self.pos + _MOVES[actions]
        blocked = self.walls[self.layout, target[:, 0], target[:, 1]].astype(bool)
        move = active & ~blocked
        self.pos = np.where(move[:, None], target, self.pos)
        # The GoalSpec rule, vectorized.
        k = self.k
        pursuing = active & (self.active_goal < k)
        gi = np.minimum(self.active_goal, k - 1).astype(np.int64)
        current_goal = self.goals[np.arange(self.num_envs), gi]
        hit = pursuing & (self.pos == current_goal).all(axis=1)
        rows = np.nonzero(hit)[0]
        self.completed[rows, gi[rows]] = True
        self.active_goal = self.active_goal + hit.astype(np.int32)
        reward = hit.astype(np.float32) * np.float32(self.goal_spec.goal_reward)
        terminated = active & (self.active_goal == k)
        return reward, terminated, terminated

    def _observe(self) -> dict[str, np.ndarray]:
        n = self.num_envs
        cells = self.pos[:, None, :] + _VIEW[None]
        view = self.walls[self.layout[:, None], cells[..., 0], cells[..., 1]]
        obs = np.empty((n, 11), np.float32)
        obs[:, :9] = view
        obs[:, 9:] = self.pos / np.float32(self.maze_size - 1)
        return {
            "observation": obs,
            "goal": self.goals.astype(np.float32),
            "achieved": self.pos.astype(np.float32),
            "goal_active": self.active_goal.copy(),
            "goal_completed": self.completed.copy(),
        }
