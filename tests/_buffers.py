"""Shared helpers of the buffer and collector tests: the two storage engines as factories.

``NUMPY`` / ``NATIVE`` build a :class:`TrajectoryBuffer` on that engine with the class's own
constructors (``NUMPY(fields, ...)``, ``NUMPY.from_env_spec(spec, ...)``, ``NUMPY.load(dir)``),
so one parametrized test runs against the oracle and the native core alike. ``ENGINES``: the
engines this build has, as pytest params named by engine.
"""

from __future__ import annotations

from typing import Any

import pytest

from amago_fast.buffer import NATIVE_AVAILABLE, TrajectoryBuffer


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
