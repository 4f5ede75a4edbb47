"""The exceptions shared across modules, defined apart from the modules that raise them so that
importing one never needs the other: TrainingError (a training loop cannot go on; the offline
phase raises it without importing the trainer; ``amago_fast.trainer.TrainingError`` and
``amago_fast.TrainingError`` are this class) and ConfigError (an invalid configuration value;
amago_fast.offline's dataset errors derive from it without importing amago_fast.config, which
itself builds the offline DataConfig; ``amago_fast.config.ConfigError`` is this class)."""

from __future__ import annotations

__all__ = ["ConfigError", "TrainingError"]


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. too many updates skipped for non-finite values)."""


class ConfigError(ValueError):
    """An invalid configuration value. The message starts with the dotted field name."""
