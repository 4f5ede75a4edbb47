"""What a captured (CUDA-graph) update needs besides the loss: fixed batch tensors refilled in
place (:class:`StaticBatch`) and a target EMA that never reads a flag on the host
(:func:`ema_where_`, also the eager update's EMA, so both paths apply the same arithmetic)."""

from __future__ import annotations

import torch

__all__ = ["StaticBatch", "ema_where_"]


class StaticBatch:
    """Fixed device tensors a captured update reads, refilled in place for every replay.

    A CUDA graph replays the kernels it recorded on the memory it recorded them with, so each
    new batch must be copied into the same tensors. ``copy_in`` checks the whole batch (keys,
    shapes, dtypes) before it copies anything, so a rejected batch leaves the buffers as they
    were. Device-agnostic (the copy logic is tested on CPU).
    """

    def __init__(self, batch: dict[str, torch.Tensor]) -> None:
        self.tensors = {k: torch.empty_like(v) for k, v in batch.items()}
        self.copy_in(batch)

    def copy_in(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if set(batch) != set(self.tensors):
            raise ValueError(f"Learner.update (CUDA graph): batch keys {sorted(batch)} differ from "
                             f"the captured ones {sorted(self.tensors)}")
        for k, v in batch.items():
            t = self.tensors[k]
            if v.shape != t.shape or v.dtype != t.dtype:
                raise ValueError(
                    f"Learner.update (CUDA graph): batch[{k!r}] is {tuple(v.shape)} {v.dtype}, "
                    f"the captured update reads {tuple(t.shape)} {t.dtype} (a captured graph has "
                    "fixed shapes: keep batch_size and window_len, or set cuda_graph=False)")
        for k, v in batch.items():
            self.tensors[k].copy_(v, non_blocking=True)
        return self.tensors


def ema_where_(targets: list[torch.Tensor], onlines: list[torch.Tensor], tau: float,
               apply: torch.Tensor) -> None:
    """Target EMA ``t ← t + tau·(o − t)`` for all pairs (one ``_foreach_lerp``) where ``apply``
    (0-dim bool tensor) is True, an exact no-op where it is False — even when an online tensor
    is not finite (a zero lerp weight would give 0·inf = NaN) — without reading ``apply`` on
    the host: one ``where`` per tensor selects the result."""
    for t, new in zip(targets, torch._foreach_lerp(targets, onlines, tau)):
        torch.where(apply, new, t, out=t)
