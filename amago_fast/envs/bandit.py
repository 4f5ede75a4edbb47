"""k-armed Bernoulli bandit as a meta-RL trial task, NumPy-batched.

A *task* is a vector of arm success probabilities p ~ U(0, 1)^k, drawn per trial and fixed for
the whole trial. An inner episode is `pulls_per_episode` pulls (default 1); each pull of arm a
pays 1 with probability p[a], else 0. A trial is `episodes_per_trial` episodes (default 10),
optionally also cut at `trial_max_steps` pulls.

The observation ``observation`` float32 (1,) is the fraction of the episode's pulls already made
(0 at an episode start): it carries no information about p, so good behaviour (explore early,
then pull the best arm) is only learnable across the episodes of a trial, from the previous
action/reward inputs. The trial adds ``episode_start`` (float32 (1,)).

``info["success"]`` at an episode end: the last pull was on an arm with the highest p.
"""

from __future__ import annotations

import numpy as np

from amago_fast.envs.base import BatchedTaskEnv
from amago_fast.spaces import ActionSpec, FieldSpec


class BanditTrials(BatchedTaskEnv):
    """k-armed Bernoulli bandit trials over `num_envs` envs (see the module docstring)."""

    _state_fields = ("probs",)

    def __init__(
        self,
        num_envs: int,
        num_arms: int = 5,
        pulls_per_episode: int = 1,
        episodes_per_trial: int = 10,
        seed: int = 0,
        trial_max_steps: int | None = None,
    ) -> None:
        if not isinstance(num_arms, (int, np.integer)) or num_arms < 2:
            raise ValueError(f"num_arms must be an integer >= 2, got {num_arms!r}")
        if not isinstance(pulls_per_episode, (int, np.integer)) or pulls_per_episode < 1:
            raise ValueError(
                f"pulls_per_episode must be a positive integer, got {pulls_per_episode!r}"
            )
        if episodes_per_trial is None or episodes_per_trial < 2:
            raise ValueError(
                f"a bandit trial needs episodes_per_trial >= 2, got {episodes_per_trial!r}"
            )
        super().__init__(
            num_envs,
            seed=seed,
            episode_max_steps=int(pulls_per_episode),
            episodes_per_trial=int(episodes_per_trial),
            trial_max_steps=trial_max_steps,
        )
        self.num_arms = int(num_arms)
        self.pulls_per_episode = int(pulls_per_episode)
        self.probs = np.zeros((self.num_envs, self.num_arms), np.float64)
        self.spec = self._make_spec(
            "bandit",
            [FieldSpec("observation", (1,), np.float32)],
            ActionSpec("discrete", n=self.num_arms),
            extra={"num_arms": self.num_arms, "pulls_per_episode": self.pulls_per_episode},
        )

    def _sample_tasks(self, idx: np.ndarray) -> None:
        self.probs[idx] = self.rng.random((idx.size, self.num_arms))

    def _reset_episodes(self, idx: np.ndarray) -> None:
        pass  # a bandit episode has no state besides its step count (kept by the base)

    def _transition(self, actions, active):
        p = np.take_along_axis(self.probs, actions[:, None].astype(np.int64), axis=1)[:, 0]
        u = self.rng.random(self.num_envs)
        reward = (u < p).astype(np.float32)
        best = p >= self.probs.max(axis=1)
        # The episode ends after its last pull; the base marks it truncated at
        # episode_max_steps, but for a bandit running out of pulls is the episode's natural end.
        last = self.ep_t >= self.pulls_per_episode
        return reward, last, best

    def _observe(self) -> dict[str, np.ndarray]:
        frac = (self.ep_t / np.float32(self.pulls_per_episode)).astype(np.float32)
        return {"observation": frac[:, None]}
