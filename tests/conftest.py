"""Test-wide set-up.

TRITON_INTERPRET must be set before any Triton kernel is decorated, so it is set here, at conftest
import time, before test modules import amago_fast.kernels. Kernels still dispatch CPU tensors to
their PyTorch reference unless a test asks for the Triton backend explicitly, so model tests on
CPU do not pay the interpreter's cost (~0.5 ms per program).
"""

import os
from types import MappingProxyType

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Two cores: more intra-op threads than cores only adds contention.
torch.set_num_threads(min(2, os.cpu_count() or 1))

# The smallest end-to-end training run (tmaze preset, corridor 3, a 1-layer d=16 model, 96 env
# steps): shared by the checkpoint/resume and torchrun tests, which add their own schedule keys.
TINY_TMAZE_RUN = {
    "env.kwargs": {"corridor_length": 3},
    "env.num_envs": 2,
    "env.eval_num_envs": 2,
    "agent.d_model": 16,
    "agent.num_layers": 1,
    "agent.num_heads": 2,
    "agent.tstep_hidden": 16,
    "agent.tstep_out": 16,
    "agent.actor_hidden": 16,
    "agent.critic_hidden": 16,
    "agent.context_len": 8,
    "agent.gammas": [0.9, 0.99],
    "window_len": 6,
    "batch_size": 4,
    "buffer.capacity_steps": 400,
    "total_env_steps": 96,
    "collect_steps_per_iter": 8,
    "eval_episodes": 2,
    "log_interval": 16,
    "progress_bar": False,
    "tensorboard": False,
    "torch_threads": 1,
}


@pytest.fixture(scope="session")
def tiny_tmaze_run() -> MappingProxyType:
    """:data:`TINY_TMAZE_RUN`, read-only (tests extend it with ``{**tiny_tmaze_run, ...}``)."""
    return MappingProxyType(TINY_TMAZE_RUN)


requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
