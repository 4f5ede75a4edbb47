"""Networks of the AMAGO agent: timestep encoder, trajectory encoders, heads."""

from amago_fast.nets.heads import ActorHead
from amago_fast.nets.timestep import TimestepEncoder
from amago_fast.nets.trajectory import FFTrajEncoder, GRUTrajEncoder, TransformerTrajEncoder

__all__ = [
    "ActorHead",
    "TimestepEncoder",
    "TransformerTrajEncoder",
    "GRUTrajEncoder",
    "FFTrajEncoder",
]
