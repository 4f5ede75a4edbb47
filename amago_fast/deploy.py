"""Load a trained agent and act with it: :func:`load_agent` and :class:`DeployedPolicy`.

    policy = amago_fast.load_agent("runs/tmaze", device="cpu")
    policy.reset(num_envs=8)
    obs = env.reset()
    reward = done = None
    while ...:
        actions = policy.act(obs, reward, done)        # greedy; sample=True to sample
        obs, reward, term, trunc, info = env.step(actions)
        done = term | trunc

AMAGO's policy reads, at every step, the observation *and* the previous action, the previous
reward and the step's position in the rollout, and keeps a KV cache of the rollout so far
(``Agent.act`` takes those rows and that cache explicitly: the collector builds them). A
deployed policy keeps all of it itself, per env: after :meth:`DeployedPolicy.reset` (or an env
flagged ``done``) the next observation of that env opens a new rollout (memory cleared, time
index 0, previous action and reward zero); every other call continues it with the reward the
caller passes (the reward received on arriving at ``obs``). This is the next-step autoreset of
EnvPool and gymnasium 1.x vector envs (``done`` marks the final observation; the action
returned for it is ignored by the env) and equally a single env reset by hand after ``done``.
For envs that return the first observation of the next episode together with ``done``
(SB3's ``VecEnv``, gymnasium's same-step autoreset) pass ``episode_start`` instead (SB3's
``predict(obs, state, episode_start)`` flag): those rows open a new rollout at once.

Inputs: a dict keyed by the run's observation fields (what an amago_fast ``VectorEnv``
returns), a bare array when the run has a single observation field, or — with
``load_agent(..., observation_space=space)`` for a run trained on a gymnasium env — the raw
gymnasium observation, converted by the same code the gymnasium adapter trains with
(one-hot Discrete entries, Dict/Tuple fields, ignored/flattened keys from the run's
``env.kwargs``); discrete actions then come back with the space's ``start`` added. Arrays
carry a leading env dimension; with ``num_envs=1`` it may be left out (a single env's
observation), and the action comes back without it too.

Weights are read from the checkpoint's ``learner.pt`` by the checkpoint module's code-free
loader (``torch.load(weights_only=True)``: nothing read from disk runs code) and only the
online agent's tensors are kept; the
agent's architecture comes from the run's ``config.json`` and its observation/action spec from
``env_spec.json`` (written by the trainer; runs without one build their env once to read it).
"""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from amago_fast.spaces import ACTION, REWARD, EnvSpec

__all__ = ["DeployedPolicy", "load_agent", "resolve_checkpoint", "load_agent_weights"]

_CKPT_NAME = re.compile(r"^ckpt-\d{12}$")


def resolve_checkpoint(run_dir: str | os.PathLike, checkpoint: str | int = "latest") -> Path:
    """The complete checkpoint directory of a run that `checkpoint` names: ``"latest"`` (the
    newest complete one), an env-step count (int) or a directory name ``ckpt-<12 digits>``.
    Names are looked up inside ``<run_dir>/checkpoints`` only (no paths: nothing outside the
    run is read); FileNotFoundError / ValueError say which and why."""
    from amago_fast import checkpoint as ckpt

    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir} has no config.json (not a run directory)")
    if checkpoint == "latest":
        path = ckpt.latest_checkpoint(run_dir)
        if path is None:
            raise FileNotFoundError(f"{run_dir} has no complete checkpoint")
        return path
    if isinstance(checkpoint, (int, np.integer)) and not isinstance(checkpoint, bool):
        if checkpoint < 0:
            raise ValueError(f"checkpoint step must be >= 0, got {checkpoint}")
        name = f"ckpt-{int(checkpoint):012d}"
    elif isinstance(checkpoint, str) and _CKPT_NAME.match(checkpoint):
        name = checkpoint
    else:
        raise ValueError(f"checkpoint must be 'latest', an env-step count or a name "
                         f"'ckpt-<12 digits>', got {checkpoint!r}")
    path = ckpt.checkpoint_root(run_dir) / name
    if not path.is_dir():
        have = sorted(p.name for p in ckpt.checkpoint_root(run_dir).glob("ckpt-*"))
        raise FileNotFoundError(f"{run_dir}: no checkpoint {name} (have {have})")
    ckpt.verify_checkpoint(path)
    return path


def load_agent_weights(checkpoint_dir: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The online agent's tensors (``Agent.state_dict()`` keys) from a checkpoint's
    ``learner.pt``, read by :func:`amago_fast.checkpoint.load_object` (``torch.load`` with
    ``weights_only=True``: nothing in the file runs). The optimizer, target networks and RNG
    states in the same file are dropped (and no global RNG is touched)."""
    from amago_fast import checkpoint as ckpt

    path = Path(checkpoint_dir) / "learner.pt"
    try:
        model = ckpt.load_object(path)["learner"]["loss_module"]
    except ckpt.CheckpointError as e:
        raise ValueError(f"cannot read the agent's weights: {e}") from None
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a learner checkpoint (no {e})") from None
    if not isinstance(model, dict):
        raise ValueError(f"{path}: not a learner checkpoint (loss_module is not a dict)")
    prefix = "agent."
    return {k[len(prefix):]: v for k, v in model.items()
            if k.startswith(prefix) and isinstance(v, torch.Tensor)}


def _run_spec(run_dir: Path, cfg: Any) -> EnvSpec:
    """The run's EnvSpec: its env_spec.json, else (runs written before the trainer stored it)
    one env built from the config and closed again."""
    from amago_fast.spec_io import SPEC_FILE, load_spec

    if (run_dir / SPEC_FILE).is_file():
        return load_spec(run_dir / SPEC_FILE)
    from amago_fast.envs import make_env
    from amago_fast.trainer import eval_env_kwargs

    for mod in cfg.env.import_modules:
        importlib.import_module(mod)
    env = make_env(cfg.env.name, 1, seed=0, **eval_env_kwargs(cfg))
    try:
        return env.spec
    finally:
        env.close()


def load_agent(
    run_dir: str | os.PathLike,
    checkpoint: str | int = "latest",
    device: str | torch.device = "cpu",
    *,
    observation_space: Any = None,
    action_space: Any = None,
) -> DeployedPolicy:
    """A trained agent from a run directory, ready to act (see the module docstring).

    Args:
      run_dir: a directory written by ``amago-fast train`` / :class:`amago_fast.Trainer`.
      checkpoint: ``"latest"``, an env-step count or a ``ckpt-<12 digits>`` name.
      device: where the agent runs (``"cpu"``: the native C++ step when supported; ``"cuda"``).
      observation_space: a gymnasium single-env observation space, for runs trained through
        the gymnasium adapter: ``act`` then takes that env's raw observations.
      action_space: the gymnasium single-env action space (its Discrete ``start`` is added to
        the returned actions); defaults to none (0-based actions).
    """
    from amago_fast.agent import Agent
    from amago_fast.config import load_config
    from amago_fast.trainer import resolve_device

    run_dir = Path(run_dir)
    path = resolve_checkpoint(run_dir, checkpoint)
    cfg = load_config(run_dir / "config.json")
    spec = _run_spec(run_dir, cfg)
    weights = load_agent_weights(path)
    agent = Agent(spec, cfg.agent)
    own = agent.state_dict()
    if set(own) != set(weights):
        diff = sorted(set(own) ^ set(weights))[:5]
        raise ValueError(f"{path}: the checkpoint's agent does not fit the run's config "
                         f"(tensors differ, e.g. {diff})")
    for k, v in own.items():
        if tuple(v.shape) != tuple(weights[k].shape):
            raise ValueError(f"{path}: tensor {k!r} has shape {tuple(weights[k].shape)}, the "
                             f"run's config builds {tuple(v.shape)}")
    agent.load_state_dict(weights)
    agent.eval().requires_grad_(False)
    agent = agent.to(resolve_device(str(device)))
    converter = None
    if observation_space is not None:
        from amago_fast.envs.gym_adapter import observation_fields

        opts = {k: cfg.env.kwargs[k] for k in ("ignore_keys", "flatten_keys", "discrete_obs")
                if k in cfg.env.kwargs}
        fields, converter = observation_fields(observation_space, spec.name, **opts)
        if tuple(fields) != tuple(spec.observation):
            def show(fs):
                return [(f.name, f.shape, str(f.dtype)) for f in fs]

            raise ValueError(f"observation_space {observation_space!r} gives fields "
                             f"{show(fields)}, the run stored {show(spec.observation)}")
    start = None
    if action_space is not None:
        from amago_fast.envs.gym_adapter import action_spec_from_space, action_start

        if action_spec_from_space(action_space, spec.name) != spec.action:
            raise ValueError(f"action_space {action_space!r} is not the run's action space "
                             f"{spec.action}")
        start = action_start(action_space)
    return DeployedPolicy(agent, observation_space=observation_space, converter=converter,
                          action_start=start,
                          checkpoint=path, config=cfg)


class DeployedPolicy:
    """An :class:`~amago_fast.agent.Agent` with its rollout bookkeeping inside (see the module
    docstring): ``reset(num_envs)``, then ``act(obs, reward, done)`` once per env step.

    Built by :func:`load_agent`, or directly around an Agent in memory (e.g. a trainer's
    ``trainer.agent``: the policy reads its current weights on every call).
    """

    def __init__(self, agent: Any, *, observation_space: Any = None, converter: Any = None,
                 action_start: Any = None, checkpoint: Path | None = None,
                 config: Any = None) -> None:
        self.agent = agent
        self.spec: EnvSpec = agent.spec
        self.checkpoint = checkpoint
        """The checkpoint directory the weights came from (None: built from an Agent)."""
        self.config = config
        """The run's TrainConfig (None: built from an Agent)."""
        if (converter is None) != (observation_space is None):
            raise ValueError("observation_space and converter come together")
        self._obs_space, self._converter = observation_space, converter
        self._action_start = None if action_start is None else np.asarray(action_start)
        self._fields = {f.name: f for f in self.spec.observation}
        act = self.spec.action.field
        self._act_shape, self._act_dtype = tuple(act.shape), np.dtype(act.dtype)
        self._state: Any = None
        self.num_envs = 0

    # ------------------------------------------------------------------------------ state
    def reset(self, num_envs: int = 1) -> None:
        """Forget every rollout; the next :meth:`act` opens a new one in each of `num_envs`."""
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) \
                or num_envs < 1:
            raise ValueError(f"reset: num_envs must be a positive integer, got {num_envs!r}")
        n = int(num_envs)
        self._state = self.agent.init_state(n)
        self.num_envs = n
        self._prev_action = np.zeros((n, *self._act_shape), self._act_dtype)
        self._prev_reward = np.zeros(n, np.float32)
        self._time_index = np.zeros(n, np.int64)
        self._pending = np.ones(n, np.bool_)  # the next row of these envs opens a rollout

    @property
    def time_index(self) -> np.ndarray:
        """Each env's position in its current rollout (a copy); 0 at a rollout's first step."""
        return self._time_index.copy()

    # ------------------------------------------------------------------------------ input
    def _obs_rows(self, obs: Any) -> tuple[dict[str, np.ndarray], bool]:
        """`obs` → ({field: (n, *shape) array}, single) with every field checked."""
        if self._converter is not None:
            single = self.num_envs == 1 and self._obs_space.contains(obs)
            raw = _add_batch_dim(obs) if single else obs
            try:
                rows = self._converter(raw)
            except (KeyError, IndexError, TypeError, ValueError) as e:
                raise ValueError(f"act: observation does not fit the run's gymnasium "
                                 f"observation space ({type(e).__name__}: {e})") from None
        elif isinstance(obs, dict):
            extra = sorted(set(obs) - set(self._fields))
            missing = [k for k in self._fields if k not in obs]
            if missing or extra:
                raise ValueError(f"act: observation keys must be {list(self._fields)}; missing "
                                 f"{missing}, unexpected {extra}")
            rows, single = dict(obs), False
        elif len(self._fields) == 1:
            rows, single = {next(iter(self._fields)): obs}, False
        else:
            raise ValueError(f"act: the run observes several fields {list(self._fields)}: "
                             "pass a dict of them")
        out: dict[str, np.ndarray] = {}
        first = True
        for name, f in self._fields.items():
            arr = rows[name]
            if isinstance(arr, torch.Tensor):
                arr = arr.detach().cpu().numpy()
            arr = np.asarray(arr)
            if first and self._converter is None:
                single = arr.ndim == len(f.shape) and self.num_envs == 1
                first = False
            if single and arr.ndim == len(f.shape):
                arr = arr[None]
            if arr.shape != (self.num_envs, *f.shape):
                raise ValueError(f"act: observation {name!r} has shape {arr.shape}, expected "
                                 f"{(self.num_envs, *f.shape)} (num_envs={self.num_envs})")
            if arr.dtype != f.dtype:
                if not np.can_cast(arr.dtype, f.dtype, "same_kind"):
                    raise ValueError(f"act: observation {name!r} has dtype {arr.dtype}, the "
                                     f"run stored {f.dtype}")
                arr = arr.astype(f.dtype)
            if f.dtype.kind == "f" and not np.isfinite(arr).all():
                raise ValueError(f"act: observation {name!r} contains NaN/inf")
            out[name] = arr
        return out, single

    def _mask(self, value: Any, what: str, single: bool) -> np.ndarray | None:
        if value is None:
            return None
        arr = np.asarray(value.detach().cpu() if isinstance(value, torch.Tensor) else value)
        if single and arr.ndim == 0:
            arr = arr[None]
        if arr.shape != (self.num_envs,):
            raise ValueError(f"act: {what} has shape {arr.shape}, expected ({self.num_envs},)")
        if arr.dtype.kind not in "bui" or (
                arr.dtype.kind != "b" and not np.isin(arr, (0, 1)).all()):
            raise ValueError(f"act: {what} must be booleans, got {arr.dtype} {arr.tolist()}")
        return arr.astype(np.bool_)

    # ------------------------------------------------------------------------------ act
    def act(self, obs: Any, reward: Any = None, done: Any = None, *,
            episode_start: Any = None, sample: bool = False) -> np.ndarray:
        """Actions for the observation of every env (see the module docstring).

        Args:
          obs: the envs' observations (dict of fields, a bare array, or raw gymnasium ones).
          reward: (num_envs,) rewards received on arriving at `obs`; needed for every env that
            continues a rollout (ignored for envs whose rollout starts here).
          done: (num_envs,) bools: `obs` is the last observation of that env's episode (next
            step autoreset); its next call opens a new rollout.
          episode_start: (num_envs,) bools: `obs` is the first observation of a new episode.
          sample: sample from the policy instead of taking its greedy action.

        A rejected call (wrong keys, shapes, dtypes, NaN, missing reward) raises ValueError and
        changes nothing.
        """
        if self._state is None:
            raise RuntimeError("act: call reset(num_envs) first")
        rows, single = self._obs_rows(obs)
        done_m = self._mask(done, "done", single)
        start_m = self._mask(episode_start, "episode_start", single)
        starts = self._pending if start_m is None else (self._pending | start_m)
        cont = ~starts
        rew = None
        if reward is not None:
            r = np.asarray(reward.detach().cpu() if isinstance(reward, torch.Tensor) else reward)
            if single and r.ndim == 0:
                r = r[None]
            if r.shape != (self.num_envs,) or r.dtype.kind not in "biuf":
                raise ValueError(f"act: reward must be ({self.num_envs},) numbers, got "
                                 f"{r.dtype} {r.shape}")
            rew = r.astype(np.float32)
            if not np.isfinite(rew[cont]).all():
                raise ValueError("act: reward contains NaN/inf")
        elif cont.any():
            raise ValueError(f"act: reward is required for envs continuing a rollout "
                             f"(envs {np.nonzero(cont)[0].tolist()}): the agent reads the "
                             "previous reward")
        # Everything is checked: from here on the call goes through.
        time_index = np.where(starts, 0, self._time_index + 1)
        prev_reward = np.where(starts, np.float32(0.0), rew if rew is not None else 0.0)
        prev_action = self._prev_action.copy()
        prev_action[starts] = 0
        start_ids = np.nonzero(starts)[0]
        if start_ids.size:
            self._state = self.agent.reset_state(self._state, start_ids)
        rows[ACTION] = prev_action
        rows[REWARD] = prev_reward.astype(np.float32)
        rows["time_index"] = time_index
        actions, self._state = self.agent.act(rows, self._state, bool(sample))
        actions = np.asarray(actions, self._act_dtype)
        self._prev_action = actions.copy()
        self._prev_reward = rows[REWARD]
        self._time_index = time_index
        self._pending = done_m.copy() if done_m is not None else np.zeros(self.num_envs,
                                                                           np.bool_)
        out = actions if self._action_start is None else actions + self._action_start
        return out[0] if single else out

    __call__ = act

    def export(self, path: str | os.PathLike, batch: int | None = None, *,
               overwrite: bool = False) -> Path:
        """Write the greedy step as a ``torch.export`` program (``.pt2``) for `batch` envs
        (default: the envs of the last :meth:`reset`, else 1); :func:`amago_fast.exported.
        load_exported` runs it with this class's bookkeeping (amago_fast/export.py)."""
        from amago_fast.export import export_policy

        if not hasattr(self.agent, "tstep_encoder"):
            raise ValueError("export: this policy does not run an amago_fast Agent")
        return export_policy(self.agent, path,
                             batch=max(self.num_envs, 1) if batch is None else batch,
                             overwrite=overwrite)


def _add_batch_dim(obs: Any) -> Any:
    if isinstance(obs, dict):
        return {k: _add_batch_dim(v) for k, v in obs.items()}
    if isinstance(obs, tuple):
        return tuple(_add_batch_dim(v) for v in obs)
    return np.asarray(obs)[None]
