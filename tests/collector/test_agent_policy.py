"""The Agent driven by the Collector on a real async EnvPool pool (``batch_size < num_envs``):
per-env rollout memory through ``act(..., env_ids=...)`` equals the full-sequence forward over
each env's own rollout, and the stored trajectories are the rows the agent saw."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from amago_fast.agent import Agent, AgentConfig
from amago_fast.buffer import TrajectoryBuffer
from amago_fast.collector import Collector
from amago_fast.envs import EnvPoolEnv
from tests._agent_checks import assert_rollout_steps_match_full_forward

pytestmark = pytest.mark.filterwarnings("ignore:.*precision lowered.*")

# float32 rollout caches: collected steps must equal the training forward to float32 rounding
# (the float16 default's tolerance is tested in tests/nets/: test_nets, test_native_step).
SMALL = dict(d_model=32, num_layers=2, num_heads=4, tstep_hidden=32, tstep_out=32,
             actor_hidden=32, critic_hidden=32, context_len=8, kv_cache_dtype="float32")


class GreedyRecorder:
    """Delegates to the Agent with greedy actions; records every call's env ids, rows and the
    actor output of the main gamma."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.calls: list[tuple[np.ndarray, dict[str, np.ndarray], torch.Tensor]] = []
        self.resets: list[np.ndarray] = []
        self._out: list[torch.Tensor] = []
        orig = agent.actor.forward
        agent.actor.forward = lambda h: self._out.append(orig(h)) or self._out[-1]

    def init_state(self, num_envs):
        return self.agent.init_state(num_envs)

    def reset_state(self, state, env_ids):
        self.resets.append(np.array(env_ids))
        return self.agent.reset_state(state, env_ids)

    def act(self, rows, state, sample, env_ids=None):
        actions, state = self.agent.act(rows, state, sample=False, env_ids=env_ids)
        ids = np.arange(state.num_envs) if env_ids is None else np.array(env_ids)
        self.calls.append((ids, {k: np.array(v, copy=True) for k, v in rows.items()},
                           self._out[-1][:, -1].clone()))
        return actions, state


def test_agent_async_envpool_collection_equals_per_env_full_forward():
    torch.manual_seed(0)
    n, b = 6, 3
    env = EnvPoolEnv("CartPole-v1", n, seed=3, batch_size=b)
    agent = Agent(env.spec, AgentConfig(**SMALL))
    agent.tstep_encoder.normalizer.update(torch.randn(100, 4) * 0.5)
    policy = GreedyRecorder(agent)
    buf = TrajectoryBuffer.from_env_spec(env.spec, 20_000, n)
    col = Collector(env, policy, buf)
    stats = col.collect(150)
    assert stats["env_steps"] >= 150 and stats["episodes"] >= 6
    # Split each env's calls into rollouts at time_index 0 (the collector resets memory there).
    rollouts: dict[int, list[list]] = {i: [] for i in range(n)}
    for ids, rows, out in policy.calls:
        assert ids.shape == (b,)
        for j, i in enumerate(ids):
            row = {k: v[j] for k, v in rows.items()}
            if row["time_index"] == 0:
                rollouts[int(i)].append([])
            assert rollouts[int(i)], "first row of an env must start a rollout"
            assert row["time_index"] == len(rollouts[int(i)][-1])
            rollouts[int(i)][-1].append((row, out[j]))
    assert all(len(rollouts[i]) >= 2 for i in range(n))  # a reset inside the pool per env
    checked = assert_rollout_steps_match_full_forward(
        agent, [steps for i in range(n) for steps in rollouts[i]])
    assert checked >= 150
    # Every finished rollout was committed to the buffer (nothing lost in the async ids).
    assert buf.num_trajectories == stats["episodes"]
    env.close()


def test_resume_with_policy_memory_of_another_dtype_restarts_the_rollouts():
    """Collector state saved with float16 rollout caches (the native CPU step's) loaded next to a
    policy whose caches are float32 (a GPU agent's): the rollouts restart with fresh memory,
    with a warning, instead of mixing the two in the policy step."""
    from amago_fast.envs import make_env

    def build(kv_dtype):
        torch.manual_seed(0)
        env = make_env("tmaze-passive", 2, seed=0, corridor_length=3)
        agent = Agent(env.spec, AgentConfig(**{**SMALL, "kv_cache_dtype": kv_dtype}))
        buf = TrajectoryBuffer.from_env_spec(env.spec, 1000, 2)
        return Collector(env, agent, buf), agent

    saved, _ = build("float16")
    saved.collect(5)
    sd = saved.state_dict()
    same, _ = build("float16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a matching state loads silently
        same.load_state_dict(sd)
    other, agent = build("float32")
    with pytest.warns(UserWarning, match="policy memory does not match"):
        other.load_state_dict(sd)
    caches = other._train.pstate.memory
    assert all(c.dtype == torch.float32 for c in caches)
    stats = other.collect(6)  # restarts from an env reset and goes on
    assert other._train.started and stats is not None


def test_policy_memory_copied_into_a_fresh_state_acts_identically():
    """The resume path for rollout memory that only changed device (checkpoints load onto the
    CPU; a GPU run copies it back onto its device): copy_into a fresh state of the same layout
    gives the same next actions and caches as the original state."""
    import copy

    from amago_fast.collector.policy import copy_into, same_layout
    from amago_fast.envs import make_env

    torch.manual_seed(0)
    env = make_env("tmaze-passive", 3, seed=0, corridor_length=5)
    agent = Agent(env.spec, AgentConfig(**SMALL))
    obs = env.reset()
    state = agent.init_state(3)
    zeros = dict(action=np.zeros(3, np.int32), reward=np.zeros(3, np.float32))
    for t in range(4):
        _, state = agent.act(dict(obs, **zeros, time_index=np.full(3, t, np.int64)), state,
                             sample=False)
    fresh = agent.init_state(3)
    assert same_layout(state, fresh, compare_devices=False)
    assert not same_layout(state, agent.init_state(2), compare_devices=False)
    copy_into(fresh, copy.deepcopy(state))
    rows = dict(obs, **zeros, time_index=np.full(3, 4, np.int64))
    a1, s1 = agent.act(rows, state, sample=False)
    a2, s2 = agent.act(rows, fresh, sample=False)
    np.testing.assert_array_equal(a1, a2)
    for c1, c2 in zip(s1.memory, s2.memory):
        assert torch.equal(c1.kv, c2.kv) and torch.equal(c1.counts, c2.counts)
