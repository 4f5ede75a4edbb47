"""Shared helpers of the buffer and collector tests: the two storage engines as factories, the
native-vs-oracle comparison, and the collector-against-samplers race.

``NUMPY`` / ``NATIVE`` build a :class:`TrajectoryBuffer` on that engine with the class's own
constructors (``NUMPY(fields, ...)``, ``NUMPY.from_env_spec(spec, ...)``, ``NUMPY.load(dir)``),
so one parametrized test runs against the oracle and the native core alike. ``ENGINES``: the
engines this build has, as pytest params named by engine.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from amago_fast.buffer import NATIVE_AVAILABLE, RelabelConfig, TrajectoryBuffer


class Engine:
    """TrajectoryBuffer constructors with ``engine=name``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Engine({self.name!r})"

    def __call__(self, *args: Any, **kwargs: Any) -> TrajectoryBuffer:
        return TrajectoryBuffer(*args, engine=self.name, **kwargs)

    def from_env_spec(self, *args: Any, **kwargs: Any) -> TrajectoryBuffer:
        return TrajectoryBuffer.from_env_spec(*args, engine=self.name, **kwargs)

    def load(self, *args: Any, **kwargs: Any) -> TrajectoryBuffer:
        return TrajectoryBuffer.load(*args, engine=self.name, **kwargs)


NUMPY = Engine("numpy")
NATIVE = Engine("native")
ENGINES = [pytest.param(NUMPY, id="numpy")] + (
    [pytest.param(NATIVE, id="native")] if NATIVE_AVAILABLE else [])


def engine_pair(spec: Any, **kw: Any) -> tuple[TrajectoryBuffer, TrajectoryBuffer]:
    """The same buffer twice: on the default engine (the native core where it is built) and on
    the NumPy oracle. Same seed, so both draw the same windows from the same contents."""
    return TrajectoryBuffer.from_env_spec(spec, **kw), NUMPY.from_env_spec(spec, **kw)


def assert_same_batches(x: dict, y: dict, what: str = "") -> None:
    """Two sampled batches hold the same fields with exactly equal arrays."""
    assert x.keys() == y.keys()
    for k in x:
        np.testing.assert_array_equal(x[k], y[k], err_msg=f"{what} {k}")


def assert_same_samples(native: TrajectoryBuffer, ref: TrajectoryBuffer, B: int, L: int,
                        relabel: RelabelConfig | None = None, mode: str = "timesteps",
                        what: str = "") -> dict:
    """Sample ``B`` windows of ``L`` from both buffers with the same arguments, require equal
    batches, and return the first one (for checks of its own)."""
    x = native.sample_windows(B, L, relabel=relabel, mode=mode)
    assert_same_batches(x, ref.sample_windows(B, L, relabel=relabel, mode=mode), what)
    return x


def race(collector: Callable[[], None], sampler: Callable[[int], None], samplers: int = 2,
         timeout: float = 60.0) -> None:
    """Run ``collector()`` against ``samplers`` threads of ``sampler(i)`` and wait for all of
    them (each join bounded by ``timeout``). The callables report their own failures (the
    tests collect them in a list and stop the others through an event)."""
    threads = [threading.Thread(target=collector)] + [
        threading.Thread(target=sampler, args=(i,)) for i in range(samplers)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=timeout)
