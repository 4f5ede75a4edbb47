"""Test-wide set-up.

TRITON_INTERPRET must be set before any Triton kernel is decorated, so it is set here, at conftest
import time, before test modules import amago_fast.kernels. Kernels still dispatch CPU tensors to
their PyTorch reference unless a test asks for the Triton backend explicitly, so model tests on
CPU do not pay the interpreter's cost (~0.5 ms per program).
"""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Two cores: more intra-op threads than cores only adds contention.
torch.set_num_threads(min(2, os.cpu_count() or 1))

@pytest.fixture
def keep_torch_threads():
    """Restore torch's intra-op thread count after a test that changes it (the trainer sets
    ``torch_threads``)."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture
def one_torch_thread(keep_torch_threads):
    """Tiny models: 1 intra-op thread measured ~15x faster than 2 on the shared 2-core box
    (60 ms vs 880 ms per update at load ~6.6; threads spin on busy cores)."""
    torch.set_num_threads(1)


requires_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
