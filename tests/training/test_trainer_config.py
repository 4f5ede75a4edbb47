"""Config tree: dataclass→argparse mapping, overrides, validation naming the field, JSON I/O."""

from __future__ import annotations

import argparse
import contextlib
import json
from dataclasses import dataclass, field

import pytest

from amago_fast.config import (
    BufferConfig,
    ConfigError,
    EnvConfig,
    TrainConfig,
    add_dataclass_arguments,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    field_docs,
    load_config,
    overrides_from_namespace,
    overrides_to_args,
    save_config,
    validate,
)


@dataclass
class _Inner:
    """Inner."""

    lr: float = 1e-3
    """Learning rate."""
    steps: int = 10
    """Steps."""
    name: str | None = None
    """Optional name."""
    sizes: tuple[int, ...] = (1, 2)
    """Sizes."""
    flag: bool = False
    """A flag."""


@dataclass
class _Outer:
    """Outer."""

    inner: _Inner = field(default_factory=_Inner)
    """The inner block."""
    kwargs: dict = field(default_factory=dict)
    """Free-form kwargs."""


def _parse(cfg, argv):
    p = argparse.ArgumentParser()
    add_dataclass_arguments(p, cfg)
    return apply_overrides(cfg, overrides_from_namespace(p.parse_args(argv))), p


def test_overrides_to_args_parse_back_to_the_same_config():
    overrides = {"inner.lr": 3e-4, "inner.steps": 7, "inner.name": "run a", "inner.sizes": [4, 5],
                 "inner.flag": True, "kwargs": {"corridor_length": 3, "x": [1.5]}}
    direct = apply_overrides(_Outer(), overrides)
    parsed, _ = _parse(_Outer(), overrides_to_args(overrides))
    assert parsed == direct
    assert parsed.inner.name == "run a" and parsed.kwargs == {"corridor_length": 3, "x": [1.5]}


def test_field_docs_come_from_attribute_docstrings():
    docs = field_docs(_Inner)
    assert docs["lr"] == "Learning rate."
    assert docs["flag"] == "A flag."
    assert field_docs(EnvConfig)["num_envs"].startswith("Parallel environments")
    # every TrainConfig-owned field is documented
    for cls in (TrainConfig, EnvConfig, BufferConfig):
        from dataclasses import fields

        missing = [f.name for f in fields(cls) if not field_docs(cls).get(f.name)]
        assert not missing, f"{cls.__name__} fields without a docstring: {missing}"


def test_argparse_mapping_parses_by_type_and_keeps_the_original():
    base = _Outer()
    cfg, parser = _parse(
        base,
        ["--inner.lr", "3e-4", "--inner.steps", "1e3", "--inner.name", "none",
         "--inner.sizes", "[4, 5]", "--inner.flag", "true", "--kwargs", '{"a": 1}'],
    )
    assert cfg.inner.lr == pytest.approx(3e-4)
    assert cfg.inner.steps == 1000 and isinstance(cfg.inner.steps, int)
    assert cfg.inner.name is None
    assert cfg.inner.sizes == (4, 5)
    assert cfg.inner.flag is True
    assert cfg.kwargs == {"a": 1}
    assert base.inner.lr == 1e-3 and base.kwargs == {}  # original untouched
    help_text = parser.format_help()
    assert "--inner.lr" in help_text and "Learning rate." in help_text


def test_untyped_options_keep_defaults():
    cfg, _ = _parse(_Outer(), [])
    assert cfg == _Outer()


@pytest.mark.parametrize(
    "overrides, field_name",
    [
        ({"inner.steps": "1.5"}, "inner.steps"),
        ({"inner.flag": "maybe"}, "inner.flag"),
        ({"inner.nope": "1"}, "inner.nope"),
        ({"kwargs": "{not json"}, "kwargs"),
    ],
)
def test_bad_overrides_name_the_field(overrides, field_name):
    base = _Outer()
    with pytest.raises(ConfigError, match=field_name.replace(".", r"\.")):
        apply_overrides(base, overrides)
    assert base == _Outer()


def test_train_config_json_round_trip(tmp_path):
    cfg = apply_overrides(
        TrainConfig(), {"batch_size": "7", "env.kwargs": '{"x": 2}'}
    )
    cfg.agent.gammas = (0.9, 0.99)
    save_config(cfg, tmp_path / "config.json")
    back = load_config(tmp_path / "config.json")
    assert config_to_dict(back) == config_to_dict(cfg)
    assert back.agent.gammas == (0.9, 0.99)
    data = json.loads((tmp_path / "config.json").read_text())
    data["bogus"] = 1
    with pytest.raises(ConfigError, match="bogus"):
        config_from_dict(data)


@pytest.mark.parametrize(
    "overrides, field_name",
    [
        ({"env.num_envs": 0}, "env.num_envs"),
        ({"batch_size": -1}, "batch_size"),
        ({"window_len": 100, "buffer.capacity_steps": 50}, "buffer.capacity_steps"),
        ({"buffer.relabel": "sometimes"}, "buffer.relabel"),
        ({"buffer.relabel_prob": 1.5}, "buffer.relabel_prob"),
        ({"updates_per_env_step": float("nan")}, "updates_per_env_step"),
        ({"device": "tpu"}, "device"),
        ({"total_env_steps": "many"}, "total_env_steps"),
        ({"agent.d_model": 0}, "agent.d_model"),
        ({"agent.num_heads": 3}, "agent.num_heads"),
    ],
)
def test_validate_names_the_bad_field(overrides, field_name):
    cfg = TrainConfig()
    for k, v in overrides.items():
        obj = cfg
        *path, last = k.split(".")
        for p in path:
            obj = getattr(obj, p)
        setattr(obj, last, v)
    with pytest.raises(ConfigError, match=field_name.replace(".", r"\.")):
        validate(cfg)


def test_presets_are_valid():
    import importlib.util

    from amago_fast.presets import get_preset, list_presets

    assert "tmaze" in list_presets()
    for name in list_presets():
        cfg = get_preset(name)
        missing = [m for m in cfg.env.import_modules if importlib.util.find_spec(m) is None]
        if missing:  # e.g. popgym is an optional install: rejected up front, naming the field
            with pytest.raises(ConfigError, match=r"env\.import_modules.*pip install"):
                validate(cfg)
        else:
            validate(cfg)
    with pytest.raises(KeyError, match="unknown preset"):
        get_preset("nope")


@contextlib.contextmanager
def built_trainer(cfg, run_dir):
    """A Trainer with its components built (envs, buffer, agent, collectors); envs closed after.
    Tests using it take the keep_torch_threads fixture (the trainer sets torch_threads)."""
    from amago_fast.trainer import Trainer

    t = Trainer(cfg, run_dir)
    t.build()
    try:
        yield t
    finally:
        t.env.close()
        t.eval_env.close()


@pytest.mark.usefixtures("keep_torch_threads")
@pytest.mark.parametrize("name,module", [("popgym", "popgym"), ("minigrid", "minigrid")])
def test_gymnasium_suite_presets_build_and_collect(name, module, tmp_path):
    """The presets of the optional gymnasium suites (skipped when not installed) build and
    collect through the adapter, with the native policy step (MiniGrid: its grid flattened)."""
    pytest.importorskip(module)
    from amago_fast.nets import native_step
    from amago_fast.presets import get_preset

    with built_trainer(get_preset(name), tmp_path / "run") as t:
        stats = t.collector.collect(64)
        assert stats["env_steps"] >= 64 and t.buffer.total_steps_added == stats["env_steps"]
        if native_step.available():
            assert t.agent.native_step.unsupported_reason() is None


@pytest.mark.usefixtures("keep_torch_threads")
@pytest.mark.parametrize("name", ["tmaze", "tmaze-active", "bandit", "maze-runner", "key-to-door"])
def test_builtin_presets_build_and_collect(name, tmp_path):
    """Each built-in suite's preset builds env, buffer, agent, learner and collects a little."""
    from amago_fast.presets import get_preset

    with built_trainer(get_preset(name), tmp_path / "run") as t:
        stats = t.collector.collect(32)
        assert stats["env_steps"] >= 32 and t.buffer.total_steps_added == stats["env_steps"]
        if name == "maze-runner":  # relabeling on: goals in the spec, a RelabelConfig passed
            assert t.spec.goals is not None and t.relabel.strategy == "some"


@pytest.mark.usefixtures("keep_torch_threads")
def test_env_nan_policy_reaches_the_training_collector(tmp_path):
    from amago_fast.presets import get_preset

    with pytest.raises(ConfigError, match=r"env\.nan_policy"):
        validate(apply_overrides(get_preset("bandit"), {"env.nan_policy": "ignore"}))
    cfg = apply_overrides(get_preset("bandit"), {"env.nan_policy": "flag"})
    with built_trainer(cfg, tmp_path / "run") as t:
        assert t.collector.nan_policy == "flag" and t.eval_collector.nan_policy == "raise"
