"""Training configuration: a tree of dataclasses with a docstring per field.

`TrainConfig` is what `amago-fast train` runs. Every leaf field can be overridden from the command
line with its dotted path (`--learner.lr 3e-4`, `--env.name tmaze-passive`); the help text of each
option is the docstring written under the field. The mapper is generic: it walks the default
instance, so the agent's and learner's own config dataclasses (owned by their modules) get
options without this file listing their fields.

`validate(cfg)` checks the whole tree before any work starts and raises `ConfigError` naming the
offending field. `save_config` / `load_config` write and read the resolved config as JSON.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import json
import math
import os
import re
import textwrap
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from amago_fast.errors import ConfigError

__all__ = [
    "ConfigError",
    "EnvConfig",
    "BufferConfig",
    "TrainConfig",
    "field_docs",
    "add_dataclass_arguments",
    "apply_overrides",
    "config_to_dict",
    "config_from_dict",
    "save_config",
    "load_config",
    "validate",
]


MAX_SEED = 2**31 - 2**20
"""Largest `seed`: env seeds are seed + 1000 * rank + 500 and EnvPool takes int32 seeds."""


def _default_agent_config() -> Any:
    from amago_fast.agent import AgentConfig

    return AgentConfig()


def _default_learner_config() -> Any:
    from amago_fast.learner import LearnerConfig

    return LearnerConfig()


def _default_data_config() -> Any:
    from amago_fast.offline import DataConfig

    return DataConfig()


@dataclass
class EnvConfig:
    """Which environment to train on, and how many copies run in parallel."""

    name: str = "tmaze-passive"
    """Environment name given to `amago_fast.envs.make_env` (tmaze-passive, tmaze-active,
    key-to-door, maze-runner, bandit, aib-<task> (the Actuator Inversion Benchmark: aib-di,
    aib-di-friction, aib-ode, aib-cartpole, aib-walker, ...), actinv-ballincup/-walker/-cartpole/
    -hopper, envpool:<TaskId>, gym:<id>)."""
    kwargs: dict = field(default_factory=dict)
    """Extra keyword arguments for `make_env`, as JSON on the command line
    (e.g. '{"corridor_length": 20}')."""
    eval_kwargs: dict = field(default_factory=dict)
    """Keyword arguments merged over `kwargs` for the evaluation env only, as JSON (e.g.
    '{"split": "eval-out"}' evaluates actuator inversion on held-out contexts while training on
    the train split; '{"batch_size": 4}' sizes an async EnvPool eval pool)."""
    eval_sets: dict = field(default_factory=dict)
    """Named evaluation envs, as JSON: label -> kwargs merged over `kwargs` and `eval_kwargs`
    (the AIB presets: '{"train": {"split": "train"}, "eval-in": {"split": "eval-in"},
    "eval-out": {"split": "eval-out"}}'). Each set is evaluated at every `eval_interval` with
    `eval_episodes` episodes and logged as `<label>/<statistic>` (eval.csv, TensorBoard, plot);
    empty: the one evaluation env of `eval_kwargs`."""
    num_envs: int = 8
    """Parallel environments used for training collection (per rank when distributed)."""
    eval_num_envs: int = 8
    """Parallel environments used for evaluation episodes."""
    nan_policy: str = "raise"
    """Non-finite observations or rewards from the training env: "raise" (stop with an error
    naming the envs; nothing of that step is stored) or "flag" (zero them, store the step and
    count it in the nonfinite_steps statistic)."""
    import_modules: list = field(default_factory=list)
    """Python modules imported before the env is made, as JSON (e.g. '["popgym"]' registers
    POPGym's gymnasium ids)."""
    mixture: list = field(default_factory=list)
    """A multi-task run, as JSON: env names or {"name", "kwargs", "label"} entries sharing the
    parallel envs (e.g. '["gym:popgym-RepeatPreviousEasy-v0", "gym:popgym-CountRecallEasy-v0"]').
    Sets env.name to "mixture" with the tasks in env.kwargs, logs each task's training returns
    (return/<label>) and evaluates each as a named set (env.eval_sets); observation/action specs
    are joined by amago_fast/envs/mixture.py's rule (1-d fields zero-padded, the largest
    discrete action space) or refused. Empty: one env."""


@dataclass
class BufferConfig:
    """The trajectory buffer the collector writes into and the learner samples from."""

    capacity_steps: int = 200_000
    """Buffer capacity in timesteps (rows); the oldest whole trajectories are evicted first."""
    max_trajectory_len: int | None = None
    """Cut open trajectories at this many steps (None: the env's max episode length, if any)."""
    relabel: str = "none"
    """Hindsight instruction relabeling strategy for multi-goal envs: none, some, all, final,
    future. Needs an env with goals."""
    relabel_prob: float = 0.0
    """Probability that a sampled window is relabeled (only with relabel != none)."""


@dataclass
class TrainConfig:
    """Everything a training run needs. Saved as config.json in the run directory."""

    env: EnvConfig = field(default_factory=EnvConfig)
    """The environment."""
    agent: Any = field(default_factory=_default_agent_config)
    """The agent's model (amago_fast.agent.AgentConfig)."""
    learner: Any = field(default_factory=_default_learner_config)
    """The learning update (amago_fast.learner.LearnerConfig)."""
    data: Any = field(default_factory=_default_data_config)
    """An offline dataset and how training uses it (amago_fast.offline.DataConfig; `--data
    PATH`)."""
    buffer: BufferConfig = field(default_factory=BufferConfig)
    """The replay buffer."""
    exploration: dict = field(default_factory=dict)
    """Keyword arguments of `amago_fast.exploration.make_exploration`, as JSON: eps_start,
    eps_end, anneal_steps, randomize (discrete) or std_start, std_end, anneal_steps (continuous);
    multiplier_floor (either) draws each rollout's multiplier log-uniformly from [floor, 1];
    uniform_steps (continuous) acts uniformly at random for the first N env steps;
    uniform_rollout_prob (continuous) makes each rollout act uniformly at random with that
    probability, for the whole run; decision_rollout_prob (kind bilevel) makes that share of the
    rollouts explore only at decision points (the steps where the policy's own action or the
    observation changes), with the first-step ε, annealed to decision_eps_end (default
    eps_first_end)."""
    batch_size: int = 24
    """Windows per gradient update (per rank when distributed)."""
    window_len: int = 64
    """Timesteps per sampled window (L; a window holds L+1 rows)."""
    total_env_steps: int = 20_000
    """Stop after this many environment transitions (summed over all envs of all ranks)."""
    learning_starts: int = 1_000
    """Transitions collected (per rank) before the first gradient update."""
    collect_steps_per_iter: int = 64
    """Transitions (summed over this rank's envs) stored per collection call; learning, logging,
    evaluation and checkpoints are checked between calls."""
    collect_sample: bool = True
    """Training collection acts with a draw from the policy's distribution (true, AMAGO's
    default) or with its greedy action (false: only `exploration` adds noise, DPG/TD3-style;
    the AIB presets use it, since sampling a near-uniform continuous actor fed back its own
    noise through the filtered BC term: docs/AIB.md)."""
    updates_per_env_step: float = 0.05
    """Gradient updates per environment transition collected by a rank (the collection/learning
    ratio; with DDP every update averages the gradients of all ranks' batches)."""
    overlap_collection: bool = False
    """Collect in a background thread (with a copy of the policy, synced after every collection
    call) while the main thread learns; otherwise collection and updates interleave."""
    eval_interval: int = 5_000
    """Run evaluation episodes every this many env transitions (0: only at the end)."""
    eval_episodes: int = 16
    """Episodes per evaluation (no exploration noise; see `eval_sample`)."""
    eval_sample: bool = False
    """Evaluation acts with draws from the policy's distribution (AMAGO's default) instead of
    its greedy action. The profiles set it for discrete actions, whose training collection
    samples too: on MiniGrid MemoryS7 the argmax policy of a 50k-step run looped until the time
    limit in 64 of 64 episodes (return 0.00) where its samples scored 0.43 (docs/LEARNING.md).
    eval.csv's ``sampled`` column says which."""
    eval_max_steps: int = 0
    """Env steps per eval env slot one evaluation may take before it stops unfinished (logged
    as eval.csv's stopped_early = 1): an env whose episodes never end cannot hang training.
    0: per slot its episode quota x (the env's time limit + 1), the limit read as at most
    100k steps (amago_fast.collector.default_eval_step_cap)."""
    checkpoint_interval: int = 10_000
    """Write a full checkpoint every this many env transitions (0: only at the end/on signal)."""
    log_interval: int = 1_000
    """Write train metrics every this many env transitions."""
    log_dir: str = "runs"
    """Directory under which run directories are created."""
    run_name: str = ""
    """Run directory name (default: <env name>-<timestamp>)."""
    seed: int = 0
    """Seed for model init, envs, exploration and buffer sampling (envs use seed + rank)."""
    device: str = "auto"
    """Torch device for the learner: auto (cuda if available, else cpu), cpu, cuda, cuda:N."""
    profile: str = "auto"
    """How `amago-fast train` sizes the fields you do not type (model, context/window from the
    env's episode limit, update ratio, exploration, budgets, evaluation, threads; see
    amago_fast/profiles.py): cpu (learns in minutes on a laptop CPU), gpu (AMAGO-sized), auto
    (gpu when the device is CUDA, else cpu) or off (keep the preset's values: the hand-tuned
    presets tmaze, key-to-door, ... set off)."""
    torch_threads: int = 0
    """torch intra-op threads (0: leave torch's default)."""
    max_skipped_updates: int = 100
    """Stop with an error after this many updates skipped for non-finite losses/gradients."""
    progress_bar: bool = True
    """Show a tqdm progress bar."""
    tensorboard: bool = True
    """Write TensorBoard event files."""
    wandb: bool = False
    """Also log to Weights & Biases (needs `pip install wandb`)."""
    wandb_project: str = "amago_fast"
    """Weights & Biases project name."""


# --------------------------------------------------------------------------------------------
# Field docstrings


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Docstrings of a dataclass's fields.

    Takes `metadata["help"]` when given, else the string literal written right under the field
    (an attribute docstring), searching base classes too.
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
            tree = ast.parse(source)
        except (OSError, TypeError, SyntaxError):
            continue
        body = next((n for n in tree.body if isinstance(n, ast.ClassDef)), None)
        if body is None:
            continue
        stmts = body.body
        for a, b in zip(stmts, stmts[1:]):
            if (
                isinstance(a, ast.AnnAssign)
                and isinstance(a.target, ast.Name)
                and isinstance(b, ast.Expr)
                and isinstance(b.value, ast.Constant)
                and isinstance(b.value.value, str)
            ):
                docs[a.target.id] = " ".join(b.value.value.split())
    for f in dataclasses.fields(cls):
        if "help" in f.metadata:
            docs[f.name] = str(f.metadata["help"])
    return docs


# --------------------------------------------------------------------------------------------
# Type handling


def _resolve_types(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # unresolvable forward refs: fall back to the raw annotations
        return {f.name: f.type for f in dataclasses.fields(cls)}


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        if len(args) == 1:
            return args[0], optional
        return tp, optional
    return tp, False


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on", "y"):
        return True
    if low in ("0", "false", "no", "off", "n"):
        return False
    raise ValueError(f"expected a boolean (true/false), got {text!r}")


def _convert(text: str, tp: Any, current: Any, name: str) -> Any:
    """Parse the command-line text `text` for a field of type `tp` (current value `current`)."""
    base, optional = _unwrap_optional(tp)
    if isinstance(base, str):  # unresolved annotation: go by the current value's type
        base = type(current) if current is not None else str
    if optional and text.strip().lower() in ("none", "null"):
        return None
    try:
        if base is bool:
            return _parse_bool(text)
        if base is int:
            value = float(text) if any(c in text for c in ".eE") else int(text)
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError(f"expected an integer, got {text!r}")
                value = int(value)
            return value
        if base is float:
            return float(text)
        if base is str:
            return text
        origin = typing.get_origin(base)
        if typing.get_origin(base) is typing.Literal:
            choices = typing.get_args(base)
            for c in choices:
                if str(c) == text:
                    return c
            raise ValueError(f"expected one of {list(choices)}, got {text!r}")
        if base in (dict, list, tuple) or origin in (dict, list, tuple) or base is Any:
            value = json.loads(text)
            if base is tuple or origin is tuple:
                value = tuple(value)
            return value
        if isinstance(base, type) and issubclass(base, (int, float, str)):
            return base(text)
    except (ValueError, json.JSONDecodeError) as e:
        raise ConfigError(f"{name}: cannot parse {text!r}: {e}") from None
    # Any other type: JSON, then the raw string.
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _leaves(cfg: Any, prefix: str = ""):
    """Yield (dotted name, owner dataclass instance, Field, resolved type) for every leaf."""
    hints = _resolve_types(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            yield from _leaves(value, name + ".")
        else:
            yield name, cfg, f, hints.get(f.name, f.type)


# --------------------------------------------------------------------------------------------
# argparse mapping


def add_dataclass_arguments(parser: argparse.ArgumentParser, cfg: Any) -> None:
    """Add one `--dotted.name VALUE` option per leaf field of the dataclass instance `cfg`.

    Options default to argparse.SUPPRESS so only what the user typed is applied later (presets
    and resumed configs keep their values otherwise).
    """
    group = parser.add_argument_group("config overrides (any field of TrainConfig)")
    for name, owner, f, tp in _leaves(cfg):
        doc = field_docs(type(owner)).get(f.name, "")
        default = getattr(owner, f.name)
        shown = json.dumps(default) if isinstance(default, (dict, list, tuple)) else default
        group.add_argument(
            f"--{name}",
            dest=f"cfg:{name}",
            metavar=_metavar(tp, default),
            default=argparse.SUPPRESS,
            help=f"{doc} (default: {shown})".replace("%", "%%"),
        )


def _metavar(tp: Any, default: Any) -> str:
    base, _ = _unwrap_optional(tp)
    if isinstance(base, type):
        return base.__name__.upper()
    return type(default).__name__.upper() if default is not None else "VALUE"


def overrides_from_namespace(ns: argparse.Namespace) -> dict[str, str]:
    """The `--dotted.name` options the user gave, as {dotted name: raw text}."""
    return {k[4:]: v for k, v in vars(ns).items() if k.startswith("cfg:")}


def overrides_to_args(overrides: dict[str, Any]) -> list[str]:
    """Dotted-name overrides → the ``--dotted.name value`` arguments `amago-fast train` parses
    back to the same values (strings pass as they are, everything else as JSON)."""
    args: list[str] = []
    for name, value in overrides.items():
        args += [f"--{name}", value if isinstance(value, str) else json.dumps(value)]
    return args


def apply_overrides(cfg: Any, overrides: dict[str, Any]) -> Any:
    """Return a copy of `cfg` with dotted-name overrides applied (strings are parsed by type).

    Unknown names raise ConfigError naming the field; `cfg` itself is not modified.
    """
    out = copy_config(cfg)
    leaves = {name: (owner_path, f, tp) for name, owner_path, f, tp in _leaf_paths(out)}
    for name, raw in overrides.items():
        if name not in leaves:
            close = [n for n in leaves if n.split(".")[-1] == name.split(".")[-1]]
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"{name}: no such config field{hint}")
        owner_path, f, tp = leaves[name]
        owner = _get_path(out, owner_path)
        current = getattr(owner, f.name)
        if isinstance(raw, str):
            value = _convert(raw, tp, current, name)
        else:
            value = raw
            base = _unwrap_optional(tp)[0]
            if isinstance(value, list) and (base is tuple or typing.get_origin(base) is tuple):
                value = tuple(value)  # same value whether it came from the CLI or from code
        setattr(owner, f.name, value)
    return out


def _leaf_paths(cfg: Any, prefix: str = "", path: tuple[str, ...] = ()):
    hints = _resolve_types(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            yield from _leaf_paths(value, name + ".", path + (f.name,))
        else:
            yield name, path, f, hints.get(f.name, f.type)


def _get_path(cfg: Any, path: tuple[str, ...]) -> Any:
    for p in path:
        cfg = getattr(cfg, p)
    return cfg


def copy_config(cfg: Any) -> Any:
    """A deep copy of a config tree."""
    import copy

    return copy.deepcopy(cfg)


# --------------------------------------------------------------------------------------------
# JSON


def config_to_dict(cfg: Any) -> dict:
    """The config tree as plain JSON-able dicts (tuples become lists)."""

    def conv(x: Any) -> Any:
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            return {f.name: conv(getattr(x, f.name)) for f in dataclasses.fields(x)}
        if isinstance(x, (list, tuple)):
            return [conv(v) for v in x]
        if isinstance(x, dict):
            return {str(k): conv(v) for k, v in x.items()}
        if isinstance(x, float) and not math.isfinite(x):
            return str(x)
        if hasattr(x, "item") and callable(x.item):  # numpy scalars
            return x.item()
        return x

    return conv(cfg)


def config_from_dict(data: dict, base: Any | None = None) -> TrainConfig:
    """Rebuild a TrainConfig from `config_to_dict` output. Unknown keys raise ConfigError."""
    cfg = copy_config(base) if base is not None else TrainConfig()

    def fill(obj: Any, d: dict, prefix: str) -> None:
        if not isinstance(d, dict):
            raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected an object")
        hints = _resolve_types(type(obj))
        names = {f.name: f for f in dataclasses.fields(obj)}
        for k, v in d.items():
            if k not in names:
                raise ConfigError(f"{prefix}{k}: no such config field")
            current = getattr(obj, k)
            if dataclasses.is_dataclass(current) and not isinstance(current, type):
                fill(current, v, f"{prefix}{k}.")
                continue
            base_tp, _ = _unwrap_optional(hints.get(k, names[k].type))
            if (base_tp is tuple or typing.get_origin(base_tp) is tuple) and isinstance(v, list):
                v = tuple(v)
            if base_tp is float and isinstance(v, str):
                v = float(v)
            setattr(obj, k, v)

    fill(cfg, data, "")
    return cfg


def save_config(cfg: Any, path: str | os.PathLike) -> None:
    """Write the resolved config as JSON, atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(config_to_dict(cfg), fh, indent=2, sort_keys=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_config(path: str | os.PathLike) -> TrainConfig:
    """Read a config written by `save_config`."""
    with open(path) as fh:
        return config_from_dict(json.load(fh))


# --------------------------------------------------------------------------------------------
# Validation

_RELABEL_STRATEGIES = ("none", "some", "all", "final", "future")


def _check(cond: bool, name: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{name}: {msg}")


def _check_types(cfg: Any) -> None:
    for name, owner, f, tp in _leaves(cfg):
        value = getattr(owner, f.name)
        base, optional = _unwrap_optional(tp)
        if value is None:
            _check(optional or base is Any, name, "must not be None")
            continue
        if base is bool:
            _check(isinstance(value, bool), name, f"expected a bool, got {value!r}")
        elif base is int:
            _check(
                isinstance(value, int) and not isinstance(value, bool),
                name,
                f"expected an integer, got {value!r}",
            )
        elif base is float:
            _check(
                isinstance(value, (int, float)) and not isinstance(value, bool),
                name,
                f"expected a number, got {value!r}",
            )
            _check(math.isfinite(float(value)), name, f"must be finite, got {value!r}")
        elif base is str:
            _check(isinstance(value, str), name, f"expected a string, got {value!r}")
        elif base is dict or typing.get_origin(base) is dict:
            _check(isinstance(value, dict), name, f"expected a JSON object, got {value!r}")


def validate(cfg: TrainConfig, *, check_env_name: bool = True) -> TrainConfig:
    """Check the whole config; raise ConfigError naming the first bad field. Returns `cfg`.

    Runs before any env, buffer or model is built. The agent's and learner's own configs are
    type-checked here and, when they define `validate()`, checked by it as well.
    """
    _check(isinstance(cfg, TrainConfig), "config", "expected a TrainConfig")
    _check_types(cfg)
    for name, owner_path, f, _tp in _leaf_paths(cfg):
        value = getattr(_get_path(cfg, owner_path), f.name)
        _check(not isinstance(value, int) or isinstance(value, bool)
               or -(2**63) <= value < 2**63, name,
               f"{value} is out of range (a 64-bit integer at most)")
    e = cfg.env
    if e.mixture:  # a multi-task run: env.name / kwargs / eval_sets from the task list
        _check(check_env_name, "env.mixture",
               "builds its envs by name; with an env object given (env=) leave it empty")
        from amago_fast.envs.mixture import apply_mixture

        try:
            apply_mixture(e)
        except ValueError as err:
            raise ConfigError(f"env.mixture: {err}") from None
    _check(bool(e.name.strip()), "env.name", "must be a non-empty environment name")
    # check_env_name=False: the env is given as an object (Trainer(cfg, env=...)) and its
    # name is only a label.
    if check_env_name and not e.name.startswith(("envpool:", "gym:")):
        from amago_fast.envs import list_envs

        known = [n for n in list_envs() if "<" not in n]
        _check(e.name in known, "env.name", f"unknown env {e.name!r}; valid: {list_envs()}")
    _check(e.num_envs >= 1, "env.num_envs", f"must be >= 1, got {e.num_envs}")
    _check(e.eval_num_envs >= 1, "env.eval_num_envs", f"must be >= 1, got {e.eval_num_envs}")
    _check(
        isinstance(e.import_modules, list) and all(isinstance(m, str) for m in e.import_modules),
        "env.import_modules",
        f"must be a list of module names, got {e.import_modules!r}",
    )
    import importlib.util

    for mod in e.import_modules:
        try:
            found = importlib.util.find_spec(mod) is not None
        except (ImportError, ValueError):
            found = False
        _check(found, "env.import_modules", f"cannot import {mod!r} (pip install {mod})")
    for name, value in (("env.kwargs", e.kwargs), ("env.eval_kwargs", e.eval_kwargs)):
        _check(isinstance(value, dict), name, f"must be a JSON object, got {value!r}")
        try:
            json.dumps(value)
        except TypeError as err:
            raise ConfigError(f"{name}: must be JSON-serializable: {err}") from None
    _check(isinstance(e.eval_sets, dict), "env.eval_sets",
           f"must be a JSON object of label -> kwargs, got {e.eval_sets!r}")
    for label, kw in e.eval_sets.items():
        _check(isinstance(label, str) and label.replace("-", "").replace("_", "").isalnum(),
               "env.eval_sets", f"labels must be names of letters, digits, - and _, got {label!r}")
        _check(isinstance(kw, dict), "env.eval_sets",
               f"set {label!r} must map to a JSON object of kwargs, got {kw!r}")
    try:
        json.dumps(e.eval_sets)
    except TypeError as err:
        raise ConfigError(f"env.eval_sets: must be JSON-serializable: {err}") from None
    _check(e.nan_policy in ("raise", "flag"), "env.nan_policy",
           f"must be 'raise' or 'flag', got {e.nan_policy!r}")
    try:
        json.dumps(cfg.exploration)
    except TypeError as err:
        raise ConfigError(f"exploration: must be JSON-serializable: {err}") from None
    b = cfg.buffer
    _check(b.capacity_steps >= 1, "buffer.capacity_steps", f"must be >= 1, got {b.capacity_steps}")
    _check(
        b.max_trajectory_len is None or b.max_trajectory_len >= 2,
        "buffer.max_trajectory_len",
        f"must be None or >= 2, got {b.max_trajectory_len}",
    )
    _check(
        b.max_trajectory_len is None or b.max_trajectory_len <= b.capacity_steps,
        "buffer.max_trajectory_len",
        f"must be <= buffer.capacity_steps = {b.capacity_steps} (a trajectory must fit the "
        f"buffer), got {b.max_trajectory_len}",
    )
    _check(
        b.relabel in _RELABEL_STRATEGIES,
        "buffer.relabel",
        f"must be one of {list(_RELABEL_STRATEGIES)}, got {b.relabel!r}",
    )
    _check(
        0.0 <= b.relabel_prob <= 1.0,
        "buffer.relabel_prob",
        f"must be in [0, 1], got {b.relabel_prob}",
    )
    _check(cfg.batch_size >= 1, "batch_size", f"must be >= 1, got {cfg.batch_size}")
    _check(cfg.window_len >= 1, "window_len", f"must be >= 1, got {cfg.window_len}")
    _check(
        b.capacity_steps >= cfg.window_len + 1,
        "buffer.capacity_steps",
        f"must hold at least one window of window_len + 1 = {cfg.window_len + 1} rows, "
        f"got {b.capacity_steps}",
    )
    _check(cfg.total_env_steps >= 1, "total_env_steps", f"must be >= 1, got {cfg.total_env_steps}")
    _check(cfg.learning_starts >= 0, "learning_starts", f"must be >= 0, got {cfg.learning_starts}")
    _check(
        cfg.collect_steps_per_iter >= 1,
        "collect_steps_per_iter",
        f"must be >= 1, got {cfg.collect_steps_per_iter}",
    )
    _check(
        cfg.updates_per_env_step >= 0,
        "updates_per_env_step",
        f"must be >= 0, got {cfg.updates_per_env_step}",
    )
    for name in ("eval_interval", "checkpoint_interval", "log_interval"):
        _check(getattr(cfg, name) >= 0, name, f"must be >= 0, got {getattr(cfg, name)}")
    _check(cfg.eval_episodes >= 0, "eval_episodes", f"must be >= 0, got {cfg.eval_episodes}")
    _check(cfg.eval_max_steps >= 0, "eval_max_steps", f"must be >= 0, got {cfg.eval_max_steps}")
    _check(bool(cfg.log_dir), "log_dir", "must be a directory path")
    _check("/" not in cfg.run_name, "run_name", f"must be a plain name, got {cfg.run_name!r}")
    _check(0 <= cfg.seed <= MAX_SEED, "seed",
           f"must be in [0, {MAX_SEED}] (env seeds add rank offsets to it and EnvPool takes "
           f"32-bit seeds), got {cfg.seed}")
    _check(cfg.torch_threads >= 0, "torch_threads", f"must be >= 0, got {cfg.torch_threads}")
    _check(cfg.profile in ("auto", "cpu", "gpu", "off"), "profile",
           f"must be auto, cpu, gpu or off, got {cfg.profile!r}")
    _check(
        cfg.max_skipped_updates >= 0,
        "max_skipped_updates",
        f"must be >= 0, got {cfg.max_skipped_updates}",
    )
    dev = cfg.device
    ok_dev = dev in ("auto", "cpu", "cuda") or (
        dev.startswith("cuda:") and dev[5:].isdigit()
    )
    _check(ok_dev, "device", f"must be auto, cpu, cuda or cuda:N, got {dev!r}")
    if dev.startswith("cuda"):
        import torch

        _check(torch.cuda.is_available(), "device", f"{dev!r} requested but CUDA is not available")
    for sub in ("agent", "learner", "data"):
        sub_cfg = getattr(cfg, sub)
        check = getattr(sub_cfg, "validate", None)
        if callable(check):
            try:
                check()
            except (ValueError, TypeError) as err:
                # "AgentConfig.num_heads=3: ..." → "agent.num_heads=3: ..."
                msg = re.sub(rf"^{type(sub_cfg).__name__}\.", f"{sub}.", str(err))
                raise ConfigError(msg if msg.startswith(sub) else f"{sub}: {msg}") from None
    return cfg
