"""Per-step policy cost: ``Agent.act`` on the native step vs the PyTorch rollout path and the
plain modules (``act_step_cost``), and its growth with the filled context (``policy_context_cost``).

These are the policy's share of a collector step, measured apart from the env and the buffer;
``amago_fast.bench.collect`` runs them with ``--act-only`` / ``--context-only`` and, by default,
the context check after its throughput table (``benchmarks/bench_collect.py``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from amago_fast.collector import random_actions
from amago_fast.envs import make_env


def agent_policy(spec, size: str, context_len: int | None = None):
    """An eval-mode Agent for ``spec``: ``tiny`` (d_model 64, 2 layers), ``default`` (AgentConfig's
    defaults), or either with ``_gru`` (the GRU trajectory encoder); None when the Agent cannot be
    imported (the benchmarks then skip its rows)."""
    try:
        from amago_fast.agent import Agent, AgentConfig
    except Exception:  # noqa: BLE001 - the Agent is another part; absent -> skipped
        return None
    # "<size>_gru": the same model with the GRU trajectory encoder (AgentConfig.traj_encoder).
    base, _, enc = size.partition("_")
    extra = {"traj_encoder": enc} if enc else {}
    if base == "tiny":
        cfg = AgentConfig(d_model=64, num_layers=2, num_heads=4, context_len=context_len or 64,
                          tstep_hidden=64, tstep_out=64, actor_hidden=64, critic_hidden=64,
                          **extra)
    elif base == "default":
        cfg = AgentConfig(**extra) if context_len is None else AgentConfig(
            context_len=context_len, **extra)
    else:
        raise ValueError(f"unknown agent size {size!r}: tiny, default, tiny_gru or default_gru")
    agent = Agent(spec, cfg)
    agent.eval()
    return agent


def native_available() -> bool:
    """Whether the native policy step is built (its rows are measured only then)."""
    try:
        from amago_fast.nets.native_step import available
    except Exception:  # noqa: BLE001 - the Agent is another part; absent -> skipped
        return False
    return available()


def _rollout_stepper(agent, env):
    """A closure that takes one sync step of ``env`` (8 envs, no resets: the corridor is longer
    than the run) with ``agent.act`` and returns the seconds ``act`` took."""
    n = env.num_envs
    obs = env.reset()
    state = agent.init_state(n)
    act = np.zeros(n, np.int32)
    rew = np.zeros(n, np.float32)
    t = 0

    def step() -> float:
        nonlocal obs, state, act, rew, t
        rows = dict(obs, action=act, reward=rew, time_index=np.full(n, t, np.int64))
        t0 = time.perf_counter()
        act, state = agent.act(rows, state, sample=True)
        dt = time.perf_counter() - t0
        obs, rew, *_ = env.step(np.asarray(act, np.int32))
        t += 1
        return dt

    return step


def policy_context_cost(steps_lo: int = 64, steps_hi: int = 1024, measure: int = 64,
                        sizes: tuple[str, ...] = ("tiny", "default"), device: str = "cpu"
                        ) -> dict:
    """Per-step ``Agent.act`` time (8 envs) at rollout step ~steps_lo vs ~steps_hi, for the
    native step (``amago_fast.nets.native_step``) and the PyTorch rollout path.

    Two rollouts of the same agent (own envs, own states): one is first driven to step
    ``steps_hi``, the other to ``steps_lo``; then they are stepped alternately ``measure`` times
    and the medians compared — both medians come from the same seconds of this noisy machine
    (timed one after the other, the step-64 time alone moved 0.20-0.34 ms between runs).

    Settings per model size: the cache capacity (context_len) = ``steps_hi`` with the default
    KV cache ("auto": float16 on the native step, float32 on the PyTorch path) — attention
    reads the filled prefix, so the step at t=steps_hi reads 16x more keys than at
    t=steps_lo — the same with a float32 and with an int8 cache, and the model's default
    context_len — both times past the capacity, so "flat" (cost set by the capacity C, not by
    the steps taken) means a ratio ~1.

    ``device="cuda"``: the agent on the GPU (the PyTorch rollout path with the Triton decode;
    the time includes copying the actions back, as the collector does).
    """
    import torch

    out: dict[str, Any] = {"device": device}
    on_cpu = torch.device(device).type == "cpu"
    paths = ("native", "torch") if on_cpu and native_available() else ("torch",)
    for size in sizes:
        for label, ctx, kv in (("capacity_hi", steps_hi, None),
                               ("capacity_hi_kv_float32", steps_hi, "float32"),
                               ("capacity_hi_kv_int8", steps_hi, "int8"),
                               ("default_context", None, None)):
            row: dict[str, Any] = {}
            for path in paths:
                if size == "default" and ctx == steps_hi and path == "torch" and on_cpu:
                    # ~10 ms/step x 1100 steps on this machine; the native run shows the model.
                    row[path] = "skipped (slow)"
                    continue
                try:
                    row[path] = _context_row(size, ctx, kv, path, device, steps_lo, steps_hi,
                                             measure, row)
                except Exception as exc:  # one path/dtype failing must not lose the others
                    row[path] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            out[f"{size}_{label}"] = row
    return out


def _context_row(size: str, ctx: int | None, kv: str | None, path: str, device: str,
                 steps_lo: int, steps_hi: int, measure: int, row: dict) -> dict:
    """One ``policy_context_cost`` measurement (see there); sets ``row["context_len"]``."""
    import torch

    env_lo = make_env("tmaze-passive", 8, corridor_length=4 * steps_hi)
    env_hi = make_env("tmaze-passive", 8, corridor_length=4 * steps_hi)
    agent = agent_policy(env_lo.spec, size, context_len=ctx)
    if agent is None:
        raise ImportError("amago_fast.agent not importable")
    agent.to(device)
    if kv is not None:
        agent.config.kv_cache_dtype = kv  # read by init_state
    agent.use_native_step = path == "native"
    lo, hi = _rollout_stepper(agent, env_lo), _rollout_stepper(agent, env_hi)
    t_lo: list[float] = []
    t_hi: list[float] = []
    with torch.no_grad():
        for _ in range(steps_hi):
            hi()
        for _ in range(steps_lo):
            lo()
        for _ in range(measure):
            t_lo.append(lo())
            t_hi.append(hi())
    m_lo, m_hi = float(np.median(t_lo)), float(np.median(t_hi))
    row["context_len"] = agent.config.context_len
    kv_dtype = agent.rollout_kv_dtype()
    # Cached keys+values attention reads per 8-env step at each time, and the rate
    # at which the step-hi step reads its extra ones: what bounds the ratio on CPU.
    cfg = agent.config
    # (int8: one byte an element plus a float32 scale per head and key/value row)
    per_key = 2 * cfg.num_layers * (
        cfg.d_model * torch.empty((), dtype=kv_dtype).element_size()
        + (4 * cfg.num_heads if kv_dtype == torch.int8 else 0))
    keys_lo = env_lo.num_envs * min(steps_lo + 1, cfg.context_len)
    keys_hi = env_hi.num_envs * min(steps_hi + 1, cfg.context_len)
    extra_s = m_hi - m_lo
    return {
        "kv_cache_dtype": str(kv_dtype).removeprefix("torch."),
        f"ms_per_step_at_t{steps_lo}": m_lo * 1e3,
        f"ms_per_step_at_t{steps_hi}": m_hi * 1e3,
        "ratio": m_hi / m_lo,
        f"kv_mb_read_at_t{steps_hi}": keys_hi * per_key / 1e6,
        "extra_kv_gb_per_s": ((keys_hi - keys_lo) * per_key / extra_s / 1e9
                              if extra_s > 0 and keys_hi > keys_lo else None),
    }


def act_step_cost(steps: int = 300,
                  sizes: tuple[str, ...] = ("tiny", "default", "tiny_gru", "default_gru"),
                  num_envs: tuple[int, ...] = (8, 64), env_name: str = "tmaze-passive") -> dict:
    """Per-step ``Agent.act`` (sync, past the cache capacity): the native step vs the PyTorch
    rollout path (``agent.use_native_step = False``, the baseline) and, at 8 envs, vs the same
    step through the plain modules — ``TimestepEncoder.forward``, the trajectory encoder's
    ``step`` (Transformer: σ-reparam weights recomputed; per-key tensor conversion) and the
    actor — interleaved call by call on twin states; medians and speedups. 64 envs: steps
    130..160 only (the PyTorch default model takes ~40 ms a step here). ``*_gru`` sizes: the
    GRU trajectory encoder (its hidden state instead of the KV cache). ``env_name``: any
    ``make_env`` id (default the passive T-Maze, its corridor longer than the run)."""
    import copy

    import torch

    native = native_available()
    out: dict[str, Any] = {}
    for size in sizes:
        for n in num_envs:
            total, first = (steps, 100) if n <= 8 else (160, 130)
            kw = {"corridor_length": 4 * total} if env_name == "tmaze-passive" else {}
            env = make_env(env_name, n, **kw)
            agent = agent_policy(env.spec, size)
            if agent is None:
                return {"skipped": "amago_fast.agent not importable"}
            obs = env.reset()
            s_nat = agent.init_state(n)
            s_torch = copy.deepcopy(s_nat)
            twin = copy.deepcopy(s_nat)
            act = random_actions(env.spec.action, n, np.random.default_rng(0))
            rew = np.zeros(n, np.float32)
            times: dict[str, list[float]] = {"native": [], "torch": [], "modules": []}
            with torch.no_grad():
                for t in range(total):
                    rows = dict(obs, action=act, reward=rew, time_index=np.full(n, t, np.int64))
                    t0 = time.perf_counter()
                    if native:
                        act, s_nat = agent.act(rows, s_nat, sample=True)
                    t1 = time.perf_counter()
                    agent.use_native_step = False
                    a_torch, s_torch = agent.act(rows, s_torch, sample=True)
                    agent.use_native_step = True
                    t2 = time.perf_counter()
                    if n <= 8:
                        tr = {k: torch.as_tensor(v) for k, v in rows.items()}
                        ti = tr["time_index"]
                        h, twin.memory = agent.traj_encoder.step(agent.tstep_encoder(tr, ti), ti,
                                                                 twin.memory)
                        agent.actor.act(agent.actor(h)[:, -1], True).numpy()
                    t3 = time.perf_counter()
                    if t >= first:
                        times["native"].append(t1 - t0)
                        times["torch"].append(t2 - t1)
                        times["modules"].append(t3 - t2)
                    if not native:
                        act = a_torch
                    obs, rew, *_ = env.step(act)
            env.close()
            med = {k: float(np.median(v)) * 1e3 if v else None for k, v in times.items()}
            row: dict[str, Any] = {"num_envs": n, "torch_act_ms": med["torch"]}
            if native:
                row["native_act_ms"] = med["native"]
                row["native_speedup_vs_torch"] = med["torch"] / med["native"]
            if n <= 8:
                row["module_path_ms"] = med["modules"]
                row["torch_act_speedup_vs_modules"] = med["modules"] / med["torch"]
            out[f"{size}_n{n}"] = row
    return out
