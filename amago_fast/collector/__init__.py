"""The collector: steps a VectorEnv with a policy, applies exploration, streams rows to the buffer.

Per vector step (all NumPy-batched, no per-env Python loop on the hot path):

1. the policy sees the current *rows* of the envs — observation keys + ``action`` (previous
   action) + ``reward`` (previous reward) + ``time_index`` — exactly a training row;
2. exploration (training only) perturbs its actions; the env steps;
3. envs whose previous step ended their rollout were autoreset by the env (next-step rule): the
   returned observation opens a new rollout (policy memory and exploration multiplier reset) and
   no transition is stored for that step; every other env appends one full row, which commits
   its trajectory when it is terminated|truncated — one ``buffer.write_step(rows, ids, starts)``
   call for both kinds of row.

Cost (measured on 2 cores, CartPole N=64, per vector step; ``benchmarks/bench_collect.py``):
the policy's actions are validated once (``check_actions``; our RandomPolicy's are valid by
construction), then the env is stepped through ``step_trusted`` (no second validation; see
:func:`amago_fast.envs.base.trusted_step`). The step's bookkeeping — previous action/reward,
time index, episode return, pending resets, the async scatter into the per-env arrays, the
NaN/inf screen — is one C++ pass (``_core.absorb_step``, collector/absorb.h) instead of ~30
NumPy calls (the NumPy path, :mod:`.numpy_absorb`, is the reference it is tested against,
the fallback without the compiled core, and the exact screening when a NaN appears).
With our native buffer that same pass also writes the step's rows into it (the *fused* write:
no rows dict, no ``write_step`` crossing, the same checks; ``AMAGO_FAST_FUSED_WRITE=0`` turns
it off), except for sync EnvPool, which is stepped as send → write the *previous* step's rows
→ recv so the write runs while EnvPool's worker threads step all envs
(:func:`amago_fast.envs.base.split_step`; rows owed to the buffer are written before
``collect`` returns, before ``state_dict`` and before a restart). Async batches go through a
``_core.AsyncAbsorber`` bound once to the per-env state arrays and the store: per step only
the batch crosses, and it hands back the policy's next rows dict and the finished rollouts'
returns as a list (framework CPU per 32-env CartPole batch with buffer writes ~22 → ~13 →
~9 µs, ``bench_collect.py --overhead`` minimum; while our thread works on one batch EnvPool's
workers step the other, so nothing is lost by writing after recv). Rows handed to the policy
are never written to afterwards (fresh arrays each step), so a policy may keep references to
them.

Async EnvPool (``env.is_async``): each step holds only the envs of the batch (``info["env_id"]``);
the policy is then called with ``act(rows_of_batch, state, sample, env_ids=ids)`` — a policy must
accept that keyword to drive an async env (checked at construction; the Agent does, keeping one
rollout memory per env id).

Faults: a non-finite observation or reward raises ValueError before anything of that step reaches
the buffer (``nan_policy="raise"``, the default) or is replaced by 0 and counted
(``nan_policy="flag"``, ``stats["nonfinite_steps"]``); an env that raises mid-step is re-raised as
RuntimeError naming the env, with the buffer untouched by that step. After a fault the next
``collect`` restarts every env (the buffer commits or drops the open rollouts as on any reset).

Resume: ``state_dict()`` holds the open-rollout bookkeeping (current rows, previous
action/reward, time_index, pending resets), exploration, the policy's rollout state (deep-copied
as is) and, for built-in NumPy envs, the env's state. EnvPool / gymnasium envs cannot be
snapshotted: after ``load_state_dict`` their rollouts restart with ``env.reset()``.

Modules: :mod:`.collector` (:class:`Collector`), :mod:`.state` (the per-env rollout state and
the vectorized step), :mod:`.native_absorb` and :mod:`.numpy_absorb` (the step's bookkeeping
in C++ / in NumPy, the reference), :mod:`.stats` (episode statistics, evaluation quotas),
:mod:`.policy` (the :class:`Policy` protocol, :class:`RandomPolicy`).
"""

from amago_fast.collector.collector import (
    Collector,
    check_buffer_matches,
    check_fields_match,
    make_rollouts,
)
from amago_fast.collector.native_absorb import native_absorb_step
from amago_fast.collector.policy import Policy, RandomPolicy, random_actions
from amago_fast.collector.stats import (
    EVAL_STEPS_PER_EPISODE_CEILING,
    default_eval_step_cap,
    eval_quotas,
)

__all__ = ["Collector", "Policy", "RandomPolicy", "random_actions", "eval_quotas",
           "default_eval_step_cap", "EVAL_STEPS_PER_EPISODE_CEILING", "check_buffer_matches",
           "check_fields_match", "make_rollouts", "native_absorb_step"]
