"""Multi-task runs (``env.mixture``, amago_fast/envs/mixture.py): the slot split, the spec join
(1-d fields zero-padded, the largest discrete action space, anything else refused naming both
envs), per-task episode statistics counted against an independent loop, and a `multitask`
preset run (AMAGO-2 settings) whose train.csv / eval.csv carry one column set per task and
whose plot draws one curve per task."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from amago_fast.cli import main
from amago_fast.config import ConfigError, apply_overrides, validate
from amago_fast.envs import make_env
from amago_fast.envs.mixture import MixtureEnv, mixture_spec, task_slots
from amago_fast.logger import read_csv
from amago_fast.presets import get_preset
from amago_fast.spaces import ActionSpec, EnvSpec, FieldSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TWO_TMAZES = [
    {"name": "tmaze-passive", "kwargs": {"corridor_length": 3}, "label": "c3"},
    {"name": "tmaze-passive", "kwargs": {"corridor_length": 6}, "label": "c6"},
]


def _spec(name, obs_shape, n=None, cont=None, dtype=np.float32):
    action = ActionSpec("discrete", n=n) if n else ActionSpec("continuous", shape=(cont,))
    return EnvSpec(name, (FieldSpec("observation", obs_shape, dtype),), action)


def test_slots_and_spec_join_rules() -> None:
    assert task_slots(8, 3) == [3, 3, 2] and task_slots(2, 2) == [1, 1]
    with pytest.raises(ValueError, match="needs num_envs >= 3"):
        task_slots(2, 3)
    joined = mixture_spec([("a", _spec("a", (3,), n=2)), ("b", _spec("b", (5,), n=4))])
    assert joined.observation[0].shape == (5,) and joined.action.n == 4
    with pytest.raises(ValueError, match=r"'a' has discrete actions, 'b' continuous"):
        mixture_spec([("a", _spec("a", (3,), n=2)), ("b", _spec("b", (3,), cont=2))])
    with pytest.raises(ValueError, match=r"continuous action spaces must be equal; 'a'"):
        mixture_spec([("a", _spec("a", (3,), cont=1)), ("b", _spec("b", (3,), cont=2))])
    with pytest.raises(ValueError, match=r"'observation' is float32 in 'a' but uint8 in 'b'"):
        mixture_spec([("a", _spec("a", (3,), n=2)), ("b", _spec("b", (3,), n=2,
                                                                   dtype=np.uint8))])
    with pytest.raises(ValueError, match=r"shape \(4, 4\) in 'a' but \(5, 5\) in 'b'"):
        mixture_spec([("a", _spec("a", (4, 4), n=2)), ("b", _spec("b", (5, 5), n=2))])


def test_incompatible_envs_are_one_line(capsys) -> None:
    # (the profile-sized auto preset builds the envs to read their limits: refused there)
    code = main(["train", "--env.mixture", '["tmaze-passive", "bandit"]', "--print-config"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "'tmaze-passive' observes ['observation'] but 'bandit' observes" in err[0]


def test_config_resolution_and_bad_entries() -> None:
    cfg = validate(apply_overrides(get_preset("tmaze"), {"env.kwargs": {},
                                                         "env.mixture": TWO_TMAZES}))
    assert cfg.env.name == "mixture" and cfg.env.kwargs == {"tasks": TWO_TMAZES}
    assert cfg.env.eval_sets == {"c3": {"only": "c3"}, "c6": {"only": "c6"}}
    assert validate(cfg) is cfg and cfg.env.kwargs == {"tasks": TWO_TMAZES}  # idempotent
    for mixture, why in (
            (["tmaze-passive"], "at least 2 tasks"),
            (["tmaze-passive", "tmaze-passive"], "share the label"),
            ([{"name": "tmaze-passive", "label": "a b"}, "bandit"], "label must be"),
            ([{"name": "tmaze-passive", "kw": {}}, "bandit"], "unknown keys"),
            ([3, "bandit"], "must be an env name")):
        with pytest.raises(ConfigError, match=why):
            validate(apply_overrides(get_preset("tmaze"), {"env.kwargs": {},
                                                           "env.mixture": mixture}))
    with pytest.raises(ConfigError, match="corridor_length.*put a task's kwargs"):
        validate(apply_overrides(get_preset("tmaze"), {"env.mixture": TWO_TMAZES}))


def test_padding_action_mapping_and_task_stats() -> None:
    """CartPole (4 features, 2 actions) and Acrobot (6 features, 3 actions): CartPole's rows
    are zero-padded to 6, it takes a mod 2 of the 3 actions; rewards, observations and the
    returns the mixture counts per task equal those of the same envs stepped alone with the
    same seeds and actions."""
    tasks = ["gym:CartPole-v1", "gym:Acrobot-v1"]
    env = make_env("mixture", 5, seed=11, tasks=tasks)
    alone = [make_env("gym:CartPole-v1", 3, seed=11), make_env("gym:Acrobot-v1", 2,
                                                                seed=11 + 7919)]
    labels = ["gym-CartPole-v1", "gym-Acrobot-v1"]
    assert isinstance(env, MixtureEnv) and env.spec.action.n == 3
    assert env.spec.observation[0].shape == (6,)
    obs = env.reset(seed=4)["observation"]
    ref = [alone[0].reset(seed=4)["observation"], alone[1].reset(seed=4 + 7919)["observation"]]
    assert np.array_equal(obs, np.concatenate([np.pad(ref[0], ((0, 0), (0, 2))), ref[1]]))
    rng = np.random.default_rng(0)
    ret = np.zeros(5)
    after = np.zeros(5, bool)
    expect: dict[str, list[float]] = {f"return/{x}": [] for x in labels}
    for _ in range(150):
        a = rng.integers(0, 3, 5).astype(np.int32)
        o, r, te, tr, _ = env.step(a)
        o0, r0, te0, tr0, _ = alone[0].step(a[:3] % 2)
        o1, r1, te1, tr1, _ = alone[1].step(a[3:])
        assert np.array_equal(r, np.concatenate([r0, r1]))
        assert np.array_equal(o["observation"][:3, :4], o0["observation"])
        assert not o["observation"][:3, 4:].any()
        done = te | tr
        ret = np.where(after, 0.0, ret + r)
        for i in np.nonzero(done & ~after)[0]:
            expect[f"return/{labels[0 if i < 3 else 1]}"].append(float(ret[i]))
        after = done & ~after
    got = env.pop_task_stats()
    assert expect[f"return/{labels[0]}"]  # CartPole episodes ended under random actions
    for key, values in expect.items():
        assert got.get(key, []) == pytest.approx(values)
    assert len(got[f"length/{labels[0]}"]) == len(expect[f"return/{labels[0]}"])
    assert env.pop_task_stats() == {}
    assert env.slot_groups() == {labels[0]: [0, 1, 2], labels[1]: [3, 4]}
    one = make_env("mixture", 4, seed=0, tasks=tasks, only=labels[0])
    assert one.spec == env.spec and one.num_envs == 4 and one.slot_groups() == {}
    for e in (env, one, *alone):
        e.close()


def test_multitask_preset_logs_each_task(tmp_path: Path, capsys) -> None:
    run = tmp_path / "mt"
    code = main(["train", "--preset", "multitask", "--run-dir", str(run),
                 "--total_env_steps", "400", "--learning_starts", "100",
                 "--eval_interval", "200", "--eval_episodes", "4", "--log_interval", "100",
                 "--checkpoint_interval", "0", "--tensorboard", "false",
                 "--progress_bar", "false", "--agent.d_model", "16",
                 "--agent.tstep_hidden", "16", "--agent.tstep_out", "16", "--batch_size", "8"])
    assert code == 0, capsys.readouterr().err
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["agent"]["critic_type"] == "twohot"
    assert cfg["agent"]["discrete_critic"] == "action_input"
    assert cfg["learner"]["dpg_coeff"] == 0.0
    train = read_csv(run / "train.csv")
    for label in ("tmaze-4", "tmaze-8"):
        for stat in ("return", "success", "length"):
            values = [v for v in train[f"{stat}/{label}"] if v == v]
            assert values, f"{stat}/{label} never logged"
    lengths = [v for v in train["length/tmaze-8"] if v == v]
    assert all(v == 9.0 for v in lengths)  # corridor 8: 9 steps a rollout
    ev = read_csv(run / "eval.csv")
    assert ev["env_steps"][-1] >= 400
    for label in ("tmaze-4", "tmaze-8"):
        assert ev[f"{label}/episodes"][-1] == 4
        assert 0.0 <= ev[f"{label}/success"][-1] <= 1.0
    assert ev["tmaze-8/length"][-1] == 9.0 and ev["tmaze-4/length"][-1] == 5.0
    capsys.readouterr()
    assert main(["plot", str(run), "--out", str(tmp_path / "plots")]) == 0
    from amago_fast.plot import run_curves

    assert [name for _, name, _ in run_curves([run])] == ["tmaze-4/return", "tmaze-8/return"]
    # one task evaluated on its own through amago-fast eval
    capsys.readouterr()
    assert main(["eval", str(run), "--episodes", "2", "--env-kwargs",
                 '{"only": "tmaze-4"}']) == 0
    assert json.loads(capsys.readouterr().out)["length"] == 5.0
    # the whole mixture: each task's mean return beside the overall one (one episode per
    # eval slot, so that both tasks' slots get one: exact-count quotas fill slots in order)
    n_eval = cfg["env"]["eval_num_envs"]
    assert main(["eval", str(run), "--episodes", str(n_eval)]) == 0
    whole = json.loads(capsys.readouterr().out)
    assert {"return/tmaze-4", "return/tmaze-8"} <= set(whole), whole
