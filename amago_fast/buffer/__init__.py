"""The trajectory buffer: whole trajectories in a ring, window sampling, hindsight relabeling.

Modules (mirroring the native core in csrc/buffer/):

- :mod:`.trajectory_buffer`: :class:`TrajectoryBuffer`, the public class; it holds an engine.
- :mod:`.native_engine`: the engine on ``_core.TrajectoryStore`` (trajectory_store.h), and the
  :class:`NativeSink` the collector's fused write uses.
- :mod:`.numpy_engine`: the same engine in NumPy, the oracle and the fallback without the core.
- :mod:`.checks`: the schema / configuration (:class:`Layout`) and every input check.
- :mod:`.persistence`: snapshots (save / load) and ``.npz`` interop.
- :mod:`.relabel`: hindsight relabeling (goals.h); :mod:`.rng`: the counter-based RNG (rng.h).
- :mod:`.synthetic`: generated rollouts for the buffer's tests and benchmark.
"""

from amago_fast._native import NATIVE_AVAILABLE
from amago_fast.buffer.checks import SnapshotError
from amago_fast.buffer.native_engine import NativeSink
from amago_fast.buffer.persistence import FORMAT_NAME, snapshot_fields
from amago_fast.buffer.relabel import RelabelConfig
from amago_fast.buffer.trajectory_buffer import TrajectoryBuffer

__all__ = ["TrajectoryBuffer", "RelabelConfig", "SnapshotError", "NATIVE_AVAILABLE",
           "NativeSink", "FORMAT_NAME", "snapshot_fields"]
