"""amago_fast: fast in-context off-policy RL (AMAGO)."""

__version__ = "0.1.0"
