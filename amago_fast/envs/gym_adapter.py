"""Any gymnasium env id or ``gymnasium.vector.VectorEnv`` as a :class:`VectorEnv`.

``GymVectorEnv("CartPole-v1", num_envs=8, vectorization="sync" | "async")`` builds a gymnasium
vector env with ``autoreset_mode=NEXT_STEP`` (our contract); an existing
``gymnasium.vector.VectorEnv`` is accepted if its ``metadata["autoreset_mode"]`` is NEXT_STEP.

Supported observation spaces (per single env): Box (float -> float32, uint8 kept, other ints ->
int32; key ``observation``), Discrete and MultiDiscrete (one-hot uint8 vectors; with
``discrete_obs="index"`` int32 indices, ``start`` subtracted), MultiBinary (uint8), a Tuple of
those (one field per element: ``observation_0``, ...), and a Dict of those or of such Tuples
(its keys; a Tuple entry ``k`` as ``k_0``, ``k_1``, ...; names must not clash with the buffer's
reserved names). A MiniGrid template mission ("go to the {color} door": a ``MissionSpace``
with ``ordered_placeholders``) is stored as the one-hot of each placeholder's value; a constant
mission (one possible string: MemoryS7's, DoorKey's) is dropped; generated free-text missions
(BabyAI's) are refused like Text.
Actions: Discrete and MultiDiscrete (0-based for the agent; a space's ``start`` is added
before the env steps), 1-d bounded Box. Anything else (Text, Graph,
Sequence, OneOf, a Dict inside a Dict or Tuple, ...) raises ValueError naming the space.

Three options shape what the agent sees (all also work through ``make_env("gym:<id>", ...)`` and
``--env.kwargs`` on the command line):

- ``ignore_keys``: Dict entries to drop, e.g. MiniGrid's ``mission`` (a ``MissionSpace`` string:
  constant for most MiniGrid tasks; tasks whose instruction varies need a wrapper that maps it
  to a Discrete or Box entry first).
- ``flatten_keys``: Box entries stored flat (1-d, dtype kept). A uint8 (H, W, C) Box is an image
  to the timestep encoder (a CNN over pixels / 255); MiniGrid's ``image`` is a 7x7x3 grid of
  object, colour and state codes (0..10, not pixels), which the encoder should instead read as
  a normalised vector — ``flatten_keys=("image",)`` does that (and keeps the native policy step,
  which takes no image inputs). Left unset (None), it is ``("image",)`` for MiniGrid and BabyAI
  ids (CODE_GRID_PREFIXES) and ``()`` otherwise; ``flatten_keys=()`` keeps the CNN.
- ``discrete_obs``: ``"onehot"`` (default) or ``"index"``, see above. A Discrete observation is
  a category (a FrozenLake cell, a POPGym card, a MiniGrid direction): fed to the network as
  one number, cell 7 would be read as "more" than cell 6.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import warnings
from typing import Any

import numpy as np

from amago_fast.envs.base import (
    ObsConverter,
    VectorEnv,
    check_actions,
    check_discrete_obs,
    check_env_ids,
    discrete_field,
    positive_int,
    step_arrays,
)
from amago_fast.envs.envpool_env import is_envpool_pool
from amago_fast.spaces import RESERVED_FIELDS, ActionSpec, EnvSpec, FieldSpec

# Packages that register their gymnasium ids when imported, by id prefix: an id such as
# ``popgym-RepeatFirstEasy-v0`` or ``MiniGrid-MemoryS7-v0`` then works with only the env name
# given, as gymnasium's own ``"module:EnvId"`` form does.
ID_PACKAGES: tuple[tuple[str, str], ...] = (
    ("popgym-", "popgym"),
    ("MiniGrid-", "minigrid"),
    ("BabyAI-", "minigrid"),
    ("ALE/", "ale_py"),
    ("Craftax", "craftax"),
)


def resolve_gym_id(env_id: str) -> str:
    """`env_id` registered with gymnasium, importing the package that registers it: the
    ``module`` of a ``"module:EnvId"`` id, else the package of a known prefix (ID_PACKAGES).
    Returns the bare id; raises ValueError naming the id (and the package to install)."""
    import gymnasium as gym

    if env_id in gym.registry:
        return env_id
    module, sep, bare = env_id.partition(":")
    if sep:
        if not module or not bare:
            raise ValueError(f"gymnasium id {env_id!r}: expected 'module:EnvId'")
        candidates = [module]
    else:
        bare = env_id
        candidates = [pkg for prefix, pkg in ID_PACKAGES if env_id.startswith(prefix)]
    for pkg in candidates:
        try:
            importlib.import_module(pkg)
        except ImportError as e:
            raise ValueError(f"gymnasium id {bare!r} needs the package {pkg!r}, which does not "
                             f"import here ({e}); pip install it") from None
    if bare not in gym.registry:
        raise ValueError(f"unknown gymnasium id {bare!r}" + (
            f" (importing {candidates[0]!r} did not register it)" if candidates else ""))
    return bare


# Suites whose ``image`` entry is a grid of object/colour/state codes, not pixels: by id prefix.
# Through the pixel CNN (codes / 255) a MiniGrid key (5) and ball (6) differ by 0.004 of the
# input range; flattened, the encoder's input normalisation makes them differ by O(1).
CODE_GRID_PREFIXES = ("MiniGrid-", "BabyAI-")


def default_flatten_keys(space: Any, env_id: str | None, ignore_keys: tuple[str, ...]
                         ) -> tuple[str, ...]:
    """``flatten_keys`` when the user gives none: ``("image",)`` for an env of a code-grid suite
    (CODE_GRID_PREFIXES, by the gymnasium id `env_id`) whose Dict observation has a rank-3 uint8
    ``image`` Box that is not ignored; ``()`` for everything else."""
    from gymnasium import spaces as gs

    if not env_id or not env_id.startswith(CODE_GRID_PREFIXES):
        return ()
    if not isinstance(space, gs.Dict) or "image" in ignore_keys:
        return ()
    image = space.spaces.get("image")
    if isinstance(image, gs.Box) and image.dtype == np.uint8 and len(image.shape) == 3:
        return ("image",)
    return ()


# Attributes by which suites declare their episode limit when the gymnasium registration gives
# none (no TimeLimit wrapper): POPGym's ``max_episode_length``, MiniGrid's ``max_steps``.
EPISODE_LIMIT_ATTRS = ("max_episode_length", "max_steps")


def declared_episode_limit(vec: Any, build: tuple | None = None) -> int | None:
    """The most steps an episode of vector env `vec` can last: its registration's
    ``max_episode_steps``, else the first of EPISODE_LIMIT_ATTRS that the env declares as a
    positive integer, else None (the profiles then size for an unlimited env). The attribute is
    read from a sync vector env's first sub-env, or, for an async one built from an id
    (`build`: the adapter's ``(id, num_envs, mode, make kwargs)``), from one more copy made in
    this process and closed: asking async workers for an attribute they lack shuts them down."""
    limit = getattr(getattr(vec, "spec", None), "max_episode_steps", None)
    if limit:
        return int(limit)
    subs = getattr(vec, "envs", None)
    probe, made = None, False
    if subs:
        probe = subs[0]
    elif build is not None:
        import gymnasium as gym

        env_id, _, _, kwargs = build
        try:
            probe, made = gym.make(env_id, **kwargs), True
        except Exception:  # noqa: BLE001 - no probe: the limit stays undeclared
            return None
    if probe is None:
        return None
    try:
        base = getattr(probe, "unwrapped", probe)
        for attr in EPISODE_LIMIT_ATTRS:
            value = getattr(base, attr, None)
            if isinstance(value, (int, np.integer)) and not isinstance(value, bool) \
                    and value > 0:
                return int(value)
        return None
    finally:
        if made:
            probe.close()


def _leaf_field(name: str, space: Any, where: str,
                discrete_obs: str = "onehot") -> tuple[FieldSpec, Any]:
    """The FieldSpec of one single-env space and its :class:`ObsConverter` op."""
    from gymnasium import spaces as gs

    if isinstance(space, gs.Box):
        if space.dtype == np.uint8:
            dtype = np.dtype(np.uint8)
        elif np.issubdtype(space.dtype, np.integer) or space.dtype == np.bool_:
            dtype = np.dtype(np.int32)
        else:
            dtype = np.dtype(np.float32)
        shape = tuple(space.shape) or (1,)
        return FieldSpec(name, shape, dtype), None
    if isinstance(space, gs.Discrete):
        return discrete_field(name, (int(space.n),), int(space.start), discrete_obs, where)
    if isinstance(space, gs.MultiDiscrete):
        if space.nvec.ndim != 1:
            raise ValueError(f"{where}: unsupported observation space {space!r} "
                             "(MultiDiscrete must be 1-d)")
        return discrete_field(name, tuple(int(n) for n in space.nvec), space.start,
                              discrete_obs, where)
    if isinstance(space, gs.MultiBinary):
        shape = tuple(np.atleast_1d(space.n).tolist())
        return FieldSpec(name, shape, np.uint8), None
    if _placeholder_missions(space):
        op = MissionOneHot(name, space, where)
        return FieldSpec(name, (op.width,), np.uint8), op
    raise ValueError(f"{where}: unsupported observation space {type(space).__name__}: {space!r}")


def _placeholder_missions(space: Any) -> bool:
    """A MiniGrid ``MissionSpace`` whose missions are a template over finite lists of values
    (``mission_func`` and ``ordered_placeholders``; duck-typed, minigrid is optional)."""
    ph = getattr(space, "ordered_placeholders", None)
    return callable(getattr(space, "mission_func", None)) and bool(ph) and all(
        isinstance(p, (list, tuple)) and len(p) > 0 for p in ph)


def _constant_mission(space: Any) -> bool:
    """A MiniGrid ``MissionSpace`` with one possible mission (no placeholders, e.g. MemoryS7's
    "go to the matching object at the end of the hallway"): it tells the agent nothing, so it is
    dropped rather than refused."""
    import inspect

    func = getattr(space, "mission_func", None)
    if not callable(func) or getattr(space, "ordered_placeholders", None):
        return False
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return False
    return not any(p.default is inspect.Parameter.empty and p.kind in (
        p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params)


# Most template missions MissionOneHot enumerates (MiniGrid's largest, PutNear, has 324).
MAX_MISSIONS = 100_000


class MissionOneHot:
    """ObsConverter op: MiniGrid template missions ("go to the {color} door") as the one-hot
    of each placeholder's value, concatenated (GoToDoor: 6 colours -> 6 bits; PutNear: colour,
    type, colour, type -> 18). Every mission the template can produce is enumerated once; a
    string outside them raises ValueError naming the field."""

    def __init__(self, name: str, space: Any, where: str = "gymnasium env") -> None:
        import itertools

        self.name = name
        sizes = [len(p) for p in space.ordered_placeholders]
        total = int(np.prod(sizes, dtype=np.int64))
        if total > MAX_MISSIONS:
            raise ValueError(f"{where}: observation {name!r} has {total} template missions, "
                             f"more than {MAX_MISSIONS}; drop it with ignore_keys=[{name!r}] "
                             "or map it to a Discrete entry with a wrapper")
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        self.width = int(sum(sizes))
        self.rows: dict[str, np.ndarray] = {}
        for combo in itertools.product(*(range(n) for n in sizes)):
            text = space.mission_func(*(p[i] for p, i in zip(space.ordered_placeholders, combo)))
            row = np.zeros(self.width, np.uint8)
            row[offsets + np.asarray(combo)] = 1
            if text in self.rows and not np.array_equal(self.rows[text], row):
                raise ValueError(f"{where}: observation {name!r}: the mission {text!r} comes "
                                 "from two placeholder choices; it cannot be encoded")
            self.rows[text] = row

    def __call__(self, arr: Any) -> np.ndarray:
        try:
            return np.stack([self.rows[str(m)] for m in np.asarray(arr).reshape(-1)])
        except KeyError as e:
            raise ValueError(f"observation {self.name!r}: mission {e.args[0]!r} is not one "
                             "its template produces") from None


def _flat(f: FieldSpec, space: Any, where: str) -> FieldSpec:
    """`f` stored 1-d (see ``flatten_keys``); only Box entries have a shape to flatten."""
    from gymnasium import spaces as gs

    if not isinstance(space, gs.Box):
        raise ValueError(f"{where}: flatten_keys names a {type(space).__name__} entry "
                         f"({space!r}); only Box entries can be flattened")
    return FieldSpec(f.name, (int(np.prod(f.shape)),), f.dtype)


def _entries(space: Any, where: str) -> list[tuple[Any, str, Any, str]]:
    """The stored entries of a single-env observation space: (backend key path, our field name,
    leaf space, the Dict key that ``ignore_keys`` drops it by). A plain leaf is
    ``observation``; a Tuple's elements are ``observation_0``, ``observation_1``, ...; a Dict's
    entries keep their keys, and a Tuple entry ``k`` becomes ``k_0``, ``k_1``, ... (one level:
    deeper nesting raises, naming the entry)."""
    from gymnasium import spaces as gs

    def tuple_entries(path: Any, base: str, sub: Any, key: str) -> list:
        out = []
        for i, el in enumerate(sub.spaces):
            if isinstance(el, (gs.Dict, gs.Tuple)):
                raise ValueError(f"{where}: unsupported nested observation space {base}[{i}]: "
                                 f"{el!r} (Tuple elements must be Box, Discrete, MultiDiscrete "
                                 f"or MultiBinary)")
            out.append(((*path, i) if path else i, f"{base}_{i}", el, key))
        return out

    if isinstance(space, gs.Tuple):
        return tuple_entries((), "observation", space, "observation")
    if not isinstance(space, gs.Dict):
        return [(None, "observation", space, "observation")]
    out = []
    for key, sub in space.spaces.items():
        if isinstance(sub, gs.Dict):
            out.append((key, str(key), sub, key))  # rejected below unless ignored
        elif isinstance(sub, gs.Tuple):
            out.extend(tuple_entries((key,), str(key), sub, key))
        else:
            out.append((key, str(key), sub, key))
    return out


def observation_fields(
    space: Any,
    where: str = "gymnasium env",
    ignore_keys: tuple[str, ...] = (),
    flatten_keys: tuple[str, ...] = (),
    discrete_obs: str = "onehot",
) -> tuple[list[FieldSpec], ObsConverter]:
    """FieldSpecs for a single-env observation space, and the converter of its batches.

    A Tuple observation (e.g. POPGym's Autoencode tasks: ``Tuple(Discrete(2), Discrete(4))``)
    is stored as one field per element, ``observation_0``, ``observation_1``, ...; a Tuple entry
    ``k`` of a Dict as ``k_0``, ``k_1``, ... `ignore_keys`: Dict entries to drop (e.g.
    MiniGrid's ``mission``). `flatten_keys`: Box entries (field names: Dict keys, the names
    above, or ``"observation"`` for a plain Box) stored 1-d, dtype kept (e.g. MiniGrid's
    symbolic ``image`` grid, so it is not taken for an image). `discrete_obs`: Discrete and
    MultiDiscrete entries as one-hot uint8 vectors (``"onehot"``, the default: a state index,
    a card suit or a direction is a category, and fed raw the network would read it as a
    magnitude) or as int32 indices (``"index"``, start subtracted; what the encoder then sees raw).
    """
    from gymnasium import spaces as gs

    check_discrete_obs(discrete_obs, where)
    for opt, keys in (("ignore_keys", ignore_keys), ("flatten_keys", flatten_keys)):
        if isinstance(keys, str) or not all(isinstance(k, str) for k in keys):
            raise TypeError(f"{where}: {opt} must be a list of key strings, got {keys!r}")
    ignore_keys, flatten_keys = tuple(ignore_keys), tuple(flatten_keys)
    if ignore_keys and not isinstance(space, gs.Dict):
        raise ValueError(f"{where}: ignore_keys needs a Dict observation space, got {space!r}")
    entries = _entries(space, where)
    if isinstance(space, gs.Dict):
        unknown = sorted(set(ignore_keys) - set(space.spaces))
        if unknown:
            raise ValueError(f"{where}: ignore_keys {unknown} are not observation keys "
                             f"(keys: {sorted(space.spaces)})")
    names = [name for _, name, _, _ in entries]
    unknown = sorted(set(flatten_keys) - set(names))
    if unknown:
        if isinstance(space, gs.Dict):
            raise ValueError(f"{where}: flatten_keys {unknown} are not observation keys "
                             f"(keys: {sorted(names)})")
        raise ValueError(f"{where}: flatten_keys {unknown} name no observation field of "
                         f"{space!r} (fields: {names})")
    flat_ignored = sorted({key for _, name, _, key in entries if name in flatten_keys}
                          & set(ignore_keys))
    if flat_ignored:
        raise ValueError(f"{where}: keys {flat_ignored} are in both ignore_keys and flatten_keys")
    dict_keys = set(space.spaces) if isinstance(space, gs.Dict) else set()
    fields, plan = [], []
    for path, name, sub, key in entries:
        if key in ignore_keys or _constant_mission(sub):
            continue
        if isinstance(sub, gs.Dict):
            raise ValueError(f"{where}: unsupported nested observation space {key!r}: {sub!r}"
                             f" (drop it with ignore_keys=[{key!r}])")
        if name in RESERVED_FIELDS:
            raise ValueError(f"{where}: observation key {name!r} is reserved by the buffer")
        if name != key and name in dict_keys:
            raise ValueError(f"{where}: Tuple entry {key!r} would store element field {name!r},"
                             f" which is also an observation key")
        where_key = f"{where} key {key!r}" if isinstance(space, gs.Dict) else where
        try:
            f, op = _leaf_field(name, sub, where_key, discrete_obs)
        except ValueError as e:
            if not isinstance(space, gs.Dict):
                raise
            raise ValueError(f"{e} (drop it with ignore_keys=[{key!r}]; on the command line "
                             f"--env.kwargs '{{\"ignore_keys\": [\"{key}\"]}}')") from None
        if name in flatten_keys:
            f = _flat(f, sub, where_key)
        fields.append(f)
        plan.append((path, f.name, f.dtype, f.shape, op))
    return fields, ObsConverter(plan)


def action_spec_from_space(space: Any, where: str = "gymnasium env") -> ActionSpec:
    """Our ActionSpec for a single-env gymnasium action space (or ValueError naming it).
    Discrete / MultiDiscrete actions are 0-based here; :func:`action_start` gives the offset
    the adapter adds before stepping a space whose ``start`` is not 0."""
    from gymnasium import spaces as gs

    if isinstance(space, gs.Discrete):
        return ActionSpec("discrete", n=int(space.n))
    if isinstance(space, gs.MultiDiscrete) and space.nvec.ndim == 1:
        return ActionSpec("multidiscrete", nvec=tuple(int(v) for v in space.nvec))
    if isinstance(space, gs.Box) and len(space.shape) == 1:
        low = np.broadcast_to(space.low, space.shape).astype(np.float64)
        high = np.broadcast_to(space.high, space.shape).astype(np.float64)
        if not (np.isfinite(low).all() and np.isfinite(high).all()):
            raise ValueError(f"{where}: unsupported action space {space!r} (unbounded Box)")
        return ActionSpec("continuous", shape=space.shape, low=tuple(low.tolist()),
                          high=tuple(high.tolist()))
    raise ValueError(f"{where}: unsupported action space {type(space).__name__}: {space!r}")


def action_start(space: Any) -> np.ndarray | None:
    """The ``start`` of a Discrete / MultiDiscrete action space when it is not all zeros (added
    to our 0-based actions before the env steps), else None."""
    from gymnasium import spaces as gs

    if isinstance(space, (gs.Discrete, gs.MultiDiscrete)):
        start = np.asarray(space.start, np.int64)
        if start.any():
            return start
    return None


def _lookup(obs: Any, key: Any) -> Any:
    """The batch of one stored entry (an ObsConverter plan key) in a vector observation."""
    if key is None:
        return obs
    if type(key) is tuple:
        return obs[key[0]][key[1]]
    return obs[key]


def _observation_checks(space: Any, where: str, ignore_keys: tuple[str, ...]) -> list[tuple]:
    """Per stored entry: (plan key, label, per-env shape or None, low, high or None): what
    :meth:`GymVectorEnv._convert` checks each batch against. Bounds are kept only where values
    can fall outside them (a finite Box narrower than its dtype, Discrete/MultiDiscrete,
    MultiBinary); a uint8 Box over 0..255 or an unbounded float Box costs nothing."""
    from gymnasium import spaces as gs

    out = []
    for path, name, sub, key in _entries(space, where):
        if key in ignore_keys:
            continue
        label = repr(name) if path is not None else "'observation'"
        low = high = None
        shape = tuple(sub.shape) if getattr(sub, "shape", None) is not None else None
        if isinstance(sub, gs.Box):
            lo, hi = np.asarray(sub.low), np.asarray(sub.high)
            if sub.dtype.kind in "iu":
                info = np.iinfo(sub.dtype)
                full = (lo <= info.min).all() and (hi >= info.max).all()
            else:
                full = not (np.isfinite(lo).any() or np.isfinite(hi).any())
            if not full:
                low, high = lo, hi
        elif isinstance(sub, gs.Discrete):
            low, high = np.asarray(sub.start), np.asarray(sub.start + sub.n - 1)
        elif isinstance(sub, gs.MultiDiscrete):
            low, high = np.asarray(sub.start), np.asarray(sub.start + sub.nvec - 1)
        elif isinstance(sub, gs.MultiBinary):
            low, high = np.asarray(0), np.asarray(1)
        else:  # mission strings and other spaces without a fixed array shape
            shape = None
        out.append((path, label, shape, low, high))
    return out


@contextlib.contextmanager
def _gc_frozen():
    """Around forking async workers: objects they inherit must not be collected there (a
    forked worker's garbage collection freeing the parent's objects — torch tensors, native
    buffers, a faulted env being replaced — segfaulted in a full test run: CI, a rebuild after
    a fault). gc.freeze() moves everything alive now out of the collector's reach in the
    children (Python's documented pattern before fork); the parent unfreezes once they are
    started."""
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _lost_worker(vec: Any) -> bool:
    """A gymnasium AsyncVectorEnv (possibly wrapped) that shut a worker down after it raised
    (its pipe is then None) or was closed."""
    base = getattr(vec, "unwrapped", vec)
    pipes = getattr(base, "parent_pipes", None)
    return bool(getattr(base, "closed", False)) or (
        pipes is not None and any(p is None for p in pipes))


def _success(info: dict[str, Any]) -> np.ndarray | None:
    """The per-env success flags of a gymnasium vector step's info: ``success`` (Meta-World and
    most task suites) or ``is_success`` (gymnasium-robotics' goal envs). The vector env fills
    envs that did not report the key with zeros and marks the reporting ones in ``_<key>``; an
    env that did not report has no success information this step (NaN, which the collector's
    statistic skips), not a failure."""
    for key in ("success", "is_success"):
        if key in info:
            flags = np.asarray(info[key]).astype(np.bool_)
            mask = info.get("_" + key)
            if mask is None or np.asarray(mask, np.bool_).all():
                return flags
            return np.where(np.asarray(mask, np.bool_), flags, np.nan).astype(np.float32)
    return None


class GymVectorEnv(VectorEnv):
    """A gymnasium env id or vector env as a VectorEnv (see the module docstring)."""

    def __init__(
        self,
        env: str | Any,
        num_envs: int | None = None,
        seed: int = 0,
        vectorization: str = "sync",
        name: str | None = None,
        ignore_keys: tuple[str, ...] = (),
        flatten_keys: tuple[str, ...] | None = None,
        discrete_obs: str = "onehot",
        **make_kwargs: Any,
    ) -> None:
        import gymnasium as gym
        from gymnasium.vector import AutoresetMode

        # (id, num_envs, vectorization, make kwargs) when built from an id: rebuilt from them
        # after a fault (see reset).
        self._build: tuple[str, int, str, dict[str, Any]] | None = None
        if is_envpool_pool(env):
            raise TypeError(
                f"GymVectorEnv does not take EnvPool pools ({type(env).__name__}): wrap it with "
                "amago_fast.envs.EnvPoolEnv(pool) (async pools, EnvPool's seeding and its fast "
                "step path need it), or use make_env('envpool:<TaskId>', ...)")
        if isinstance(env, str):
            if vectorization not in ("sync", "async"):
                raise ValueError(f"vectorization must be 'sync' or 'async', got {vectorization!r}")
            num_envs = positive_int(num_envs)
            env = resolve_gym_id(env)
            source_id: str | None = env
            self._build = (env, num_envs, vectorization, dict(make_kwargs))
            self.vec = self._make_vec()
            env_name = name or f"gym:{env}"
        elif isinstance(env, gym.vector.VectorEnv):
            if make_kwargs:
                raise ValueError(f"make kwargs {sorted(make_kwargs)} given with a built vector env")
            mode = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
            if mode != AutoresetMode.NEXT_STEP:
                raise ValueError(
                    f"vector env uses autoreset_mode={mode}; amago_fast needs NEXT_STEP"
                )
            if num_envs is not None and num_envs != env.num_envs:
                raise ValueError(f"num_envs={num_envs} but the vector env has {env.num_envs}")
            self.vec = env
            spec_id = getattr(getattr(env, "spec", None), "id", None)
            source_id = spec_id
            env_name = name or f"gym:{spec_id or type(env).__name__}"
        else:
            raise TypeError(
                f"env must be a gymnasium id or gymnasium.vector.VectorEnv, got {env!r}"
            )
        try:
            if flatten_keys is None:
                flatten_keys = default_flatten_keys(self.vec.single_observation_space,
                                                    source_id, tuple(ignore_keys))
            fields, self._obs = observation_fields(
                self.vec.single_observation_space, env_name, ignore_keys, flatten_keys,
                discrete_obs)
            action = action_spec_from_space(self.vec.single_action_space, env_name)
            self._action_start = action_start(self.vec.single_action_space)
        except (ValueError, TypeError):
            self.vec.close()
            raise
        self.num_envs = int(self.vec.num_envs)
        self._seed = seed
        self._next_seed: int | None = seed
        self._faulted = False  # a step or reset raised: the vector env may be broken
        self._rebuilds = 0
        max_steps = declared_episode_limit(self.vec, self._build)
        self.spec = EnvSpec(env_name, tuple(fields), action, max_episode_steps=max_steps,
                            extra={"backend": "gymnasium"})
        self._obs_checks = _observation_checks(self.vec.single_observation_space, env_name,
                                               tuple(ignore_keys))
        self._warned_keys: set[str] = set()  # keys already warned about out-of-space values
        self._closed = False

    def _explain_batching(self, e: BaseException) -> None:
        """gymnasium's own batching of the envs' observations failed (an env returned an
        observation of another shape than its space's): raise ValueError naming every entry's
        expected shape instead of NumPy's bare "Output array is the wrong shape"."""
        if isinstance(e, ValueError) and "shape" in str(e):
            expected = ", ".join(f"{label} {shape}" for _, label, shape, _, _ in self._obs_checks
                                 if shape is not None)
            raise ValueError(
                f"{self.spec.name}: gymnasium could not batch the envs' observations ({e}); "
                f"each env's observation must fit its declared space: {expected}") from e

    def _convert(self, obs: Any) -> dict[str, np.ndarray]:
        """The observation dict of a vector observation, each entry checked first: a missing
        key or a batch of the wrong shape raises ValueError naming the key and the expected
        shape (instead of a NumPy reshape error); values outside the declared space warn once
        per key and are stored as given (Discrete values the one-hot cannot represent raise in
        the conversion). ~1 us per key and step for CartPole-sized observations."""
        n = self.num_envs
        for key, label, shape, low, high in self._obs_checks:
            try:
                arr = _lookup(obs, key)
            except (KeyError, IndexError, TypeError):
                raise ValueError(f"{self.spec.name}: the observation has no entry {label} "
                                 f"(its observation space declares it)") from None
            if shape is None:
                continue
            if type(arr) is not np.ndarray:
                arr = np.asarray(arr)
            if arr.shape != (n, *shape):
                raise ValueError(
                    f"{self.spec.name}: observation {label} has shape {arr.shape}, expected "
                    f"{(n, *shape)} ({n} envs x the space's shape {shape})")
            if low is not None and label not in self._warned_keys and (
                    (arr < low).any() or (arr > high).any()):
                self._warned_keys.add(label)
                warnings.warn(
                    f"{self.spec.name}: observation {label} has values outside its declared "
                    f"space (range [{np.min(arr)}, {np.max(arr)}], space bounds "
                    f"[{np.min(low)}, {np.max(high)}]); stored as given (warned once per key)",
                    stacklevel=3)
        return self._obs(obs)

    def _make_vec(self) -> Any:
        import gymnasium as gym
        from gymnasium.vector import AutoresetMode

        env_id, n, mode, kwargs = self._build  # type: ignore[misc]
        vector_kwargs: dict[str, Any] = {"autoreset_mode": AutoresetMode.NEXT_STEP}
        with _gc_frozen() if mode == "async" else contextlib.nullcontext():
            try:
                return gym.make_vec(env_id, num_envs=n, vectorization_mode=mode,
                                    vector_kwargs=vector_kwargs, **kwargs)
            except ValueError as e:
                # gymnasium's async shared memory knows only its own spaces (not, e.g.,
                # MiniGrid's MissionSpace): the workers then send observations by pipe.
                if mode != "async" or not isinstance(e.__cause__, gym.error.CustomSpaceError):
                    raise
                return gym.make_vec(env_id, num_envs=n, vectorization_mode=mode,
                                    vector_kwargs={**vector_kwargs, "shared_memory": False},
                                    **kwargs)

    def _recover(self) -> None:
        """After a step or reset that raised. Built from an id: close the vector env and build
        it again (an async one shuts down the worker that raised, so its next reset would fail);
        its first reset seeds the new envs past every seed used so far (seed + k * num_envs
        after the k-th rebuild). A given vector env cannot be rebuilt: an async one that lost a
        worker raises here; any other is reset as it is (see reset)."""
        if self._build is None:
            if _lost_worker(self.vec):
                raise RuntimeError(
                    f"{self.spec.name}: the wrapped vector env ({type(self.vec).__name__}) is "
                    "broken after a fault (a worker raised and was shut down) and must be "
                    "rebuilt: build a new vector env and GymVectorEnv, or pass a gymnasium id "
                    "(GymVectorEnv then rebuilds it by itself)")
            return
        try:
            self.vec.close()
        except Exception:  # noqa: BLE001 - a broken env may fail to close; it is replaced anyway
            pass
        self.vec = self._make_vec()
        self._rebuilds += 1
        if self._seed is not None:
            self._next_seed = self._seed + self._rebuilds * self.num_envs

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        self._check_open()
        faulted = self._faulted
        if faulted:
            self._recover()
        s = seed if seed is not None else self._next_seed
        try:
            obs, _ = self.vec.reset(seed=s)
        except BaseException as e:
            self._faulted = True
            self._explain_batching(e)
            if faulted and self._build is None and isinstance(e, Exception):
                raise RuntimeError(
                    f"{self.spec.name}: the wrapped vector env ({type(self.vec).__name__}) "
                    f"failed to reset after a fault ({type(e).__name__}: {e}); it must be "
                    "rebuilt (or pass a gymnasium id, which GymVectorEnv rebuilds by itself)"
                ) from e
            raise
        self._faulted = False
        self._next_seed = None  # later resets continue the env's own RNG streams
        return self._convert(obs)

    def step(self, actions, env_ids=None):
        self._check_open()
        if env_ids is not None:
            check_env_ids(self, env_ids)
        actions = check_actions(self.spec.action, actions, self.num_envs, self.spec.name,
                                check_bounds=True)
        return self.step_trusted(actions)

    def step_trusted(self, actions, env_ids=None):
        self._check_open()
        if self._faulted and _lost_worker(self.vec):
            raise RuntimeError(f"{self.spec.name}: a worker of the async vector env raised and was "
                               "shut down; call reset() (which rebuilds it) before stepping")
        if self.spec.action.is_discrete:
            actions = actions.astype(np.int64)
            if self._action_start is not None:
                actions = actions + self._action_start
        try:
            obs, reward, term, trunc, info = self.vec.step(actions)
        except BaseException as e:
            self._faulted = True  # the next reset recovers (see _recover)
            self._explain_batching(e)
            raise
        out_info = {}
        if isinstance(info, dict):
            success = _success(info)
            if success is not None:
                out_info["success"] = success
        return (self._convert(obs), *step_arrays(reward, term, trunc), out_info)

    def render_slot(self, index: int) -> np.ndarray | None:
        """Env `index`'s current frame as (H, W, 3) uint8 (``amago-fast eval --video``), or
        None when the envs were not made with ``render_mode="rgb_array"`` (a sync vector env:
        gymnasium's render returns one frame per env)."""
        self._check_open()
        if self.vec.render_mode != "rgb_array":
            return None
        frames = self.vec.render()
        if frames is None:
            return None
        frame = np.asarray(frames[index])
        return frame[..., :3].astype(np.uint8) if frame.ndim == 3 else None

    @property
    def render_fps(self) -> float | None:
        """Frames per second the env declares (``metadata["render_fps"]``), if any."""
        fps = self.vec.metadata.get("render_fps")
        return float(fps) if fps else None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.vec.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self.spec.name} is closed")
