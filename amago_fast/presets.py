"""Named starting points for `amago-fast train --preset NAME` (command-line overrides win).

| preset | env | notes |
|---|---|---|
| tmaze (default) | tmaze-passive, corridor 20 | small Transformer; minutes on a laptop CPU |
| tmaze-active | tmaze-active, corridor 20 | the cue must be fetched first |
| key-to-door | key-to-door | meta-RL: several episodes per trial, context kept across them |
| maze-runner | maze-runner | k sequential goals; hindsight instruction relabeling on |
| bandit | bandit | k-armed bandit trials (quick meta-RL check) |
| aib-ballincup, -walker, -cartpole, -hopper | actuator inversion | continuous control |
| auto (default with --env.name) | any (`--env.name ID`) | sized by the profile and the env |
| popgym | gym:popgym-RepeatPreviousEasy-v0 | needs `pip install popgym`; profile-sized |
| multitask | tmaze-passive 4 + 8 mixture | AMAGO-2: two-hot, action-input critic, BC actor |
| minigrid | gym:MiniGrid-DoorKey-5x5-v0 | `pip install minigrid`; mission dropped; profile-sized |
| envpool, gym | any `envpool:<TaskId>` / `gym:<id>` | give the id with --env.name; profile-sized |

Each preset is a dict of dotted overrides applied to the `TrainConfig` defaults, so
`amago-fast train --preset NAME --print-config` shows the resolved values. Presets with
``"profile": "auto"`` name only their env; `amago-fast train` sizes everything else the user
does not type from the hardware profile and the env's episode limit (amago_fast/profiles.py).
The others are hand-tuned and keep their values (profile off) unless ``--profile`` is given.
"""

from __future__ import annotations

from typing import Any

from amago_fast.config import TrainConfig, apply_overrides

__all__ = ["PRESETS", "DEFAULT_PRESET", "AUTO_PRESET", "default_preset", "get_preset",
           "list_presets"]

# The T-Maze demo model: 2 layers of width 32 (what `amago-fast train` trains in minutes).
_TINY_MODEL: dict[str, Any] = {
    "agent.d_model": 32,
    "agent.num_layers": 2,
    "agent.num_heads": 2,
    "agent.tstep_hidden": 32,
    "agent.tstep_out": 32,
    "agent.actor_hidden": 32,
    "agent.critic_hidden": 32,
}

# A Transformer small enough for a laptop CPU: 2 layers of width 64.
_SMALL_MODEL: dict[str, Any] = {
    "agent.d_model": 64,
    "agent.num_layers": 2,
    "agent.num_heads": 4,
    "agent.tstep_hidden": 64,
    "agent.tstep_out": 64,
    "agent.actor_hidden": 64,
    "agent.critic_hidden": 64,
}

# Mid-size model for the longer suites (AMAGO's reported sizes are larger; use a GPU for those).
_MEDIUM_MODEL: dict[str, Any] = {
    "agent.d_model": 128,
    "agent.num_layers": 3,
    "agent.num_heads": 8,
    "agent.tstep_hidden": 128,
    "agent.tstep_out": 128,
    "agent.actor_hidden": 256,
    "agent.critic_hidden": 256,
}


def _tmaze(active: bool) -> dict[str, Any]:
    # Settings measured to solve passive T-Maze (corridor 20, greedy success 1.0) by ~3500 env
    # steps (~900 updates, ~30 s user CPU) on a shared 2-core CPU (tests/learning/test_learning.py).
    # For another corridor length set env.kwargs, agent.context_len (H + 2), window_len (H + 1)
    # and exploration.horizon (H + 1) together (benchmarks/bench_tmaze.py does).
    corridor = 20
    horizon = corridor + (2 if active else 1)
    return {
        **_TINY_MODEL,
        "agent.gammas": [0.9, 0.99],
        "learner.lr": 1e-3,
        "learner.warmup_steps": 50,
        "env.name": "tmaze-active" if active else "tmaze-passive",
        "env.kwargs": {"corridor_length": corridor},
        "env.num_envs": 8,
        "env.eval_num_envs": 8,
        "agent.context_len": horizon + 1,
        "window_len": horizon,
        "batch_size": 24,
        "buffer.capacity_steps": 100_000,
        # ε only at the decision steps of each rollout (the junction turn; active: also the first
        # step, toward the cue): per-step ε-greedy over the H - 1 deterministic corridor steps
        # makes an exploratory turn at the junction a ~1% event (see amago_fast/exploration.py)
        # and left success to the seed (0.0-1.0 at 3 500 steps). With this window the learning
        # check solved 4/4 seeds at 3 500 env steps (docs/LEARNING.md). ε stays at 0.3 x U(0, 1)
        # there: exploration costs nothing in the greedy evaluation.
        "exploration": {
            "eps_start": 1.0,
            "eps_end": 0.3,
            "anneal_steps": 2000,
            "horizon": horizon,
            "explore_first": 1 if active else 0,
            "explore_last": 1,
        },
        # passive: greedy success 1.0 by ~3 500 steps; 6 000 leaves a margin
        "total_env_steps": 10_000 if active else 6_000,
        "learning_starts": 500,
        "collect_steps_per_iter": 64,
        "updates_per_env_step": 0.3,
        "eval_interval": 1_000,
        "eval_episodes": 16,
        "checkpoint_interval": 2_000,
        "log_interval": 250,
        # one intra-op thread: on a 2-core box two threads made these tiny updates much slower
        "torch_threads": 1,
    }


def _continuous(env_name: str) -> dict[str, Any]:
    return {
        **_MEDIUM_MODEL,
        "env.name": env_name,
        "env.num_envs": 16,
        # Periodic evaluation on the eval-in split (in-distribution contexts, their own RNG
        # stream); held-out contexts after training: amago-fast eval RUN_DIR --env-kwargs
        # '{"split": "eval-out"}'.
        "env.eval_kwargs": {"split": "eval-in"},
        "agent.context_len": 256,
        "window_len": 256,
        "batch_size": 24,
        "buffer.capacity_steps": 1_000_000,
        "total_env_steps": 2_000_000,
        "learning_starts": 10_000,
        "collect_steps_per_iter": 64,
        "updates_per_env_step": 0.02,
        "eval_interval": 50_000,
        "eval_episodes": 16,
        "checkpoint_interval": 100_000,
        "log_interval": 5_000,
    }


def _aib_exploration(name: str, small: bool, budget_env_steps: int) -> dict[str, Any]:
    """Gaussian noise std (times the per-episode U(0, 1) multiplier) for an AIB task.

    DI / DI-Friction: AMAGO's own schedule, 1.0 -> 0.05 over 1M steps per actor (20M env
    steps), i.e. 1.0 -> 0.90 within the budget. DI-Friction seed 1 never found the goal with
    0.3 -> 0.1 (0.4 at 2.1M env steps, the point mass pinned in a corner) and found it at 1.0M
    with this schedule (79.8 train AER, docs/AIB.md "Fourth round"). DI also starts with the
    protocol's 5k random vector steps (uniform actions for the first 100k env steps), part of
    the setting that first learned it (fifth round). ODE keeps 0.3 -> 0.1 over half the budget
    (learned with memory, 147-164, second round); the MuJoCo rows 1.0 -> 0.05."""
    if name == "aib-di":
        return {"std_start": 1.0, "std_end": 0.05, "anneal_steps": 20_000_000,
                "uniform_steps": 100_000}
    if name == "aib-di-friction":
        return {"std_start": 1.0, "std_end": 0.05, "anneal_steps": 20_000_000}
    std = {"std_start": 0.3, "std_end": 0.1} if small else {"std_start": 1.0, "std_end": 0.05}
    return std | {"anneal_steps": budget_env_steps // 2}


def _aib(name: str, memory_free: bool = False) -> dict[str, Any]:
    """The Actuator Inversion Benchmark task `name` (amago_fast.envs.aib) at its published
    budget: 20 envs, each slot fixed to one of the 20 train instances, evaluation every 5k
    vector steps on all three splits (20 instances x 5 episodes each), 5k vector steps of
    exploration before learning. The agent acts and trains with the paper's history window
    (24 transitions for DI / ODE, 128 for the MuJoCo tasks: the ring KV cache slides), which
    the warm-up before every episode fills, as AMAGO's published runs did.
    `memory_free`: the ff trajectory encoder (no memory), the ablation that shows whether
    in-context adaptation is used (what the authors ran for AMAGO by default)."""
    from amago_fast.envs.aib import AIB_SPLITS, get_task

    task = get_task(name)
    vector = 20
    small = task.backend == "numpy"
    return {
        **_SMALL_MODEL,
        # DI / DI-Friction / ODE: wider actor and critic heads. The tiny model (32 wide) left
        # ODE at the do-nothing level (41.9 train AER, 2 seeds); these heads with 3-step
        # targets reached 144 at 1.1M env steps (docs/AIB.md). A textbook TD3 on fixed-context
        # DI learned with 256-wide MLPs and not with 32 (400k env steps, seed 0).
        **({"agent.actor_hidden": 128, "agent.critic_hidden": 128} if small else {}),
        **({"agent.traj_encoder": "ff"} if memory_free else {}),
        "env.name": name,
        "env.num_envs": vector,
        "env.eval_num_envs": vector,
        "env.eval_sets": {split: {"split": split} for split in AIB_SPLITS},
        "eval_episodes": 5 * vector,
        "agent.context_len": task.history + 1,
        "window_len": task.history,
        "batch_size": 24,
        "buffer.capacity_steps": 2_200_000 if small else 1_000_000,
        # MuJoCo rollouts (1128 steps) are stored in pieces so learning starts on time
        **({} if small else {"buffer.max_trajectory_len": 512}),
        "total_env_steps": (task.budget_vector_steps + 5_000) * vector,
        "learning_starts": 5_000 * vector,
        "collect_steps_per_iter": 5 * vector,
        # Sized for a shared 2-core CPU (docs/AIB.md): a DI / DI-Friction / ODE run makes 40k
        # updates on 24 windows of 24 rows over its 2.1M env steps (AMAGO's published runs made
        # ~100k); the MuJoCo rows are far below their budgets here anyway.
        "updates_per_env_step": 0.02 if small else 0.002,
        # 3-step TD targets carry the sparse DI / banded ODE rewards back faster (Pendulum, one
        # seed: -198 vs -487 with 1-step targets at 50k env steps, docs/LEARNING.md).
        **({"learner.n_step": 3} if small else {}),
        # AMAGO's lr is 1e-4 over ~100k updates; a tenth of the updates needs a larger step
        "learner.lr": 3e-4,
        "learner.warmup_steps": 200,
        "agent.gammas": [0.9, 0.97, 0.99],
        # greedy action + Gaussian noise while collecting: sampling the tanh-Gaussian actor,
        # whose filtered BC term fits the noisy replay actions, kept it near uniform (docs/AIB.md)
        "collect_sample": False,
        "exploration": _aib_exploration(task.name, small, task.budget_vector_steps * vector),
        # DI: an auxiliary model loss through the memory (not part of AMAGO). Without it every
        # DI run ended in one constant push into a corner (0.4-1.3 train AER, 3 seeds); with it
        # and the random start, 2 of 2 seeds solve the slots of one sign (docs/AIB.md "Fifth
        # round").
        **({"learner.dynamics_coeff": 10.0} if task.name == "aib-di" else {}),
        "eval_interval": 5_000 * vector,
        "checkpoint_interval": 10_000 * vector,
        "log_interval": 500 * vector,
        "torch_threads": 1,
    }


_AIB_NAMES = ("aib-walker", "aib-ballincup", "aib-cheetah", "aib-reacher-easy",
              "aib-reacher-hard", "aib-cartpole", "aib-walkergym", "aib-hoppergym", "aib-ode",
              "aib-di", "aib-di-friction")

PRESETS: dict[str, dict[str, Any]] = {
    "tmaze": _tmaze(active=False),
    "tmaze-active": _tmaze(active=True),
    "key-to-door": {
        **_SMALL_MODEL,
        "env.name": "key-to-door",
        "env.num_envs": 8,
        # The env's default trial is 500 steps (9 x 9 room, 50-step episodes) and the key and
        # door positions are only learnable from earlier episodes of the same trial, so the
        # context and the training window hold a whole trial (window + 1 rows, as for T-Maze).
        # The former 256 / 128 trained on 128-step slices yet acted with 256 steps of context,
        # and never saw a trial's first episodes from its last ones. The scaled-down curve in
        # docs/LEARNING.md (5 x 5 room, 150-step trials) uses the same rule: 151 / 150.
        "agent.context_len": 501,
        "window_len": 500,
        "total_env_steps": 300_000,
        "learning_starts": 5_000,
        "collect_steps_per_iter": 32,
        "updates_per_env_step": 0.03,
        "eval_interval": 25_000,
        "checkpoint_interval": 50_000,
        "log_interval": 2_000,
    },
    "maze-runner": {
        **_SMALL_MODEL,
        "env.name": "maze-runner",
        "env.num_envs": 8,
        "agent.context_len": 256,
        "window_len": 128,
        "buffer.relabel": "some",
        "buffer.relabel_prob": 0.8,
        "total_env_steps": 300_000,
        "learning_starts": 5_000,
        "collect_steps_per_iter": 32,
        "updates_per_env_step": 0.03,
        "eval_interval": 25_000,
        "checkpoint_interval": 50_000,
        "log_interval": 2_000,
    },
    "bandit": {
        **_SMALL_MODEL,
        "env.name": "bandit",
        "env.num_envs": 8,
        "agent.context_len": 128,
        "window_len": 64,
        "total_env_steps": 50_000,
        "learning_starts": 2_000,
        "collect_steps_per_iter": 16,
        "updates_per_env_step": 0.03,
        "eval_interval": 10_000,
        "checkpoint_interval": 25_000,
    },
    **{name: _aib(name) for name in _AIB_NAMES},
    **{f"{name}-ff": _aib(name, memory_free=True) for name in _AIB_NAMES},
    "actinv-ballincup": _continuous("actinv-ballincup"),
    "actinv-walker": _continuous("actinv-walker"),
    "actinv-cartpole": _continuous("actinv-cartpole"),
    "actinv-hopper": _continuous("actinv-hopper"),
    "popgym": {
        "profile": "auto",
        "env.name": "gym:popgym-RepeatPreviousEasy-v0",
        "env.import_modules": ["popgym"],
    },
    # MiniGrid through the gymnasium adapter: the Text "mission" is dropped (constant for the
    # DoorKey / Empty / Memory tasks) and the 7x7x3 symbolic grid (object, colour, state codes)
    # is read as a normalised vector rather than as pixels by the CNN.
    "minigrid": {
        "profile": "auto",
        "env.name": "gym:MiniGrid-DoorKey-5x5-v0",
        "env.import_modules": ["minigrid"],
        "env.kwargs": {"ignore_keys": ["mission"], "flatten_keys": ["image"]},
    },
    # A multi-task run with AMAGO-2's settings: passive T-Maze at corridors 4 and 8 sharing
    # the 8 envs (amago_fast/envs/mixture.py), a two-hot classification critic, a discrete
    # critic that reads the action, and the AMAGO-2 actor (filtered BC alone: dpg_coeff 0,
    # bc_coeff 1). Each task's train returns and evaluation are logged on their own.
    "multitask": {
        **_TINY_MODEL,
        "env.mixture": [
            {"name": "tmaze-passive", "kwargs": {"corridor_length": 4}, "label": "tmaze-4"},
            {"name": "tmaze-passive", "kwargs": {"corridor_length": 8}, "label": "tmaze-8"},
        ],
        "env.num_envs": 8,
        "env.eval_num_envs": 8,
        "agent.critic_type": "twohot",
        "agent.discrete_critic": "action_input",
        "agent.gammas": [0.9, 0.99],
        "learner.dpg_coeff": 0.0,
        "learner.bc_coeff": 1.0,
        "learner.lr": 1e-3,
        "learner.warmup_steps": 50,
        "agent.context_len": 10,  # the longest rollout (corridor 8: 9 steps) + 1
        "window_len": 9,
        "batch_size": 24,
        "buffer.capacity_steps": 100_000,
        # every rollout explores from a uniformly drawn step on (the junction turn of either
        # corridor is reached without a spoiling random step before it; profiles.py's rule)
        "exploration": {"kind": "bilevel", "horizon": 9, "anneal_steps": 3000,
                        "eps_first_start": 1.0, "eps_first_end": 0.05,
                        "eps_last_start": 0.8, "eps_last_end": 0.05, "late_start_prob": 1.0},
        "total_env_steps": 8_000,
        "learning_starts": 500,
        "collect_steps_per_iter": 64,
        "updates_per_env_step": 0.3,
        "eval_interval": 1_000,
        "eval_episodes": 16,
        "checkpoint_interval": 4_000,
        "log_interval": 500,
        "torch_threads": 1,
    },
    "envpool": {"profile": "auto", "env.name": "envpool:CartPole-v1"},
    "gym": {"profile": "auto", "env.name": "gym:CartPole-v1"},
    # Nothing but the profile: every size comes from the profile and the env (see
    # amago_fast/profiles.py); `amago-fast train --env.name ID` starts here.
    "auto": {"profile": "auto"},
}

DEFAULT_PRESET = "tmaze"
"""`amago-fast train` with no --preset and no --env.name: the tuned T-Maze demo."""
AUTO_PRESET = "auto"
"""`amago-fast train --env.name ID` with no --preset: sized by the profile for that env."""


def default_preset(overrides: dict[str, Any]) -> str:
    """The preset `amago-fast train` starts from when none is named: `auto` when the env is
    named (``env.name`` among the typed overrides), else the T-Maze demo."""
    return AUTO_PRESET if "env.name" in overrides or "env.mixture" in overrides \
        else DEFAULT_PRESET


def list_presets() -> list[str]:
    """Preset names."""
    return sorted(PRESETS)


def get_preset(name: str = DEFAULT_PRESET) -> TrainConfig:
    """The TrainConfig of preset `name` (a fresh copy). Unknown names raise KeyError."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; presets: {', '.join(list_presets())}")
    # A preset that does not ask for a profile keeps its own values (profile off): the
    # hand-tuned ones (tmaze, key-to-door, aib-*, ...) are not re-sized by `amago-fast train`.
    return apply_overrides(TrainConfig(), {"profile": "off", **PRESETS[name]})
