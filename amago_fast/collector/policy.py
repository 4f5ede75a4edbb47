"""What the collector drives: the :class:`Policy` protocol, :class:`RandomPolicy`, and the
helpers that compare and copy a policy's rollout memory on resume.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Protocol

import numpy as np

from amago_fast.spaces import EnvSpec, random_actions


class Policy(Protocol):
    """What the collector drives (the Agent implements it; see docs/DESIGN.md)."""

    def init_state(self, num_envs: int) -> Any: ...

    def reset_state(self, state: Any, env_ids: np.ndarray) -> Any: ...

    def act(
        self, rows: dict[str, np.ndarray], state: Any, sample: bool,
        env_ids: np.ndarray | None = None,
    ) -> tuple[Any, Any]:
        """Actions for the envs ``env_ids`` (None: all, in order). A policy that only drives sync
        envs may leave ``env_ids`` out of its signature (the collector checks)."""
        ...


class RandomPolicy:
    """Uniform random actions (the framework-overhead baseline and a smoke-test policy).

    Its state is its random generator, so a collector checkpoint restores it exactly.
    """

    def __init__(self, spec: EnvSpec, seed: int = 0) -> None:
        self.spec = spec
        self.seed = seed

    def init_state(self, num_envs: int) -> np.random.Generator:
        return np.random.default_rng(self.seed)

    def reset_state(self, state: np.random.Generator, env_ids: np.ndarray) -> np.random.Generator:
        return state

    def act(self, rows, state, sample=True, env_ids=None):
        return random_actions(self.spec.action, rows["time_index"].shape[0], state), state


def accepts_env_ids(policy: Any) -> bool:
    """Whether ``policy.act`` takes an ``env_ids`` keyword (needed to drive an async env)."""
    try:
        params = inspect.signature(policy.act).parameters
    except (TypeError, ValueError):
        return False
    return "env_ids" in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def same_layout(a: Any, b: Any, compare_devices: bool = True) -> bool:
    """Whether two policy memories (nested lists/tuples/dicts/dataclasses of tensors and
    RingKVCaches) have the same structure, shapes and dtypes (and devices, if asked)."""
    if a is None or b is None:
        return a is None and b is None
    import torch  # only policies with tensor memory get here

    from amago_fast.kernels.decode import RingKVCache

    same_dev = (lambda x, y: x.device == y.device) if compare_devices else (lambda x, y: True)
    if isinstance(a, RingKVCache) or isinstance(b, RingKVCache):
        return (isinstance(a, RingKVCache) and isinstance(b, RingKVCache)
                and a.kv.shape == b.kv.shape and a.dtype == b.dtype and same_dev(a, b))
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
                and a.shape == b.shape and a.dtype == b.dtype and same_dev(a, b))
    if isinstance(a, dict) or isinstance(b, dict):
        return (isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys()
                and all(same_layout(a[k], b[k], compare_devices) for k in a))
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return (isinstance(a, (list, tuple)) and isinstance(b, (list, tuple))
                and len(a) == len(b)
                and all(same_layout(x, y, compare_devices) for x, y in zip(a, b)))
    if dataclasses.is_dataclass(a) and dataclasses.is_dataclass(b) and type(a) is type(b):
        return all(same_layout(getattr(a, f.name), getattr(b, f.name), compare_devices)
                   for f in dataclasses.fields(a))
    return a == b if isinstance(a, (int, float, str, bool)) else type(a) is type(b)


def copy_into(dst: Any, src: Any) -> None:
    """Copy the policy memory ``src`` into ``dst`` of the same layout (see :func:`same_layout`
    with ``compare_devices=False``), across devices."""
    import torch

    from amago_fast.kernels.decode import RingKVCache

    if isinstance(dst, RingKVCache):
        dst.kv.copy_(src.kv)
        dst.counts.copy_(src.counts)  # on the CPU also the NumPy bookkeeping (shared memory)
        if dst.scales is not None:
            dst.scales.copy_(src.scales)
    elif isinstance(dst, torch.Tensor):
        dst.copy_(src)
    elif isinstance(dst, dict):
        for k in dst:
            copy_into(dst[k], src[k])
    elif isinstance(dst, (list, tuple)):
        for x, y in zip(dst, src):
            copy_into(x, y)
    elif dataclasses.is_dataclass(dst):
        for f in dataclasses.fields(dst):
            copy_into(getattr(dst, f.name), getattr(src, f.name))
