"""amago_fast: fast in-context off-policy RL (AMAGO).

The names a user imports, all from here::

    import amago_fast
    cfg = amago_fast.get_preset("tmaze")                         # a TrainConfig
    result = amago_fast.train(cfg, env=my_vector_env_builder)    # or Trainer(cfg, env=...)
    policy = amago_fast.load_agent(result["run_dir"])            # deploy: reset / act

They are loaded on first use (PEP 562 ``__getattr__``): ``import amago_fast`` itself imports
neither torch nor NumPy (~2 ms), so the CLI's ``--help`` and tools that only read
``__version__`` stay fast. ``__version__`` here is the package's one version source (the
wheel's metadata reads it, ``[tool.scikit-build.metadata.version]`` in pyproject.toml).
"""

from __future__ import annotations

# typing is not imported (it costs ~2-10 ms here): type checkers treat this name as True.
TYPE_CHECKING = False

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    # configuration and presets
    "TrainConfig": "amago_fast.config",
    "EnvConfig": "amago_fast.config",
    "BufferConfig": "amago_fast.config",
    "ConfigError": "amago_fast.config",
    "apply_overrides": "amago_fast.config",
    "load_config": "amago_fast.config",
    "save_config": "amago_fast.config",
    "get_preset": "amago_fast.presets",
    "list_presets": "amago_fast.presets",
    "AgentConfig": "amago_fast.agent",
    "LearnerConfig": "amago_fast.learner",
    # training
    "train": "amago_fast.api",
    "Trainer": "amago_fast.trainer",
    "TrainingError": "amago_fast.trainer",
    "evaluate_run": "amago_fast.evaluation",
    # the agent, learning update and deployment
    "Agent": "amago_fast.agent",
    "Learner": "amago_fast.learner",
    "load_agent": "amago_fast.deploy",
    "DeployedPolicy": "amago_fast.deploy",
    "load_exported": "amago_fast.exported",
    # data
    "TrajectoryBuffer": "amago_fast.buffer",
    "Collector": "amago_fast.collector",
    "EnvSpec": "amago_fast.spaces",
    "FieldSpec": "amago_fast.spaces",
    "ActionSpec": "amago_fast.spaces",
    "GoalSpec": "amago_fast.spaces",
    # environments
    "make_env": "amago_fast.envs",
    "list_envs": "amago_fast.envs",
    "VectorEnv": "amago_fast.envs",
    "GymVectorEnv": "amago_fast.envs",
    "EnvPoolEnv": "amago_fast.envs",
    "MixtureEnv": "amago_fast.envs",
    "TrialEnv": "amago_fast.user_env",
}

__all__ = [  # the keys of _EXPORTS (tests/api/test_package.py checks), spelled out for tools
    "__version__",
    "TrainConfig", "EnvConfig", "BufferConfig", "ConfigError", "apply_overrides", "load_config",
    "save_config", "get_preset", "list_presets", "AgentConfig", "LearnerConfig",
    "train", "Trainer", "TrainingError", "evaluate_run",
    "Agent", "Learner", "load_agent", "DeployedPolicy", "load_exported",
    "TrajectoryBuffer", "Collector", "EnvSpec", "FieldSpec", "ActionSpec", "GoalSpec",
    "make_env", "list_envs", "VectorEnv", "GymVectorEnv", "EnvPoolEnv", "MixtureEnv",
    "TrialEnv",
]


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'amago_fast' has no attribute {name!r}")
    # __import__ with a fromlist returns the submodule itself (no importlib import needed here)
    value = getattr(__import__(module, fromlist=[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # static type checkers and IDEs see the real names
    from amago_fast.agent import Agent, AgentConfig
    from amago_fast.api import train
    from amago_fast.buffer import TrajectoryBuffer
    from amago_fast.collector import Collector
    from amago_fast.config import (
        BufferConfig,
        ConfigError,
        EnvConfig,
        TrainConfig,
        apply_overrides,
        load_config,
        save_config,
    )
    from amago_fast.deploy import DeployedPolicy, load_agent
    from amago_fast.envs import EnvPoolEnv, GymVectorEnv, VectorEnv, list_envs, make_env
    from amago_fast.evaluation import evaluate_run
    from amago_fast.learner import Learner, LearnerConfig
    from amago_fast.presets import get_preset, list_presets
    from amago_fast.spaces import ActionSpec, EnvSpec, FieldSpec, GoalSpec
    from amago_fast.trainer import Trainer, TrainingError
    from amago_fast.user_env import TrialEnv
