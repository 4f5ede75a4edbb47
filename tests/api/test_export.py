"""torch.export of the one-step greedy policy (amago_fast/export.py): the exported program,
loaded back from its file, acts exactly as the eager policy on a trained T-Maze run and on a
2-layer agent whose rollouts outrun its context (the window reproduces the ring KV cache), and
continuous actions agree to float precision; bad input is one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from amago_fast.agent import Agent, AgentConfig
from amago_fast.cli import main
from amago_fast.deploy import DeployedPolicy, load_agent
from amago_fast.envs import make_env
from amago_fast.export import window_len
from amago_fast.exported import load_exported
from amago_fast.trainer import Trainer
from tests._api_run import solved_tmaze_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run_both(eager: DeployedPolicy, exported: DeployedPolicy, env, steps: int) -> int:
    """Step `env` with the eager policy; at every step the exported one (fed the same inputs)
    must return the same actions. Returns how many episodes ended."""
    obs = env.reset(seed=3)
    eager.reset(env.num_envs)
    exported.reset(env.num_envs)
    reward = done = None
    ended = 0
    for t in range(steps):
        a = eager.act(obs, reward, done)
        b = exported.act(obs, reward, done)
        if a.dtype.kind == "f":
            np.testing.assert_allclose(a, b, atol=2e-5, err_msg=f"step {t}")
        else:
            assert np.array_equal(a, b), f"step {t}: eager {a} exported {b}"
        obs, reward, term, trunc, _ = env.step(a)
        done = term | trunc
        ended += int(done.sum())
    return ended


def test_exported_trained_tmaze_acts_as_eager(tmp_path, capsys) -> None:
    cfg = solved_tmaze_config(tmp_path, run_name="tm", **{"agent.kv_cache_dtype": "float32"})
    Trainer(cfg, tmp_path / "tm").train()
    out = tmp_path / "policy.pt2"
    assert main(["export", str(tmp_path / "tm"), str(out), "--batch", "4"]) == 0
    assert out.is_file() and str(out) in capsys.readouterr().out
    exported = load_exported(out)
    eager = load_agent(tmp_path / "tm")
    env = make_env("tmaze-passive", 4, seed=5, corridor_length=5)
    assert _run_both(eager, exported, env, 60) >= 20
    env.close()
    # never replaced without --overwrite; a bad batch / file is one line
    before = out.read_bytes()
    assert main(["export", str(tmp_path / "tm"), str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_bytes() == before
    assert main(["export", str(tmp_path / "tm"), str(tmp_path / "b.pt2"), "--batch", "0"]) == 2
    assert "batch must be a positive integer" in capsys.readouterr().err
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(b"not a program")
    with pytest.raises(ValueError, match="not a torch.export program"):
        load_exported(junk)
    with pytest.raises(ValueError, match="runs 4 envs, not 2"):
        exported.reset(2)


@pytest.mark.parametrize("env_name,kwargs", [
    ("tmaze-passive", {"corridor_length": 8}),  # discrete, rollouts of 9 > context 3
    ("aib-di", {}),  # continuous actions
])
def test_window_reproduces_ring_cache(env_name, kwargs, tmp_path) -> None:
    """A 2-layer agent with context 3 (W = 5) on rollouts much longer than W: random weights
    (no ties to hide behind), every step compared."""
    env = make_env(env_name, 3, seed=1, **kwargs)
    torch.manual_seed(0)
    cfg = AgentConfig(d_model=16, num_layers=2, num_heads=2, tstep_hidden=16, tstep_out=16,
                      actor_hidden=16, critic_hidden=16, context_len=3,
                      kv_cache_dtype="float32")
    agent = Agent(env.spec, cfg).eval().requires_grad_(False)
    assert window_len(agent) == 5
    eager = DeployedPolicy(agent)
    eager.reset(3)
    path = eager.export(tmp_path / "p.pt2")
    _run_both(eager, load_exported(path), env, 25)
    env.close()


def test_onnx_export_acts_as_eager(tmp_path) -> None:
    """The same program through torch.onnx (named inputs, spec in the model's metadata), run
    by onnxruntime: continuous actions of a 2-layer context-3 agent agree with the eager step
    past the window."""
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    import onnx

    env = make_env("aib-di", 2, seed=1)
    torch.manual_seed(0)
    cfg = AgentConfig(d_model=16, num_layers=2, num_heads=2, tstep_hidden=16, tstep_out=16,
                      actor_hidden=16, critic_hidden=16, context_len=3,
                      kv_cache_dtype="float32")
    eager = DeployedPolicy(Agent(env.spec, cfg).eval().requires_grad_(False))
    eager.reset(2)
    path = eager.export(tmp_path / "p.onnx")
    model = onnx.load(path)
    names = [i.name for i in model.graph.input]
    assert names[0] == "row.observation" and names[-1] == "state.filled"
    assert [o.name for o in model.graph.output][0] == "action"
    _run_both(eager, load_exported(path), env, 12)
    env.close()
