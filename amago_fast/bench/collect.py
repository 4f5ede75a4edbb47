"""Collection throughput: raw env stepping vs our collector (random actions, MLP, Agent).

For each env (EnvPool CartPole-v1, EnvPool BallInCupCatch-v1, built-in passive T-Maze), each N
and each mode (sync; async = EnvPool with batch_size N/2), in one run and interleaved:

- ``raw``: the env stepped directly with uniform random actions (EnvPool's own ``step`` /
  ``send+recv``; for the built-in task our NumPy env's ``step``) — the baseline;
- ``raw_direct`` (EnvPool only): the same loop through the pool's C++ ``_send``/``_recv``, as
  our EnvPoolEnv calls them — ``*_ratio_vs_raw_direct`` is then the framework's own cost alone
  (EnvPool's public API spends ~20–35 µs of Python per call that our adapter skips);
- ``collector_random``: our Collector + RandomPolicy, no buffer (framework overhead);
- ``collector_random_buffer``: the same writing into a TrajectoryBuffer;
- ``collector_mlp``: a small torch MLP policy (2x64) with a buffer;
- ``collector_agent_tiny`` / ``collector_agent_default``: the amago_fast Agent (if importable);
  async mode passes ``env_ids`` to ``Agent.act``.

Two more modes print where the collector's time goes: ``--overhead`` (main-thread CPU µs per
vector step over a :class:`ReplayEnv` that replays recorded env outputs at ~zero cost: what the
framework adds, insensitive to other processes' load) and ``--breakdown`` (the real collector
step's µs split into env / policy / buffer / collector bookkeeping, next to the raw step).

Steps/s count env steps processed (vector steps x batch size), the same unit as the raw loop.
Each figure is the median over `repeats` rounds of short interleaved slices (~`seconds` each,
every method once per round, the shared machine's load changing on a scale of seconds); ratios
are against ``raw`` of the same env/N/mode. ``act_step`` and ``policy_context`` (the policy's
per-step cost apart from env and buffer) come from :mod:`amago_fast.bench.policy_step`.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from typing import Any

import numpy as np

from amago_fast.bench.policy_step import act_step_cost, agent_policy, policy_context_cost
from amago_fast.collector import Collector, RandomPolicy, random_actions
from amago_fast.envs import make_env
from amago_fast.envs.base import VectorEnv, check_actions

warnings.filterwarnings("ignore", message=".*precision lowered.*")

ENVS = {
    "CartPole-v1": ("envpool:CartPole-v1", {}),
    "BallInCupCatch-v1": ("envpool:BallInCupCatch-v1", {}),
    "tmaze-passive": ("tmaze-passive", {"corridor_length": 50}),
}


class MLPPolicy:
    """A small torch MLP over the flattened float observation keys (a stand-in policy)."""

    def __init__(self, spec, hidden: int = 64, seed: int = 0) -> None:
        import torch

        torch.manual_seed(seed)
        self.torch = torch
        self.spec = spec
        self.keys = [f.name for f in spec.observation]
        in_dim = sum(int(np.prod(f.shape)) for f in spec.observation)
        a = spec.action
        out = a.n if a.kind == "discrete" else a.shape[0]
        self.net = torch.nn.Sequential(
            torch.nn.Linear(in_dim, hidden), torch.nn.Tanh(),
            torch.nn.Linear(hidden, hidden), torch.nn.Tanh(),
            torch.nn.Linear(hidden, out),
        )
        self.gen = torch.Generator().manual_seed(seed)
        if a.kind == "continuous":
            self.low = torch.tensor(a.low)
            self.high = torch.tensor(a.high)

    def init_state(self, num_envs: int):
        return None

    def reset_state(self, state, env_ids):
        return state

    def act(self, rows, state, sample=True, env_ids=None):
        torch = self.torch
        n = rows["time_index"].shape[0]
        x = np.concatenate([rows[k].reshape(n, -1).astype(np.float32) for k in self.keys], 1)
        with torch.no_grad():
            out = self.net(torch.from_numpy(x))
            if self.spec.action.kind == "discrete":
                if sample:
                    a = torch.multinomial(torch.softmax(out, -1), 1, generator=self.gen)[:, 0]
                else:
                    a = out.argmax(-1)
                return a.numpy().astype(np.int32), state
            mean = torch.tanh(out)
            if sample:
                mean = (mean + 0.1 * torch.randn(mean.shape, generator=self.gen)).clamp(-1, 1)
            act = self.low + (mean + 1) * 0.5 * (self.high - self.low)
            return act.numpy().astype(np.float32), state


def _random_actions(spec, n: int, rng: np.random.Generator) -> np.ndarray:
    # The same sampler as RandomPolicy, so both sides of the ratio draw actions alike.
    return random_actions(spec.action, n, rng)


class RawStepper:
    """Steps an env directly with uniform random actions, keeping its state between timing
    slices so slices can be interleaved with the collectors'. EnvPool: its own public API
    (``step`` / ``send`` + ``recv``) — the baseline of the target — or, with ``direct``, the
    pool's C++ ``_send``/``_recv`` as our EnvPoolEnv calls them (what is left of the ratio then
    is the framework's own cost)."""

    def __init__(self, env: VectorEnv, direct: bool = False) -> None:
        self.env = env
        self.rng = np.random.default_rng(0)
        self.pool = getattr(env, "pool", None)
        self.direct = getattr(env, "direct_plan", None) if direct else None
        if direct and self.direct is None:
            raise ValueError(f"{env.spec.name}: no direct EnvPool calls to time")
        self.info = None
        if self.pool is not None and env.is_async:
            self.pool.async_reset()
            _, _, _, _, self.info = self.pool.recv()
        elif self.pool is not None:
            self.pool.reset()
        else:
            env.reset()
        self.ids32 = (np.asarray(self.info["env_id"], np.int32) if self.info is not None
                      else np.arange(env.num_envs, dtype=np.int32))
        dtype = np.int32 if env.spec.action.is_discrete else np.float32
        self.cast = (lambda a: a.astype(dtype)) if self.pool is None else (lambda a: a)

    def slice(self, seconds: float) -> tuple[int, float]:
        """Step for ~`seconds` (at least 10 vector steps); returns (env steps, elapsed)."""
        env, pool, spec, rng, direct = self.env, self.pool, self.env.spec, self.rng, self.direct
        steps = 0
        t0 = time.perf_counter()
        while True:
            for _ in range(10):
                if direct is not None:
                    direct.send(_random_actions(spec, env.batch_size, rng), self.ids32)
                    self.ids32 = direct.recv()[4]
                elif pool is not None and env.is_async:
                    pool.send(_random_actions(spec, env.batch_size, rng), self.info["env_id"])
                    _, _, _, _, self.info = pool.recv()
                elif pool is not None:
                    pool.step(_random_actions(spec, env.num_envs, rng))
                else:
                    env.step(self.cast(_random_actions(spec, env.num_envs, rng)))
            steps += 10 * env.batch_size
            dt = time.perf_counter() - t0
            if dt >= seconds:
                return steps, dt


def _collector_slice(col: Collector, seconds: float,
                     nonfinite: dict[str, int] | None = None) -> tuple[int, float]:
    """Collect for ~`seconds` (at least 5 vector steps); returns (env steps, elapsed).
    `nonfinite["steps"]` counts the non-finite env rows flagged meanwhile."""
    chunk = 5 * col.env.batch_size
    vec = 0
    t0 = time.perf_counter()
    while True:
        stats = col.collect(chunk)
        vec += stats["vector_steps"]
        if nonfinite is not None:
            nonfinite["steps"] += stats["nonfinite_steps"]
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return vec * col.env.batch_size, dt


def _buffer(spec, n):
    from amago_fast.buffer import TrajectoryBuffer

    return TrajectoryBuffer.from_env_spec(spec, 2_000_000, n)


class _Timed:
    """Wraps a bound method, accumulating its wall time (the wrapper adds ~0.3 µs a call).
    `inner`: timers whose calls may nest inside this one's; their time spent while this one
    runs is kept in ``nested`` (so an exclusive figure can be taken)."""

    def __init__(self, fn, inner: tuple[_Timed, ...] = ()) -> None:
        self.fn = fn
        self.seconds = 0.0
        self.nested = 0.0
        self.inner = inner

    def __call__(self, *args, **kwargs):
        before = sum(t.seconds for t in self.inner)
        t0 = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0
            self.nested += sum(t.seconds for t in self.inner) - before


def _configurations(envs, num_envs, modes):
    """(env_key, env id, kwargs, N, mode, extra make_env kwargs) for every benchmarked case;
    async runs EnvPool only, with batches of N/2."""
    for env_key in envs:
        name, kw = ENVS[env_key]
        for n in num_envs:
            for mode in modes:
                if mode == "async" and not name.startswith("envpool:"):
                    continue
                extra = {"batch_size": n // 2} if mode == "async" else {}
                yield env_key, name, kw, n, mode, extra


def overhead_breakdown(
    envs: tuple[str, ...] = tuple(ENVS),
    num_envs: tuple[int, ...] = (8, 64),
    modes: tuple[str, ...] = ("sync", "async"),
    seconds: float = 0.05,
    repeats: int = 15,
) -> list[dict[str, Any]]:
    """Where the time of one collector vector step goes (Collector + RandomPolicy + buffer).

    Per configuration, interleaved with the raw loop as in :func:`run`: medians of µs per
    vector step for ``raw`` (the baseline) and the collector's step split into ``env`` (its
    env step call, or send + recv for EnvPool: the backend plus our adapter's conversions),
    ``policy`` (RandomPolicy.act, the same sampler the raw loop uses), ``buffer`` (separate
    buffer calls: write_step / reset_envs / append_step), ``bookkeeping`` (the absorb pass:
    per-env state, non-finite screen and, where the write is fused into it, the buffer write)
    and ``collector`` (everything else: validation, policy rows, statistics).
    ``budget_for_0.8x_us`` is what the collector may add to ``raw`` and still reach 0.8x.
    """
    out = []
    for env_key, name, kw, n, mode, extra in _configurations(envs, num_envs, modes):
        env = make_env(name, n, seed=0, **kw, **extra)
        buf = _buffer(env.spec, n)
        col = Collector(env, RandomPolicy(env.spec), buf)
        raw_env = make_env(name, n, seed=0, **kw, **extra)
        raw = RawStepper(raw_env)
        r = col.rollouts
        writes = {"write_step": _Timed(buf.write_step), "reset_envs": _Timed(buf.reset_envs),
                  "append_step": _Timed(buf.append_step)}
        buf.write_step, buf.reset_envs, buf.append_step = (
            writes["write_step"], writes["reset_envs"], writes["append_step"])
        if r.buffer_write_step is not None:
            r.buffer_write_step = buf.write_step  # bound at construction
        inner = tuple(writes.values())
        parts = {"env": _Timed(r.env_step), "policy": _Timed(col.policy.act),
                 "absorb": _Timed(r.absorb, inner), "absorb_async": _Timed(r.absorb_async, inner),
                 **writes}
        r.env_step = parts["env"]
        col.policy.act = parts["policy"]
        r.absorb, r.absorb_async = parts["absorb"], parts["absorb_async"]
        if r.split is not None:  # EnvPool: send, (write,) recv
            parts["send"], parts["recv"] = _Timed(r.split[0]), _Timed(r.split[1])
            r.split = (parts["send"], parts["recv"])
        raw.slice(0.0)
        _collector_slice(col, 0.0)
        rows: dict[str, list[float]] = {k: [] for k in
                                        ("raw", "total", "env", "policy", "buffer",
                                         "bookkeeping", "collector")}
        for _ in range(repeats):
            steps, dt = raw.slice(seconds)
            rows["raw"].append(dt / (steps / env.batch_size) * 1e6)
            for t in parts.values():
                t.seconds = t.nested = 0.0
            steps, dt = _collector_slice(col, seconds)
            vec = steps / env.batch_size
            us = {k: t.seconds / vec * 1e6 for k, t in parts.items()}
            nested = (parts["absorb"].nested + parts["absorb_async"].nested) / vec * 1e6
            total = dt / vec * 1e6
            env_us = us["env"] + us.get("send", 0.0) + us.get("recv", 0.0)
            buffer_us = us["write_step"] + us["reset_envs"] + us["append_step"]
            book_us = us["absorb"] + us["absorb_async"] - nested
            rows["total"].append(total)
            rows["env"].append(env_us)
            rows["policy"].append(us["policy"])
            rows["buffer"].append(buffer_us)
            rows["bookkeeping"].append(book_us)
            rows["collector"].append(total - env_us - us["policy"] - buffer_us - book_us)
        raw_env.close()
        env.close()
        med = {f"{k}_us": float(np.median(v)) for k, v in rows.items()}
        row = {"env": env_key, "num_envs": n, "mode": mode, "batch": env.batch_size,
               **med, "budget_for_0.8x_us": med["raw_us"] * 0.25}
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


class ReplayEnv(VectorEnv):
    """Replays `steps` recorded outputs of a real env at ~zero cost (dict copies), so a loop
    over it times the framework around the env alone. Its ``step`` validates the actions as a
    real env does; ``step_trusted`` (what the collector calls) does not."""

    def __init__(self, real: VectorEnv, steps: int = 256, seed: int = 0) -> None:
        self.spec, self.num_envs, self.is_async = real.spec, real.num_envs, real.is_async
        self._batch = real.batch_size
        rng = np.random.default_rng(seed)
        self._first = real.reset()
        self._first_ids = np.asarray(getattr(real, "last_env_ids", np.arange(self._batch)))
        self.last_env_ids = self._first_ids
        self._record = []
        ids = self._first_ids
        for _ in range(steps):
            a = random_actions(real.spec.action, self._batch, rng)
            out = real.step(a, ids) if real.is_async else real.step(a)
            ids = out[4].get("env_id", ids)
            self._record.append(out)
        self._t = 0

    @property
    def batch_size(self) -> int:
        return self._batch

    def reset(self, seed: int | None = None) -> dict[str, np.ndarray]:
        self.last_env_ids = self._first_ids
        return dict(self._first)

    def step(self, actions, env_ids=None):
        actions = check_actions(self.spec.action, actions, self._batch, self.spec.name)
        return self.step_trusted(actions, env_ids)

    def step_trusted(self, actions, env_ids=None):
        obs, reward, term, trunc, info = self._record[self._t % len(self._record)]
        self._t += 1
        self.last_env_ids = info.get("env_id", self._first_ids)
        return dict(obs), reward, term, trunc, dict(info)


def framework_overhead(
    envs: tuple[str, ...] = tuple(ENVS),
    num_envs: tuple[int, ...] = (8, 64),
    modes: tuple[str, ...] = ("sync", "async"),
    repeats: int = 60,
    vec_steps: int = 50,
) -> list[dict[str, Any]]:
    """Main-thread CPU µs per vector step around a :class:`ReplayEnv` (no env cost): ``bare``
    (draw random actions + replayed step, what a raw loop does besides the env), the collector
    with RandomPolicy, and the same with a buffer. CPU time of this thread, minimum and median
    over `repeats` chunks of ~`vec_steps` vector steps: insensitive to other processes' load
    (the wall-clock ratios of :func:`run` are not), and the quantity issue 5 is about — what
    the framework adds per vector step."""
    out = []
    for env_key, name, kw, n, mode, extra in _configurations(envs, num_envs, modes):
        real = make_env(name, n, seed=0, **kw, **extra)
        env = ReplayEnv(real)
        real.close()
        b = env.batch_size
        cols = {"collector_random": Collector(env, RandomPolicy(env.spec)),
                "collector_random_buffer": Collector(env, RandomPolicy(env.spec),
                                                     _buffer(env.spec, n))}
        for c in cols.values():
            c.collect(10 * b)
        rng = np.random.default_rng(0)
        ids = env.last_env_ids
        cpu: dict[str, list[float]] = {"bare": [], **{k: [] for k in cols}}
        for _ in range(repeats):
            t0 = time.thread_time()
            for _ in range(vec_steps):
                a = random_actions(env.spec.action, b, rng)
                ids = env.step_trusted(a, ids if env.is_async else None)[4].get(
                    "env_id", ids)
            cpu["bare"].append((time.thread_time() - t0) / vec_steps * 1e6)
            for k, c in cols.items():
                t0 = time.thread_time()
                vec = 0
                while vec < vec_steps:
                    vec += c.collect(5 * b)["vector_steps"]
                cpu[k].append((time.thread_time() - t0) / vec * 1e6)
        row: dict[str, Any] = {"env": env_key, "num_envs": n, "mode": mode, "batch": b}
        for k, v in cpu.items():
            row[f"{k}_cpu_us_min"] = float(np.min(v))
            row[f"{k}_cpu_us_median"] = float(np.median(v))
        for k in cols:
            row[f"{k}_overhead_us_min"] = row[f"{k}_cpu_us_min"] - row["bare_cpu_us_min"]
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def run(
    envs: tuple[str, ...] = tuple(ENVS),
    num_envs: tuple[int, ...] = (8, 64),
    modes: tuple[str, ...] = ("sync", "async"),
    seconds: float = 0.05,
    repeats: int = 15,
    agents: bool = True,
    context_check: bool = True,
    torch_threads: int = 1,
) -> dict[str, Any]:
    """Measure every configuration (see the module docstring); returns a JSON-able dict.

    `torch_threads` = 1 by default: for per-step inference on small batches intra-op threads
    only add synchronisation (measured 13.7 ms vs 1.2 ms per MLP step with 2 vs 1 threads on the
    shared 2-core machine).
    """
    import torch

    torch.set_num_threads(torch_threads)

    results = []
    for env_key, name, kw, n, mode, extra in _configurations(envs, num_envs, modes):
        # One env instance per measurement, so none of them disturbs another's pool.
        def fresh(name=name, n=n, kw=kw, extra=extra):
            return make_env(name, n, seed=0, **kw, **extra)

        probe = fresh()
        spec = probe.spec
        probe.close()
        # nan_policy="flag": a MuJoCo env can, rarely, return a non-finite observation
        # (seen once for BallInCupCatch-v1 in a warm-up); a benchmark counts it
        # (row "nonfinite_steps") instead of stopping.
        cols = {
            "collector_random": Collector(fresh(), RandomPolicy(spec), nan_policy="flag"),
            "collector_random_buffer": Collector(fresh(), RandomPolicy(spec),
                                                 _buffer(spec, n), nan_policy="flag"),
            "collector_mlp": Collector(fresh(), MLPPolicy(spec), _buffer(spec, n),
                                       nan_policy="flag"),
        }
        if agents and env_key != "BallInCupCatch-v1":
            for size in ("tiny", "default"):
                ag = agent_policy(spec, size)
                if ag is not None:
                    cols[f"collector_agent_{size}"] = Collector(
                        fresh(), ag, _buffer(spec, n), nan_policy="flag")
        raws = {"raw": RawStepper(fresh())}
        if getattr(raws["raw"].env, "direct_plan", None) is not None:
            raws["raw_direct"] = RawStepper(fresh(), direct=True)
        times: dict[str, list[float]] = {**{k: [] for k in raws}, **{k: [] for k in cols}}
        nonfinite = {"steps": 0}
        with torch.no_grad():
            for raw in raws.values():
                raw.slice(0.0)  # warm-up: first reset, buffer allocation
            for c in cols.values():
                _collector_slice(c, 0.0, nonfinite)
            # Short slices, interleaved, many times: the shared machine's load changes
            # on a scale of seconds, so each method sees the same mix of it.
            for _ in range(repeats):
                for k, raw in raws.items():
                    steps, dt = raw.slice(seconds)
                    times[k].append(steps / dt)
                for k, c in cols.items():
                    steps, dt = _collector_slice(c, seconds, nonfinite)
                    times[k].append(steps / dt)
        for raw in raws.values():
            raw.env.close()
        for c in cols.values():
            c.env.close()
        med = {k: float(np.median(v)) for k, v in times.items()}
        row = {"env": env_key, "num_envs": n, "mode": mode,
               "raw_steps_per_s": med["raw"], "nonfinite_steps": nonfinite["steps"]}
        if "raw_direct" in med:
            row["raw_direct_steps_per_s"] = med["raw_direct"]
        for k in cols:
            row[f"{k}_steps_per_s"] = med[k]
            row[f"{k}_ratio_vs_raw"] = med[k] / med["raw"]
            if "raw_direct" in med:
                row[f"{k}_ratio_vs_raw_direct"] = med[k] / med["raw_direct"]
        results.append(row)
        print(json.dumps(row), flush=True)
    out: dict[str, Any] = {
        "machine": f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}",
        "seconds_per_timing": seconds,
        "repeats": repeats,
        "results": results,
    }
    if context_check and agents:
        out["act_step"] = act_step_cost()
        out["policy_context"] = policy_context_cost()
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--envs", nargs="+", default=list(ENVS), choices=list(ENVS))
    p.add_argument("--num-envs", nargs="+", type=int, default=[8, 64])
    p.add_argument("--modes", nargs="+", default=["sync", "async"], choices=["sync", "async"])
    p.add_argument("--seconds", type=float, default=0.05, help="length of one timing slice")
    p.add_argument("--repeats", type=int, default=15, help="interleaved slices per method")
    p.add_argument("--no-agents", action="store_true")
    p.add_argument("--no-context-check", action="store_true")
    p.add_argument("--torch-threads", type=int, default=1)
    p.add_argument("--context-only", action="store_true",
                   help="only the Agent step checks (act_step, policy_context)")
    p.add_argument("--context-device", default="cpu",
                   help="device for --context-only's policy_context check (e.g. cuda: then "
                        "only that check runs; act_step compares CPU paths)")
    p.add_argument("--act-only", action="store_true",
                   help="only act_step: Agent.act, native step vs PyTorch path")
    p.add_argument("--act-env", default="tmaze-passive",
                   help="env id for --act-only (e.g. gym:popgym-MineSweeperEasy-v0)")
    p.add_argument("--act-import", nargs="*", default=[],
                   help="modules to import first (registering --act-env, e.g. popgym)")
    p.add_argument("--act-sizes", nargs="+", default=["tiny", "default", "tiny_gru",
                                                      "default_gru"])
    p.add_argument("--overhead", action="store_true",
                   help="only the framework's CPU µs per vector step over a replayed env")
    p.add_argument("--breakdown", action="store_true",
                   help="only the per-step µs split of the collector step (overhead_breakdown)")
    a = p.parse_args(argv)
    if a.overhead:
        print(json.dumps({"machine": f"{os.cpu_count()} CPU cores",
                          "overhead": framework_overhead(tuple(a.envs), tuple(a.num_envs),
                                                         tuple(a.modes))}, indent=1))
        return
    if a.breakdown:
        print(json.dumps({"machine": f"{os.cpu_count()} CPU cores",
                          "seconds_per_timing": a.seconds, "repeats": a.repeats,
                          "breakdown": overhead_breakdown(tuple(a.envs), tuple(a.num_envs),
                                                          tuple(a.modes), a.seconds,
                                                          a.repeats)}, indent=1))
        return
    if a.act_only:
        import importlib

        import torch

        for mod in a.act_import:
            importlib.import_module(mod)
        torch.set_num_threads(a.torch_threads)
        print(json.dumps({"machine": f"{os.cpu_count()} CPU cores, torch threads "
                                     f"{torch.get_num_threads()}", "env": a.act_env,
                          "act_step": act_step_cost(sizes=tuple(a.act_sizes),
                                                    num_envs=tuple(a.num_envs),
                                                    env_name=a.act_env)}, indent=1))
        return
    if a.context_only:
        import torch

        torch.set_num_threads(a.torch_threads)
        machine = f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}"
        if torch.device(a.context_device).type != "cpu":
            name = torch.cuda.get_device_name() if torch.cuda.is_available() else "?"
            print(json.dumps({"machine": f"{machine}, {name}", "policy_context":
                              policy_context_cost(device=a.context_device)}, indent=1))
            return
        print(json.dumps({"machine": machine, "act_step": act_step_cost(),
                          "policy_context": policy_context_cost()}, indent=1))
        return
    res = run(tuple(a.envs), tuple(a.num_envs), tuple(a.modes), a.seconds, a.repeats,
              not a.no_agents, not a.no_context_check, a.torch_threads)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
