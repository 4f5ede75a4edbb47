"""The eight MuJoCo tasks of the Actuator Inversion Benchmark, each env slot its own morphed model.

Tasks (``make_env`` names): ``aib-walker`` (dm_control walker-walk; gravity, actuator strength),
``aib-ballincup`` (ball_in_cup-catch; gravity, cup-ball string length), ``aib-cheetah``
(cheetah-run; leg segment scale, sign flip), ``aib-reacher-easy`` / ``aib-reacher-hard`` (reacher
easy / hard; arm scale, sign flip), ``aib-cartpole`` (cartpole-balance; pole half-length, sign
flip), ``aib-walkergym`` / ``aib-hoppergym`` (gymnasium Walker2d-v5 / Hopper-v5 with
``terminate_when_unhealthy=False``; gravity, actuator strength). Factors, ranges and splits are
:data:`amago_fast.envs.aib.AIB_TASKS`; the base :class:`~amago_fast.envs.aib.AIBEnv` fixes each
slot's context, applies the sign flip to the whole action and runs the warm-up / scored episodes.

How a context becomes physics (the authors' morphs, re-implemented on the stock models):

- gravity: ``<option gravity="0 0 -g">`` (dm_control) or ``model.opt.gravity`` (gymnasium).
- actuator_strength: every actuator's gear times the factor (XML ``gear``; ``actuator_gear``).
- BallInCup distance: the string tendon's range becomes ``0 d`` and the ball body is raised by
  ``0.3 - d`` (so its start region keeps its offset to the string's end).
- Cheetah length: the six leg geoms' x/z position and half-length, and the four lower leg
  bodies' x/z position, times the factor (``settotalmass`` keeps the total mass at 14).
- Reacher length: the arm and hand capsules' x extent and the hand / finger bodies' x position
  times the factor (the target radius range stays 0.05-0.20).
- Cartpole length: the pole capsule runs from the hinge to ``2 * length`` (mass kept at 0.1).

A slot whose context differs needs its own compiled model; models are compiled once per distinct
context and copied per slot (a Reacher slot moves its target inside its model at every reset, so
slots never share one). Observations: dm_control's observation dict flattened in sorted key
order (what gymnasium's ``FlattenObservation`` of the authors' wrapper produces), the gymnasium
envs' own vector; float32. Rewards: the task's own. dm_control's time limit is infinite here:
the 1000-step episodes end by :class:`~amago_fast.envs.base.BatchedTaskEnv`'s
``episode_max_steps``.

Worker processes: the slots are split into contiguous groups, one per worker process (default
``min(num_envs, os.cpu_count())``; ``num_workers=0`` steps them in this process). A vector step
is one message per worker (actions and active mask out, rewards and observations back); the
steps that reset slots add one message to the workers holding them. Workers are started with
"spawn" (a fresh interpreter: safe while the trainer's threads and torch's thread pool run) and
stopped by :meth:`close` or garbage collection. Episode start states come from seeds drawn by
the env's own RNG in slot order, so results do not depend on the number of workers (tested
bit-exact). As with any "spawn" multiprocessing, a script
that builds these envs at its top level needs an ``if __name__ == "__main__":`` guard (the
workers import the main module). Start-up of 20 Cartpole slots in 2 workers with torch loaded
in the parent, measured on the shared 2-core VM at load average ~10: spawn 9-12 s, forkserver
10-12 s, fork 3-4.6 s; fork is not used because the parent runs threads (the trainer's collector
thread, torch's pool) and a fork copies whatever lock they hold.

Resume: :meth:`state_dict` holds, per slot, MuJoCo's full integration state (``mj_getState``
with ``mjSTATE_INTEGRATION``: time, qpos, qvel, activations, warm start, controls...) and the
model fields a task changes at reset (the Reacher target), plus the cached observations; a
restored env continues bit-exactly (tested), so these envs are snapshot envs like the other
:class:`~amago_fast.envs.base.BatchedTaskEnv` tasks.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import traceback
import weakref
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

import numpy as np

from amago_fast.envs.aib import ACTION_FACTOR, AIBEnv, get_task

__all__ = ["MUJOCO_TASKS", "AIBMujocoEnv", "mujoco_available", "morph_xml"]


@dataclass(frozen=True)
class _Backend:
    """How one AIB task is simulated: dm_control domain (or gymnasium env) and its constants."""

    kind: str  # "dm_control" or "gymnasium"
    domain: str  # dm_control suite module / gymnasium env
    obs_dim: int
    control_timestep: float | None = None  # dm_control tasks with action repeats


MUJOCO_TASKS: dict[str, _Backend] = {
    # obs: height 1 + orientations 14 + velocity 9; 10 physics steps of 2.5 ms per action
    "aib-walker": _Backend("dm_control", "walker", 24, 0.025),
    # obs: position 4 + velocity 4; 10 physics steps of 2 ms per action
    "aib-ballincup": _Backend("dm_control", "ball_in_cup", 8, 0.02),
    "aib-cheetah": _Backend("dm_control", "cheetah", 17),  # position 8 + velocity 9
    "aib-reacher-easy": _Backend("dm_control", "reacher", 6),  # position 2, to_target 2, vel 2
    "aib-reacher-hard": _Backend("dm_control", "reacher", 6),
    "aib-cartpole": _Backend("dm_control", "cartpole", 5),  # position 3 + velocity 2
    "aib-walkergym": _Backend("gymnasium", "Walker2d-v5", 17),
    "aib-hoppergym": _Backend("gymnasium", "Hopper-v5", 11),
}

# dm_control's walker-walk target speed and the two Reacher target radii (easy / hard).
_WALK_SPEED = 1.0
_REACHER_TARGET = {"aib-reacher-easy": 0.05, "aib-reacher-hard": 0.015}
_CHEETAH_LEG_GEOMS = ("bthigh", "bshin", "bfoot", "fthigh", "fshin", "ffoot")
_CHEETAH_LEG_BODIES = ("bshin", "bfoot", "fshin", "ffoot")
_CARTPOLE_POLE_MASS = 0.1
_CARTPOLE_POLE_DAMPING = 2e-6


def mujoco_available() -> str | None:
    """None when dm_control, mujoco and gymnasium's MuJoCo envs import; else why not."""
    try:
        _import_backends()
    except ImportError as e:
        return str(e)
    return None


def _import_backends() -> None:
    # Never rendered: without this dm_control probes GLFW and warns when there is no display.
    os.environ.setdefault("MUJOCO_GL", "disable")
    import dm_control.suite  # noqa: F401
    import gymnasium.envs.mujoco  # noqa: F401
    import mujoco  # noqa: F401


# --------------------------------------------------------------------------- model morphs
def _fmt(values: list[float]) -> str:
    return " ".join(repr(float(v)) for v in values)


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split()]


def _set_gravity(root: ET.Element, g: float) -> None:
    option = root.find("option")
    if option is None:
        option = ET.SubElement(root, "option")
    old = _floats(option.get("gravity", "0 0 -9.81"))
    option.set("gravity", _fmt([old[0], old[1], -g]))


def _scale_xz(elem: ET.Element, attr: str, s: float) -> None:
    x, y, z = _floats(elem.get(attr))
    elem.set(attr, _fmt([x * s, y, z * s]))


def _named(root: ET.Element, tag: str, names: tuple[str, ...]) -> list[ET.Element]:
    found = [e for e in root.iter(tag) if e.get("name") in names]
    if len(found) != len(names):
        raise RuntimeError(f"stock model lacks {tag}s {names}: dm_control version mismatch")
    return found


def morph_xml(name: str, xml: bytes | str, context: dict[str, float]) -> bytes:
    """The stock dm_control model `xml` of task `name` morphed to `context` (factor -> value);
    the action factor is not part of the model (the env flips the action)."""
    root = ET.fromstring(xml)
    if "gravity" in context:
        _set_gravity(root, context["gravity"])
    if "actuator_strength" in context:
        s = context["actuator_strength"]
        actuators = root.find("actuator")
        for act in (actuators if actuators is not None else []):
            act.set("gear", _fmt([g * s for g in _floats(act.get("gear", "1"))]))
    if name == "aib-ballincup":
        d = context["distance"]
        tendon = root.find("tendon/spatial")
        _, hi = _floats(tendon.get("range"))
        tendon.set("range", _fmt([0.0, d]))
        (ball,) = _named(root, "body", ("ball",))
        x, y, z = _floats(ball.get("pos"))
        ball.set("pos", _fmt([x, y, z + hi - d]))
    elif name == "aib-cheetah":
        s = context["length"]
        for geom in _named(root, "geom", _CHEETAH_LEG_GEOMS):
            _scale_xz(geom, "pos", s)
            radius, half = _floats(geom.get("size"))
            geom.set("size", _fmt([radius, half * s]))
        for body in _named(root, "body", _CHEETAH_LEG_BODIES):
            _scale_xz(body, "pos", s)
    elif name in ("aib-reacher-easy", "aib-reacher-hard"):
        s = context["length"]
        for body in _named(root, "body", ("hand", "finger")):
            x, y, z = _floats(body.get("pos"))
            body.set("pos", _fmt([x * s, y, z]))
        for geom in _named(root, "geom", ("arm", "hand")):
            f = _floats(geom.get("fromto"))
            f[3] *= s
            geom.set("fromto", _fmt(f))
    elif name == "aib-cartpole":
        half = context["length"]
        (pole,) = _named(root, "geom", ("pole_1",))
        pole.set("fromto", _fmt([0, 0, 0, 0, 0, 2 * half]))
        pole.set("mass", _fmt([_CARTPOLE_POLE_MASS]))
        (hinge,) = _named(root, "joint", ("hinge_1",))
        hinge.set("damping", _fmt([_CARTPOLE_POLE_DAMPING]))
    return ET.tostring(root)


# --------------------------------------------------------------------------- one env slot
class _DmcSlot:
    """One dm_control task on its own morphed model (a copy of the cached compiled one)."""

    def __init__(self, name: str, context: dict[str, float], model_cache: dict) -> None:
        import importlib

        from dm_control.mujoco import wrapper
        from dm_control.rl import control
        from dm_control.suite import common

        backend = MUJOCO_TASKS[name]
        module = importlib.import_module(f"dm_control.suite.{backend.domain}")
        key = (name, tuple(sorted(context.items())))
        if key not in model_cache:
            xml = morph_xml(name, common.read_model(f"{backend.domain}.xml"), context)
            model_cache[key] = wrapper.MjModel.from_xml_string(xml, assets=common.ASSETS)
        self.physics = module.Physics.from_model(model_cache[key].copy())
        self.random = np.random.RandomState(0)  # reseeded at every reset
        if name == "aib-walker":
            task = module.PlanarWalker(move_speed=_WALK_SPEED, random=self.random)
        elif name == "aib-ballincup":
            task = module.BallInCup(random=self.random)
        elif name == "aib-cheetah":
            task = module.Cheetah(random=self.random)
        elif name == "aib-cartpole":
            task = module.Balance(swing_up=False, sparse=False, random=self.random)
        else:
            task = module.Reacher(target_size=_REACHER_TARGET[name], random=self.random)
        self.env = control.Environment(self.physics, task, time_limit=float("inf"),
                                       control_timestep=backend.control_timestep)
        # Model fields a task rewrites at reset: the Reacher target's position and size.
        self._target = (self.physics.model.name2id("target", "geom")
                        if backend.domain == "reacher" else None)

    @staticmethod
    def _flat(obs: dict[str, Any]) -> np.ndarray:
        return np.concatenate([np.ravel(obs[k]) for k in sorted(obs)]).astype(np.float32)

    def reset(self, seed: int) -> np.ndarray:
        self.random.seed(seed)
        return self._flat(self.env.reset().observation)

    def step(self, action: np.ndarray) -> tuple[float, np.ndarray]:
        ts = self.env.step(action)
        return float(ts.reward), self._flat(ts.observation)

    def get_state(self) -> np.ndarray:
        import mujoco

        m, d = self.physics.model.ptr, self.physics.data.ptr
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        state = np.empty(mujoco.mj_stateSize(m, spec), np.float64)
        mujoco.mj_getState(m, d, state, spec)
        if self._target is not None:
            state = np.concatenate([state, m.geom_pos[self._target], m.geom_size[self._target]])
        return state

    def set_state(self, state: np.ndarray) -> None:
        import mujoco

        # A fresh dm_control Environment would answer its first step with a reset: start an
        # episode (its start state is overwritten below) so the next step continues the state.
        self.env.reset()
        m, d = self.physics.model.ptr, self.physics.data.ptr
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        n = mujoco.mj_stateSize(m, spec)
        mujoco.mj_setState(m, d, np.ascontiguousarray(state[:n]), spec)
        if self._target is not None:
            m.geom_pos[self._target] = state[n:n + 3]
            m.geom_size[self._target] = state[n + 3:n + 6]
        # dm_control's (legacy) step finishes a step with mj_step2 on the position/velocity
        # fields of the previous mj_step1: recompute them from the restored state.
        mujoco.mj_forward(m, d)


class _GymSlot:
    """One gymnasium MuJoCo env (Walker2d-v5 / Hopper-v5) with gravity and gears set in place."""

    def __init__(self, name: str, context: dict[str, float], model_cache: dict) -> None:
        if MUJOCO_TASKS[name].domain == "Walker2d-v5":
            from gymnasium.envs.mujoco.walker2d_v5 import Walker2dEnv as cls
        else:
            from gymnasium.envs.mujoco.hopper_v5 import HopperEnv as cls
        self.env = cls(terminate_when_unhealthy=False)
        model = self.env.model
        model.opt.gravity[:] = (0.0, 0.0, -context["gravity"])
        model.actuator_gear[:] *= context["actuator_strength"]

    def reset(self, seed: int) -> np.ndarray:
        obs, _ = self.env.reset(seed=seed)
        return np.asarray(obs, np.float32)

    def step(self, action: np.ndarray) -> tuple[float, np.ndarray]:
        obs, reward, _, _, _ = self.env.step(action)
        return float(reward), np.asarray(obs, np.float32)

    def get_state(self) -> np.ndarray:
        import mujoco

        m, d = self.env.model, self.env.data
        spec = mujoco.mjtState.mjSTATE_INTEGRATION
        state = np.empty(mujoco.mj_stateSize(m, spec), np.float64)
        mujoco.mj_getState(m, d, state, spec)
        return state

    def set_state(self, state: np.ndarray) -> None:
        import mujoco

        m, d = self.env.model, self.env.data
        mujoco.mj_setState(m, d, np.ascontiguousarray(state), mujoco.mjtState.mjSTATE_INTEGRATION)
        mujoco.mj_forward(m, d)


class _SlotError(Exception):
    """A slot's simulation failed: carries the global slot index and the formatted cause."""

    def __init__(self, slot: int, message: str) -> None:
        super().__init__(slot, message)
        self.slot = slot
        self.message = message


class _SlotGroup:
    """Consecutive env slots ``first .. first + len(contexts) - 1`` stepped one after another:
    what one worker process (or the env itself, with ``num_workers=0``) runs."""

    def __init__(self, name: str, contexts: np.ndarray, first: int) -> None:
        _import_backends()
        task = get_task(name)
        factors = [f for f in task.factor_names if f != ACTION_FACTOR]
        slot_cls = _DmcSlot if MUJOCO_TASKS[name].kind == "dm_control" else _GymSlot
        self.first = first
        self.obs_dim = MUJOCO_TASKS[name].obs_dim
        cache: dict = {}
        self.slots = []
        for i, row in enumerate(contexts):
            with self._blame(i):
                ctx = {f: float(v) for f, v in zip(factors, row)}
                self.slots.append(slot_cls(name, ctx, cache))
        with self._blame(0):
            self.state_size = int(self.slots[0].get_state().size)

    @contextlib.contextmanager
    def _blame(self, i: int):
        """Any failure inside becomes a _SlotError naming global slot ``first + i``."""
        try:
            yield
        except _SlotError:
            raise
        except Exception as e:  # noqa: BLE001 - re-raised with the slot named
            raise _SlotError(self.first + int(i), "".join(
                traceback.format_exception_only(type(e), e)).strip()) from e

    def step(self, actions: np.ndarray, active: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        k = len(self.slots)
        rewards = np.zeros(k, np.float32)
        obs = np.zeros((k, self.obs_dim), np.float32)
        for i in np.flatnonzero(active):
            with self._blame(i):
                rewards[i], obs[i] = self.slots[i].step(actions[i])
        return rewards, obs

    def reset(self, local: np.ndarray, seeds: np.ndarray) -> np.ndarray:
        obs = np.zeros((len(local), self.obs_dim), np.float32)
        for j, (i, s) in enumerate(zip(local, seeds)):
            with self._blame(i):
                obs[j] = self.slots[i].reset(int(s))
        return obs

    def get_state(self) -> np.ndarray:
        return np.stack([s.get_state() for s in self.slots])

    def set_state(self, states: np.ndarray) -> None:
        for i, s in enumerate(self.slots):
            with self._blame(i):
                s.set_state(states[i])


# --------------------------------------------------------------------------- worker processes
def _worker_main(conn: Any, name: str, contexts: np.ndarray, first: int) -> None:
    """A worker process: builds its slot group, then answers commands until "close" or EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and closes us
    try:
        group = _SlotGroup(name, contexts, first)
    except _SlotError as e:
        conn.send(("error", e.slot, e.message))
        return
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises
        conn.send(("error", first, f"{type(e).__name__}: {e}"))
        return
    try:
        conn.send(("ok", group.state_size))
        while True:
            cmd, args = conn.recv()
            if cmd == "close":
                conn.send(("ok", None))
                return
            try:
                reply = ("ok", getattr(group, cmd)(*args))
            except _SlotError as e:
                reply = ("error", e.slot, e.message)
            except Exception as e:  # noqa: BLE001 - not one slot's: reported on the first
                reply = ("error", first, f"{type(e).__name__}: {e}")
            conn.send(reply)
    except (EOFError, OSError):  # the parent is gone (closed its end, or died): stop quietly
        return


def _stop_workers(procs: list, conns: list) -> None:
    """Close pipes and end worker processes (also run by the env's finalizer at GC / exit)."""
    for c in conns:
        try:
            c.send(("close", ()))
        except (OSError, ValueError):
            pass
    for p in procs:
        p.join(timeout=2.0)
        if p.is_alive():
            p.terminate()
            p.join(timeout=2.0)
    for c in conns:
        c.close()


class _InProcess:
    """All slots in this process (``num_workers=0``)."""

    def __init__(self, name: str, contexts: np.ndarray) -> None:
        self.name = name
        self.group = _SlotGroup(name, contexts, 0)
        self.state_size = self.group.state_size

    def _call(self, fn, *args):
        try:
            return fn(*args)
        except _SlotError as e:
            raise RuntimeError(f"{self.name}: env slot {e.slot} failed: {e.message}") from e

    def step(self, actions, active):
        return self._call(self.group.step, actions, active)

    def reset(self, idx, seeds):
        return self._call(self.group.reset, idx, seeds)

    def get_state(self):
        return self.group.get_state()

    def set_state(self, states):
        self._call(self.group.set_state, states)

    def close(self) -> None:
        self.group = None


class _WorkerPool:
    """The slots split into contiguous groups, one per "spawn" worker process."""

    def __init__(self, name: str, contexts: np.ndarray, num_workers: int) -> None:
        self.name = name
        n = len(contexts)
        bounds = np.linspace(0, n, num_workers + 1).round().astype(np.int64)
        self.ranges = [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]
        self.owner = np.zeros(n, np.int64)
        for w, (a, b) in enumerate(self.ranges):
            self.owner[a:b] = w
        ctx = mp.get_context("spawn")
        self.procs, self.conns = [], []
        self._finalizer = weakref.finalize(self, _stop_workers, self.procs, self.conns)
        self.broken: str | None = None
        for a, b in self.ranges:
            parent, child = ctx.Pipe()
            p = ctx.Process(target=_worker_main, args=(child, name, contexts[a:b], a),
                            daemon=True, name=f"{name}-worker-{a}-{b - 1}")
            p.start()
            child.close()
            self.procs.append(p)
            self.conns.append(parent)
        sizes = [self._recv(w) for w in range(len(self.procs))]
        self.state_size = sizes[0]

    def _fail(self, message: str) -> RuntimeError:
        self.broken = message
        self.close()
        return RuntimeError(message)

    def _recv(self, w: int) -> Any:
        a, b = self.ranges[w]
        try:
            msg = self.conns[w].recv()
        except (EOFError, OSError):
            self.procs[w].join(timeout=1.0)
            raise self._fail(
                f"{self.name}: worker process {w} (env slots {a}..{b - 1}) died "
                f"(exit code {self.procs[w].exitcode})") from None
        if msg[0] == "error":
            raise self._fail(f"{self.name}: env slot {msg[1]} failed in worker process {w}: "
                             f"{msg[2]}")
        return msg[1]

    def _check(self) -> None:
        if self.broken is not None:
            raise RuntimeError(f"{self.broken} (the env is unusable; build a new one)")

    def _send(self, w: int, cmd: str, args: tuple) -> None:
        a, b = self.ranges[w]
        try:
            self.conns[w].send((cmd, args))
        except (OSError, ValueError):
            raise self._fail(f"{self.name}: worker process {w} (env slots {a}..{b - 1}) is "
                             "gone (pipe closed)") from None

    def step(self, actions, active):
        self._check()
        for w, (a, b) in enumerate(self.ranges):
            self._send(w, "step", (actions[a:b], active[a:b]))
        parts = [self._recv(w) for w in range(len(self.ranges))]
        return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))

    def reset(self, idx, seeds):
        self._check()
        workers = np.unique(self.owner[idx])
        for w in workers:
            sel = self.owner[idx] == w
            self._send(int(w), "reset", (idx[sel] - self.ranges[w][0], seeds[sel]))
        obs = None
        for w in workers:
            part = self._recv(int(w))
            if obs is None:
                obs = np.zeros((len(idx), part.shape[1]), np.float32)
            obs[self.owner[idx] == w] = part
        return obs

    def get_state(self):
        self._check()
        for w in range(len(self.ranges)):
            self._send(w, "get_state", ())
        return np.concatenate([self._recv(w) for w in range(len(self.ranges))])

    def set_state(self, states):
        self._check()
        for w, (a, b) in enumerate(self.ranges):
            self._send(w, "set_state", (states[a:b],))
        for w in range(len(self.ranges)):
            self._recv(w)

    def close(self) -> None:
        self._finalizer()


# --------------------------------------------------------------------------- the env
class AIBMujocoEnv(AIBEnv):
    """One of the eight MuJoCo AIB tasks (:data:`MUJOCO_TASKS`) as a vector env.

    Args:
        name: the task, e.g. ``"aib-cartpole"``.
        num_envs, seed, split, instances, warmup_steps, episodes_per_trial: as
            :class:`~amago_fast.envs.aib.AIBEnv`.
        num_workers: worker processes the slots are split over (at most `num_envs` start);
            None: ``min(num_envs, os.cpu_count())``; 0: every slot in this process.

    Start states: every episode start (warm-up or scored) of slot i takes the next seed of
    ``env.rng.integers(0, 2**31 - 1)`` (drawn in slot order for the slots starting together):
    dm_control's task RandomState is reseeded with it, a gymnasium env is ``reset(seed=...)``
    with it. So a slot at the default context starts exactly where the stock dm_control /
    gymnasium task seeded the same way starts (tested).
    """

    _state_fields = ("_obs", "_physics_state")

    def __init__(self, name: str, num_envs: int, seed: int = 0, split: str = "train",
                 instances: Any = None, warmup_steps: int | None = None,
                 episodes_per_trial: int = 1, num_workers: int | None = None) -> None:
        if name not in MUJOCO_TASKS:
            raise ValueError(f"unknown AIB MuJoCo env {name!r}; valid: {', '.join(MUJOCO_TASKS)}")
        if num_workers is not None and (isinstance(num_workers, bool) or not isinstance(
                num_workers, (int, np.integer)) or num_workers < 0):
            raise ValueError(f"{name}: num_workers must be an integer >= 0 or None, "
                             f"got {num_workers!r}")
        missing = mujoco_available()
        if missing is not None:
            raise ImportError(f"{name} needs dm_control and mujoco ({missing}); install them "
                              "with: pip install 'dm-control==1.0.50' 'mujoco>=3.1,<4' imageio")
        self.obs_dim = MUJOCO_TASKS[name].obs_dim
        super().__init__(name, num_envs, seed=seed, split=split, instances=instances,
                         warmup_steps=warmup_steps, episodes_per_trial=episodes_per_trial)
        physical = self.context[:, :len(self.task.factors)]
        if (physical <= 0).any():
            raise ValueError(f"{name}: context factors {[f.name for f in self.task.factors]} "
                             f"must be > 0, got {physical[(physical <= 0).any(axis=1)][0]}")
        workers = (min(self.num_envs, os.cpu_count() or 1) if num_workers is None
                   else min(int(num_workers), self.num_envs))
        self.num_workers = workers
        self._obs = np.zeros((self.num_envs, self.obs_dim), np.float32)
        self._pending: dict[int, int] = {}
        self._sim = (_InProcess(name, self.context) if workers == 0
                     else _WorkerPool(name, self.context, workers))
        self._physics_state = np.zeros((self.num_envs, self._sim.state_size), np.float64)
        self._renderers: dict[int, Any] = {}  # slot -> mujoco.Renderer (render_slot)

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the worker processes (empty with ``num_workers=0``)."""
        procs = getattr(self._sim, "procs", [])
        return [p.pid for p in procs]

    # ------------------------------------------------------------ AIBEnv physics hooks
    def _physics_reset(self, idx: np.ndarray) -> None:
        # Seeds drawn here, in slot order: start states do not depend on the worker layout.
        seeds = self.rng.integers(0, 2**31 - 1, size=len(idx))
        for i, s in zip(idx.tolist(), seeds.tolist()):
            self._pending[i] = s

    def _flush_resets(self) -> None:
        if self._pending:
            idx = np.fromiter(self._pending, np.int64, len(self._pending))
            seeds = np.fromiter(self._pending.values(), np.int64, len(self._pending))
            self._pending = {}
            self._obs[idx] = self._sim.reset(idx, seeds)

    def _physics_step(self, actions: np.ndarray, active: np.ndarray) -> np.ndarray:
        self._flush_resets()
        rewards, obs = self._sim.step(actions, active)
        self._obs[active] = obs[active]
        return rewards

    def _physics_obs(self) -> np.ndarray:
        self._flush_resets()
        return self._obs.copy()

    # ------------------------------------------------------------ resume
    def state_dict(self) -> dict[str, Any]:
        """BatchedTaskEnv's state plus every slot's MuJoCo state and cached observation."""
        self._check_open()
        self._flush_resets()
        self._physics_state = self._sim.get_state()
        state = super().state_dict()
        state["task"] = self.task.name
        state["context"] = self.context.copy()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()` of an env of the same task, contexts and slot count."""
        self._check_open()
        if state.get("task") != self.task.name:
            raise ValueError(f"state is for {state.get('task')!r}, not {self.task.name!r}")
        ctx = np.asarray(state.get("context"))
        if ctx.shape != self.context.shape or not np.array_equal(ctx, self.context):
            raise ValueError(f"{self.task.name}: state was saved with other contexts (split or "
                             "instances differ)")
        super().load_state_dict(state)
        self._pending = {}
        self._sim.set_state(self._physics_state)

    def render_slot(self, index: int, height: int = 240, width: int = 320) -> np.ndarray | None:
        """Slot `index`'s current frame as (H, W, 3) uint8 from the model's first camera (the
        tracking camera of walker / cheetah / Walker2d), or None when the slots run in worker
        processes (``num_workers=0`` keeps them here; ``amago-fast eval --video`` builds it
        so). Needs an OpenGL backend: ``MUJOCO_GL=egl`` (headless) or ``glfw``."""
        import mujoco

        self._check_open()
        group = getattr(self._sim, "group", None)
        if group is None:
            return None
        self._flush_resets()
        slot = group.slots[index]
        if isinstance(slot, _DmcSlot):
            model, data = slot.physics.model.ptr, slot.physics.data.ptr
        else:
            model, data = slot.env.model, slot.env.data
        renderer = self._renderers.get(index)
        if renderer is None:
            renderer = self._renderers[index] = mujoco.Renderer(model, height, width)
        renderer.update_scene(data, camera=0 if model.ncam > 0 else -1)
        return np.asarray(renderer.render(), np.uint8)

    def close(self) -> None:
        if not self._closed:
            for renderer in self._renderers.values():
                renderer.close()
            self._renderers = {}
            self._sim.close()
        super().close()
