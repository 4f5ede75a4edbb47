"""Actuator-subset inversion on EnvPool tasks (``actinv-*``): our own variant, NOT the AIB.

The published Actuator Inversion Benchmark lives in :mod:`amago_fast.envs.aib` (``aib-*``
names). This variant stays because it runs on EnvPool's compiled tasks at EnvPool speed (no
physics changes) and draws a fresh hidden context every episode instead of fixing one per slot:
a quick in-context-adaptation check on MuJoCo tasks without dm_control.

Every episode of every env gets a latent context that is never observed: a binary flag
``b ~ Bernoulli(invert_prob)`` (default 0.5) and, when b = 1, a subset S of the d actuators whose
commands are sign-flipped (a_j -> -a_j for j in S) before they reach the simulator, and a gain g
that scales the flipped commands (a_j -> -g a_j). The same action therefore has opposite effects
depending on the hidden context, which the agent must infer from its recent history.

How contexts are drawn (per env, at each of its episode starts, detected from the next-step
autoreset: the step on which an env returns the first observation of a new episode):

- Actuator subsets. All non-empty subsets of {0..d-1} are split by whether they contain
  actuator 0: *train subsets* contain it (for d = 1 that is the single subset {0}), *held-out
  subsets* do not.
- ``split="train"`` and ``split="eval-in"``: b ~ Bernoulli(invert_prob); if b, S uniform over the
  train subsets (with ``subsets="all"``: S = every actuator); g = 1. eval-in differs from train only
  by its seed stream (same distribution, fresh episodes).
- ``split="eval-out"``: b = 1 always (every episode is out of distribution);
  for d >= 2, S uniform over the held-out subsets, g = 1; for d = 1 (Cartpole) there is no
  held-out subset, so S = {0} with a held-out gain g ~ U(0.4, 0.7) (weaker, inverted actuator —
  an actuator-strength range never seen in training).

Tasks (``make_env`` names): actinv-ballincup = BallInCupCatch-v1 (d=2),
actinv-walker = WalkerWalk-v1 (d=6), actinv-cartpole = CartpoleSwingup-v1 (d=1) — the
dm_control tasks of EnvPool — and actinv-hopper = EnvPool's Hopper-v5 (d=3): EnvPool's C++ port
of the MuJoCo Hopper of gym/gymnasium, not gymnasium's own env; ``version="v3"``/``"v4"`` picks
EnvPool's Hopper-v3/-v4 (same 11-d observation, 3 actuators, 1000-step limit). gymnasium's MuJoCo
Hopper needs the ``mujoco`` package, which is not a dependency here. The wrapped env's ``info``
gains ``inverted`` (b for the envs of the batch) so a caller stepping the env can split returns
by context; the collector's statistics do not (evaluate each split as its own env instead:
``env.eval_kwargs`` / ``amago-fast eval --env-kwargs '{"split": ...}'``).

Resume. EnvPool envs cannot be snapshotted, so a restore restarts them with ``reset()``; what is
kept is the context RNG (``rng_state_dict()`` / ``load_rng_state_dict()``; ``state_dict()`` /
``load_state_dict()`` hold the same). Contract: the state holds the whole RNG that draws
contexts, so after ``B.load_rng_state_dict(A.rng_state_dict())`` env B draws exactly the
contexts A would draw from that point on, given the same draws in the same order (the same
envs starting episodes in the same order). In particular, for two sync envs with the same
``num_envs`` (and split, invert_prob, subsets — checked on load): ``A.reset()`` and
``B.reset()`` after the save point draw equal contexts for every env, and as long as episodes
start on the same steps (e.g. time-limit-only episodes, or the same seed and actions) every
later context is equal too. So a resumed run never replays the context sequence from its
start; it continues it as a run that had called ``reset()`` at the checkpoint would. Not kept:
the contexts of the episodes open at the checkpoint (the restart abandons them) and the
simulator state. Async pools: EnvPool's batch order is not deterministic, so the stream
continues but which env gets which context may differ.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from amago_fast.envs.base import VectorEnv, check_actions, check_env_ids
from amago_fast.envs.envpool_env import EnvPoolEnv

ACTINV_TASKS = {
    "actinv-ballincup": "BallInCupCatch-v1",
    "actinv-walker": "WalkerWalk-v1",
    "actinv-cartpole": "CartpoleSwingup-v1",
    "actinv-hopper": "Hopper-v5",
}
SPLITS = ("train", "eval-in", "eval-out")
EVAL_OUT_GAIN = (0.4, 0.7)


def actuator_subsets(d: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held_out) subsets of d actuators as boolean masks (num_subsets, d)."""
    all_subsets = [
        np.array([j in c for j in range(d)])
        for r in range(1, d + 1)
        for c in itertools.combinations(range(d), r)
    ]
    train = np.array([s for s in all_subsets if s[0]], dtype=np.bool_)
    held = np.array([s for s in all_subsets if not s[0]], dtype=np.bool_).reshape(-1, d)
    return train, held


class ActuatorInversionEnv(VectorEnv):
    """Wraps a continuous-action VectorEnv with hidden per-episode actuator inversion."""

    def __init__(
        self,
        env: VectorEnv,
        split: str = "train",
        invert_prob: float = 0.5,
        subsets: str = "split",
        seed: int = 0,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if subsets not in ("split", "all"):
            raise ValueError(f"subsets must be 'split' or 'all', got {subsets!r}")
        if not 0.0 <= invert_prob <= 1.0:
            raise ValueError(f"invert_prob must be in [0, 1], got {invert_prob}")
        if env.spec.action.kind != "continuous":
            raise ValueError(f"actuator inversion needs continuous actions, {env.spec.name} has "
                             f"{env.spec.action.kind}")
        self.env = env
        self.split = split
        self.invert_prob = float(invert_prob)
        self.subsets = subsets
        self.num_envs = env.num_envs
        self.is_async = env.is_async
        d = env.spec.action.shape[0]
        self.d = d
        train, held = actuator_subsets(d)
        if subsets == "all":
            train = np.ones((1, d), np.bool_)
        self.train_subsets, self.heldout_subsets = train, held
        # eval-in uses a different stream than train for the same seed.
        stream = {"train": 0, "eval-in": 1, "eval-out": 2}[split]
        self.rng = np.random.default_rng([seed, 0x414942, stream])
        self.sign = np.ones((self.num_envs, d), np.float32)  # per-env action multiplier
        self.inverted = np.zeros(self.num_envs, np.bool_)
        self._episode_over = np.ones(self.num_envs, np.bool_)
        base = env.spec
        self.spec = type(base)(
            base.name + f"[inv:{split}]",
            base.observation,
            base.action,
            goals=base.goals,
            max_episode_steps=base.max_episode_steps,
            extra={**base.extra, "actuator_inversion": split},
        )
        self.last_env_ids = getattr(env, "last_env_ids", None)

    @property
    def batch_size(self) -> int:
        return self.env.batch_size

    def _draw_contexts(self, ids: np.ndarray) -> None:
        n = ids.size
        if n == 0:
            return
        if self.split == "eval-out":
            b = np.ones(n, np.bool_)
            if len(self.heldout_subsets):
                s = self.heldout_subsets[self.rng.integers(len(self.heldout_subsets), size=n)]
                gain = np.ones(n, np.float32)
            else:
                s = np.ones((n, self.d), np.bool_)
                gain = self.rng.uniform(*EVAL_OUT_GAIN, size=n).astype(np.float32)
        else:
            b = self.rng.random(n) < self.invert_prob
            s = self.train_subsets[self.rng.integers(len(self.train_subsets), size=n)]
            gain = np.ones(n, np.float32)
        flip = s & b[:, None]
        self.sign[ids] = np.where(flip, -gain[:, None], 1.0).astype(np.float32)
        self.inverted[ids] = b

    def _after(self, ids: np.ndarray, term: np.ndarray, trunc: np.ndarray) -> None:
        self._episode_over[ids] = term | trunc

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        obs = self.env.reset(seed)
        ids = np.arange(self.num_envs)
        if self.is_async:
            ids = np.asarray(self.env.last_env_ids)
            self._episode_over[:] = True  # envs not in the first batch start when they appear
        self._draw_contexts(ids)
        self._episode_over[ids] = False
        self.last_env_ids = getattr(self.env, "last_env_ids", None)
        return obs

    def step(self, actions, env_ids=None):
        ids = check_env_ids(self, env_ids)  # async: exactly the last batch, each once
        actions = check_actions(self.spec.action, actions, ids.size, self.spec.name,
                                check_bounds=True)
        low = np.asarray(self.spec.action.low, np.float32)
        high = np.asarray(self.spec.action.high, np.float32)
        # Flip about the centre of the bounds (0 for the symmetric [-1, 1] boxes used here).
        centre = (low + high) / 2
        applied = np.clip(centre + (actions - centre) * self.sign[ids], low, high)
        obs, reward, term, trunc, info = self.env.step(applied, env_ids)
        out_ids = np.asarray(info["env_id"]) if self.is_async else np.arange(self.num_envs)
        # An env whose previous step ended its episode has just been autoreset: new context.
        starts = out_ids[self._episode_over[out_ids]]
        self._draw_contexts(starts)
        self._after(out_ids, term, trunc)
        info = dict(info)
        info["inverted"] = self.inverted[out_ids].copy()
        self.last_env_ids = getattr(self.env, "last_env_ids", None)
        return obs, reward, term, trunc, info

    def close(self) -> None:
        self.env.close()

    # ---------------------------------------------------------------- resume (context RNG only)
    _RNG_FORMAT = "aib-context-rng/1"

    def _rng_config(self) -> dict[str, Any]:
        return {"split": self.split, "d": int(self.d), "invert_prob": self.invert_prob,
                "subsets": self.subsets}

    def rng_state_dict(self) -> dict[str, Any]:
        """Everything that drives future context draws: the context RNG's state, plus the
        configuration it belongs to (checked by `load_rng_state_dict`). Plain Python types only
        (str, int, float, dicts): JSON- and pickle-safe; a copy, not a view of the live RNG."""
        st = self.rng.bit_generator.state
        return {
            "format": self._RNG_FORMAT,
            **self._rng_config(),
            "num_envs": int(self.num_envs),
            "bit_generator": {
                "bit_generator": str(st["bit_generator"]),
                "state": {"state": int(st["state"]["state"]), "inc": int(st["state"]["inc"])},
                "has_uint32": int(st["has_uint32"]),
                "uinteger": int(st["uinteger"]),
            },
        }

    def load_rng_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `rng_state_dict()` (see the module docstring for what is reproduced; call
        ``reset()`` next, as the collector does after a restore). A dict of another split,
        action size, invert_prob or subsets mode, or a malformed one, raises ValueError and
        leaves the env unchanged. ``num_envs`` may differ (the stream continues, but the contexts
        of n envs are drawn together, so they equal the original's only for the same n)."""
        rng = self._rng_from_state(state)
        self.rng = rng

    def _rng_from_state(self, state: Any) -> np.random.Generator:
        if not isinstance(state, dict):
            raise ValueError(f"actuator-inversion RNG state must be a dict, got {type(state)}")
        if state.get("format") != self._RNG_FORMAT:
            raise ValueError(f"not an actuator-inversion RNG state (format "
                             f"{state.get('format')!r}, expected {self._RNG_FORMAT!r})")
        for key, want in self._rng_config().items():
            if key not in state or state[key] != want:
                raise ValueError(f"actuator-inversion RNG state is for {key}={state.get(key)!r}, "
                                 f"this env has {key}={want!r}")
        return _generator_from_state(state.get("bit_generator"),
                                     type(self.rng.bit_generator).__name__)

    def state_dict(self) -> dict[str, Any]:
        """Same as `rng_state_dict` (the EnvPool envs themselves restart on resume)."""
        return self.rng_state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """`load_rng_state_dict`; also reads the older ``{"rng", "split"}`` form."""
        if isinstance(state, dict) and "format" not in state and set(state) == {"rng", "split"}:
            if state["split"] != self.split:
                raise ValueError(f"state is for split {state['split']!r}, env is {self.split!r}")
            self.rng = _generator_from_state(state["rng"], type(self.rng.bit_generator).__name__)
            return
        self.load_rng_state_dict(state)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _generator_from_state(st: Any, name: str) -> np.random.Generator:
    """A new Generator with bit-generator state `st` (validated: numpy itself accepts floats and
    truncates them)."""
    bad = ValueError(f"corrupt {name} state in the actuator-inversion RNG state: {st!r}")
    if (not isinstance(st, dict) or set(st) != {"bit_generator", "state", "has_uint32", "uinteger"}
            or st["bit_generator"] != name or not isinstance(st["state"], dict)):
        raise bad
    if name == "PCG64":
        inner = st["state"]
        if set(inner) != {"state", "inc"} or not all(_is_int(v) for v in inner.values()):
            raise bad
        if not all(0 <= int(v) < 2**128 for v in inner.values()) or int(inner["inc"]) % 2 == 0:
            raise bad
        if not (_is_int(st["has_uint32"]) and int(st["has_uint32"]) in (0, 1)
                and _is_int(st["uinteger"]) and 0 <= int(st["uinteger"]) < 2**32):
            raise bad
    bit_gen = getattr(np.random, name)()
    try:
        import copy

        bit_gen.state = copy.deepcopy(st)
    except (TypeError, ValueError, KeyError, OverflowError) as e:
        raise bad from e
    return np.random.Generator(bit_gen)


HOPPER_VERSIONS = ("v3", "v4", "v5")  # EnvPool 1.2.5's Hopper-v3/-v4/-v5


def make_actinv_env(
    name: str, num_envs: int, seed: int = 0, split: str = "train", batch_size: int | None = None,
    version: str | None = None, **kwargs: Any,
) -> ActuatorInversionEnv:
    """One of the AIB tasks (`ACTINV_TASKS`) on EnvPool with actuator inversion.

    ``version`` (actinv-hopper only): ``"v3"``, ``"v4"`` or ``"v5"`` (default, = `ACTINV_TASKS`)."""
    if name not in ACTINV_TASKS:
        raise ValueError(f"unknown AIB task {name!r}; valid: {sorted(ACTINV_TASKS)}")
    task = ACTINV_TASKS[name]
    if version is not None:
        if name != "actinv-hopper":
            raise ValueError(f"{name}: version= applies to actinv-hopper only ({name} is {task})")
        if version not in HOPPER_VERSIONS:
            raise ValueError(f"actinv-hopper: version must be one of {HOPPER_VERSIONS}, "
                             f"got {version!r}")
        task = f"Hopper-{version}"
    base = EnvPoolEnv(task, num_envs, seed=seed, batch_size=batch_size, name=name)
    return ActuatorInversionEnv(base, split=split, seed=seed, **kwargs)
