"""Process-wide random state: seeding every generator a run draws from, and saving/restoring
them in a checkpoint so a resumed run draws what an uninterrupted one would (python, NumPy,
torch CPU and every CUDA device)."""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["restore_cuda_rng_states", "rng_state", "seed_everything", "set_rng_state"]


def rng_state() -> dict:
    """The global RNG states: python, numpy, torch CPU and CUDA."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore `rng_state()` output."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    restore_cuda_rng_states(state.get("cuda"))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def restore_cuda_rng_states(states: list | None) -> None:
    """Restore ``torch.cuda.get_rng_state_all()`` output, only onto the same number of GPUs
    (a run resumed or evaluated on another machine draws afresh there). The states may have
    been moved by ``torch.load``'s map_location; they must be CPU ByteTensors."""
    if not states or not torch.cuda.is_available() or len(states) != torch.cuda.device_count():
        return
    torch.cuda.set_rng_state_all([torch.as_tensor(t).to("cpu", torch.uint8) for t in states])
