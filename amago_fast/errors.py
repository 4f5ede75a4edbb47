"""The exception a training loop raises when it cannot go on. Defined apart from the trainer so
the phases it drives (the offline phase in amago_fast.offline) raise it without importing the
trainer; ``amago_fast.trainer.TrainingError`` and ``amago_fast.TrainingError`` are this class."""

from __future__ import annotations

__all__ = ["TrainingError"]


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. too many updates skipped for non-finite values)."""
