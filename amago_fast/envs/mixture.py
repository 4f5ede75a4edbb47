"""Multi-task runs: several envs across the parallel slots of one run (``--env.mixture``).

    amago-fast train --preset multitask                      # T-Maze corridors 3, 6 and 9
    amago-fast train --env.import_modules '["popgym"]' --env.mixture \
        '["gym:popgym-RepeatPreviousEasy-v0", "gym:popgym-CountRecallEasy-v0"]'

Each entry of ``env.mixture`` is an env name or ``{"name": ..., "kwargs": {...}, "label": ...}``
(the label names the task in logs; default: the name with ``:`` and ``/`` replaced by ``-``;
needed when one name appears twice, e.g. T-Maze at two lengths). The run's ``num_envs`` slots are
split over the tasks in order, as evenly as possible (task k gets ``num_envs // K`` slots, plus
one for ``k < num_envs % K``), so every task collects about the same share of the data and the
one agent trains on all of them.

Specs: the agent reads one observation/action spec, so the tasks' specs are joined by the rule
AMAGO's multi-task envs use, and anything that rule cannot join is refused with one line naming
both envs and the mismatch:

- observations: the same field names and dtypes in every task; a 1-d field of different lengths
  is zero-padded at the end to the longest (a task's missing features read as 0); fields of
  other ranks must have equal shapes;
- discrete actions: the largest ``n``; an action a task does not have (``a >= n_task``) is taken
  as ``a mod n_task`` (every output of the policy is a valid action of every task, and a task's
  own actions keep their indices). Continuous and multi-discrete action spaces must be equal;
- goals (multi-goal relabeling) and async pools are not supported in a mixture;
- the time limit is the longest of the tasks'.

Statistics: training episodes are counted per task by the mixture itself (``return/<label>``,
``success/<label>``, ``length/<label>`` columns of train.csv and TensorBoard, read through
:meth:`MixtureEnv.pop_task_stats`), and the trainer evaluates each task as its own named
evaluation set (``env.eval_sets`` = ``{label: {"only": label}}``, the whole evaluation budget on
that task's slots): eval.csv's ``<label>/return``, ``<label>/success`` ... and one curve per task
in ``amago-fast plot``. ``amago-fast eval RUN --env-kwargs '{"only": "<label>"}'`` evaluates one
task.
"""

from __future__ import annotations

import re
import threading
from typing import Any

import numpy as np

from amago_fast.envs.base import VectorEnv, check_actions
from amago_fast.spaces import ActionSpec, EnvSpec, FieldSpec

__all__ = ["MixtureEnv", "apply_mixture", "mixture_spec", "normalize_tasks", "task_slots",
           "MIXTURE_NAME"]

MIXTURE_NAME = "mixture"
"""The env name of a mixture run (``make_env("mixture", n, tasks=[...])``)."""

_LABEL = re.compile(r"^[A-Za-z0-9_-]+$")


def _default_label(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", name).strip("-") or "task"


def normalize_tasks(tasks: Any) -> list[dict[str, Any]]:
    """``env.mixture`` entries as ``[{"name", "kwargs", "label"}, ...]``; ValueError naming the
    first bad entry (not a list, an entry neither a name nor such a dict, unknown keys, a
    duplicate or ill-formed label, fewer than two tasks)."""
    if not isinstance(tasks, list) or len(tasks) < 2:
        raise ValueError(f"a mixture needs a list of at least 2 tasks, got {tasks!r}")
    out: list[dict[str, Any]] = []
    for i, entry in enumerate(tasks):
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str) \
                or not entry["name"].strip():
            raise ValueError(f"mixture task {i}: must be an env name or "
                             f"{{\"name\": ..., \"kwargs\": {{...}}, \"label\": ...}}, "
                             f"got {entry!r}")
        extra = sorted(set(entry) - {"name", "kwargs", "label"})
        if extra:
            raise ValueError(f"mixture task {i} ({entry['name']!r}): unknown keys {extra} "
                             "(name, kwargs, label)")
        if entry["name"] == MIXTURE_NAME:
            raise ValueError(f"mixture task {i}: a mixture cannot contain a mixture")
        kwargs = entry.get("kwargs", {})
        if not isinstance(kwargs, dict):
            raise ValueError(f"mixture task {i} ({entry['name']!r}): kwargs must be a JSON "
                             f"object, got {kwargs!r}")
        label = entry.get("label", _default_label(entry["name"]))
        if not isinstance(label, str) or not _LABEL.match(label):
            raise ValueError(f"mixture task {i}: label must be letters, digits, - and _, got "
                             f"{label!r}")
        out.append({"name": entry["name"], "kwargs": dict(kwargs), "label": label})
    labels = [t["label"] for t in out]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ValueError(f"mixture tasks share the label(s) {dup}: give each a distinct "
                         "\"label\" (e.g. one env name at two settings)")
    return out


def apply_mixture(env_cfg: Any) -> None:
    """Resolve a config's ``env.mixture`` (an EnvConfig) in place: the entries normalized,
    ``env.name = "mixture"``, ``env.kwargs = {"tasks": entries}`` and, unless given,
    ``env.eval_sets = {label: {"only": label}}`` (one evaluation set per task). Idempotent: a
    saved run's config resolves to itself. ValueError when env.kwargs / env.eval_kwargs hold
    anything else (a task's kwargs go in its entry)."""
    tasks = normalize_tasks(env_cfg.mixture)
    other = {k: v for k, v in env_cfg.kwargs.items() if k != "tasks"}
    if other:
        raise ValueError(f"env.kwargs {other} are given with env.mixture: put a task's kwargs "
                         "in its entry ({\"name\": ..., \"kwargs\": {...}}), or set env.kwargs "
                         "to {} (a preset's env kwargs belong to its own env)")
    if "tasks" in env_cfg.kwargs and normalize_tasks(env_cfg.kwargs["tasks"]) != tasks:
        raise ValueError("env.kwargs['tasks'] and env.mixture name different tasks")
    bad_eval = sorted(set(env_cfg.eval_kwargs) - {"only"})
    if bad_eval:
        raise ValueError(f"env.eval_kwargs {bad_eval} are given with env.mixture (per-task "
                         "evaluation kwargs go in the task's entry)")
    env_cfg.mixture = tasks
    env_cfg.name = MIXTURE_NAME
    env_cfg.kwargs = {"tasks": tasks}
    if not env_cfg.eval_sets:
        env_cfg.eval_sets = {t["label"]: {"only": t["label"]} for t in tasks}


def task_slots(num_envs: int, num_tasks: int) -> list[int]:
    """Slots per task: ``num_envs`` split as evenly as possible, the first tasks one more."""
    if num_envs < num_tasks:
        raise ValueError(f"a mixture of {num_tasks} tasks needs num_envs >= {num_tasks}, got "
                         f"{num_envs}")
    return [num_envs // num_tasks + (k < num_envs % num_tasks) for k in range(num_tasks)]


def _join_fields(a: FieldSpec, b: FieldSpec, names: tuple[str, str]) -> FieldSpec:
    if a.dtype != b.dtype:
        raise ValueError(f"mixture: observation {a.name!r} is {a.dtype} in {names[0]!r} but "
                         f"{b.dtype} in {names[1]!r}")
    if a.shape == b.shape:
        return a
    if len(a.shape) == 1 and len(b.shape) == 1:
        return FieldSpec(a.name, (max(a.shape[0], b.shape[0]),), a.dtype)
    raise ValueError(f"mixture: observation {a.name!r} has shape {a.shape} in {names[0]!r} but "
                     f"{b.shape} in {names[1]!r} (only 1-d fields are zero-padded)")


def _join_actions(a: ActionSpec, b: ActionSpec, names: tuple[str, str]) -> ActionSpec:
    if a.kind != b.kind:
        raise ValueError(f"mixture: {names[0]!r} has {a.kind} actions, {names[1]!r} "
                         f"{b.kind} ones")
    if a.kind == "discrete":
        return a if a.n >= b.n else b
    if a != b:
        raise ValueError(f"mixture: {a.kind} action spaces must be equal; {names[0]!r} has "
                         f"{a}, {names[1]!r} {b}")
    return a


def mixture_spec(named: list[tuple[str, EnvSpec]], name: str = MIXTURE_NAME) -> EnvSpec:
    """The joined spec of ``[(label, spec), ...]`` (rules in the module docstring);
    ValueError naming both envs and the first mismatch."""
    first_label, first = named[0]
    fields = {f.name: f for f in first.observation}
    action = first.action
    owner = {f.name: first_label for f in first.observation}
    limits = []
    for label, spec in named:
        if spec.goals is not None:
            raise ValueError(f"mixture: {label!r} has goals (multi-goal relabeling); mixtures "
                             "of goal envs are not supported")
        limits.append(spec.max_episode_steps)
        if label == first_label:
            continue
        have = {f.name for f in spec.observation}
        if have != set(fields):
            raise ValueError(f"mixture: {first_label!r} observes {sorted(fields)} but {label!r} "
                             f"observes {sorted(have)} (tasks must share field names)")
        for f in spec.observation:
            fields[f.name] = _join_fields(fields[f.name], f, (owner[f.name], label))
        action = _join_actions(action, spec.action, (first_label, label))
    limit = None if any(x is None for x in limits) else max(limits)
    return EnvSpec(name, tuple(fields[f.name] for f in first.observation), action,
                   max_episode_steps=limit,
                   extra={"mixture": [label for label, _ in named]})


class MixtureEnv(VectorEnv):
    """Built envs side by side as one VectorEnv (see the module docstring).

    Args:
      tasks: ``[(label, env), ...]``; task k owns the next ``env.num_envs`` slots.
      spec: the joined spec (default: :func:`mixture_spec` of these envs; a one-task evaluation
        env of a mixture passes the whole mixture's spec so its rows fit the same agent).
    """

    def __init__(self, tasks: list[tuple[str, VectorEnv]], spec: EnvSpec | None = None) -> None:
        for label, env in tasks:
            if env.is_async:
                raise ValueError(f"mixture: task {label!r} is an async pool (batch_size < "
                                 "num_envs); mixtures step every slot at once")
        self.tasks = tasks
        self.spec = spec if spec is not None else mixture_spec(
            [(label, env.spec) for label, env in tasks])
        for label, env in tasks:  # a given spec must hold each task's
            joined = mixture_spec([("mixture", self.spec), (label, env.spec)])
            if (joined.observation, joined.action) != (self.spec.observation,
                                                       self.spec.action):
                raise ValueError(f"mixture: task {label!r}'s spec {env.spec} does not fit the "
                                 f"given spec {self.spec}")
        counts = [env.num_envs for _, env in tasks]
        self.num_envs = int(sum(counts))
        bounds = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._ranges = [(int(bounds[k]), int(bounds[k + 1])) for k in range(len(tasks))]
        act = self.spec.action
        self._mod = [env.spec.action.n if act.kind == "discrete" and env.spec.action.n < act.n
                     else None for _, env in tasks]
        self._task_of = np.repeat(np.arange(len(tasks)), counts)
        self._lock = threading.Lock()  # pop_task_stats may run beside a collector thread
        self._ret = np.zeros(self.num_envs, np.float64)
        self._len = np.zeros(self.num_envs, np.int64)
        self._after_done = np.zeros(self.num_envs, np.bool_)
        self._finished: dict[str, list[float]] = {}
        self._closed = False

    # ---------------------------------------------------------------- observations
    def _join_obs(self, parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        out = {}
        for f in self.spec.observation:
            arrs = [p[f.name] for p in parts]
            if all(a.shape[1:] == f.shape for a in arrs):
                out[f.name] = np.concatenate(arrs) if len(arrs) > 1 else arrs[0]
                continue
            full = np.zeros((self.num_envs, *f.shape), f.dtype)
            for (lo, hi), a in zip(self._ranges, arrs):
                full[lo:hi, :a.shape[1]] = a
            out[f.name] = full
        return out

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        self._check_open()
        parts = [env.reset(None if seed is None else seed + 7919 * k)
                 for k, (_, env) in enumerate(self.tasks)]
        with self._lock:
            self._ret[:] = 0
            self._len[:] = 0
            self._after_done[:] = False
        return self._join_obs(parts)

    def step(self, actions: np.ndarray, env_ids: np.ndarray | None = None):
        self._check_open()
        if env_ids is not None:
            raise ValueError("mixture: step takes no env_ids (not an async env)")
        actions = check_actions(self.spec.action, actions, self.num_envs, self.spec.name)
        obs_parts, rewards, terms, truncs, successes = [], [], [], [], []
        have_success = False
        for k, ((_, env), (lo, hi)) in enumerate(zip(self.tasks, self._ranges)):
            a = actions[lo:hi]
            if self._mod[k] is not None:
                a = a % self._mod[k]
            obs, rew, term, trunc, info = env.step(a)
            obs_parts.append(obs)
            rewards.append(np.asarray(rew, np.float32))
            terms.append(np.asarray(term, np.bool_))
            truncs.append(np.asarray(trunc, np.bool_))
            succ = info.get("success") if isinstance(info, dict) else None
            have_success |= succ is not None
            successes.append(np.full(hi - lo, np.nan) if succ is None
                             else np.asarray(succ, np.float64))
        reward, term, trunc = np.concatenate(rewards), np.concatenate(terms), np.concatenate(truncs)
        success = np.concatenate(successes) if have_success else None
        self._count(reward, term | trunc, success)
        info: dict[str, Any] = {} if success is None else {"success": success}
        return self._join_obs(obs_parts), reward, term, trunc, info

    # ---------------------------------------------------------------- statistics
    def _count(self, reward: np.ndarray, done: np.ndarray, success: np.ndarray | None) -> None:
        with self._lock:
            live = ~self._after_done  # the step after a rollout ended is its autoreset
            self._ret[live] += reward[live]
            self._len[live] += 1
            ended = np.nonzero(done & live)[0]
            for i in ended.tolist():
                label = self.tasks[int(self._task_of[i])][0]
                self._finished.setdefault(f"return/{label}", []).append(float(self._ret[i]))
                self._finished.setdefault(f"length/{label}", []).append(float(self._len[i]))
                if success is not None and np.isfinite(success[i]):
                    self._finished.setdefault(f"success/{label}", []).append(float(success[i]))
            self._ret[~live] = 0
            self._len[~live] = 0
            self._ret[ended] = 0
            self._len[ended] = 0
            self._after_done = done & live

    def pop_task_stats(self) -> dict[str, list[float]]:
        """Per-task values of the rollouts finished since the last call, one per rollout:
        ``{"return/<label>": [...], "length/<label>": [...], "success/<label>": [...]}``."""
        with self._lock:
            out, self._finished = self._finished, {}
        return out

    def slot_groups(self) -> dict[str, list[int]]:
        """Each task's env slots (the trainer's per-group evaluation returns); empty for a
        one-task env."""
        if len(self.tasks) < 2:
            return {}
        return {label: list(range(lo, hi)) for (label, _), (lo, hi) in zip(self.tasks,
                                                                         self._ranges)}

    # ---------------------------------------------------------------- rendering, closing
    def render_slot(self, index: int) -> np.ndarray | None:
        """The frame of slot `index` from its task's env, when that env renders."""
        for (_, env), (lo, hi) in zip(self.tasks, self._ranges):
            if lo <= index < hi:
                render = getattr(env, "render_slot", None)
                return render(index - lo) if callable(render) else None
        raise IndexError(f"slot {index} of {self.num_envs}")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            for _, env in self.tasks:
                env.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("mixture env is closed")
