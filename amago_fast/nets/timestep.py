"""Timestep encoder: one row (o_t, a_{t-1}, r_{t-1}, boundary flag) → one embedding.

Row layout follows docs/DESIGN.md: row t holds the observation o_t, the previous action and
reward, and ``time_index``; a row with ``time_index == 0`` is a rollout start, where the previous
action/reward do not exist (their features are zeroed there, the boundary flag is 1).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from amago_fast.nets.layers import RunningNorm, mlp
from amago_fast.spaces import ActionSpec, EnvSpec, FieldSpec


def is_image(field: FieldSpec) -> bool:
    """uint8 (H, W, C) fields are images; everything else is flattened into a vector."""
    return field.dtype == np.dtype(np.uint8) and len(field.shape) == 3


def symlog(x: torch.Tensor) -> torch.Tensor:
    """sign(x)·log(1+|x|): keeps reward inputs O(1) whatever the reward scale."""
    return torch.sign(x) * torch.log1p(x.abs())


def action_features(action: torch.Tensor, spec: ActionSpec) -> torch.Tensor:
    """Buffer actions (..., *action_shape) → float features (..., action_feature_dim(spec)).

    Discrete → one-hot; multi-discrete → concatenated one-hots; continuous → the raw vector
    rescaled from [low, high] to [-1, 1].
    """
    if spec.kind == "discrete":
        return F.one_hot(action.long(), spec.n).to(torch.float32)
    if spec.kind == "multidiscrete":
        parts = [F.one_hot(action[..., i].long(), n) for i, n in enumerate(spec.nvec)]
        return torch.cat(parts, dim=-1).to(torch.float32)
    low = torch.tensor(spec.low, dtype=torch.float32, device=action.device)
    high = torch.tensor(spec.high, dtype=torch.float32, device=action.device)
    return (2.0 * (action.to(torch.float32) - low) / (high - low) - 1.0).clamp(-1.0, 1.0)


def action_feature_dim(spec: ActionSpec) -> int:
    """Width of :func:`action_features`."""
    if spec.kind == "discrete":
        return spec.n
    if spec.kind == "multidiscrete":
        return int(sum(spec.nvec))
    return int(spec.shape[0])


class ImageEncoder(nn.Module):
    """Small CNN for uint8 HWC images: two stride-2 3×3 convs, one stride-1, then a linear."""

    def __init__(self, shape: tuple[int, int, int], out_dim: int, channels: int = 32) -> None:
        super().__init__()
        h, w, c = shape
        self.convs = nn.Sequential(
            nn.Conv2d(c, channels, 3, stride=2, padding=1),
            nn.LeakyReLU(),
            nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1),
            nn.LeakyReLU(),
            nn.Conv2d(2 * channels, 2 * channels, 3, stride=1, padding=1),
            nn.LeakyReLU(),
        )
        with torch.no_grad():
            flat = self.convs(torch.zeros(1, c, h, w)).numel()
        self.out = nn.Linear(flat, out_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        lead = images.shape[:-3]
        x = images.reshape(-1, *images.shape[-3:]).permute(0, 3, 1, 2).to(torch.float32) / 255.0
        x = self.convs(x).flatten(1)
        return self.out(x).reshape(*lead, -1)


class TimestepEncoder(nn.Module):
    """Observation dict + previous action + previous reward + boundary flag → (…, d_out).

    Args:
        spec: the environment's spec; every observation key is used.
        d_hidden, d_out, num_layers: the MLP after feature concatenation.
        normalize_inputs: running mean/std normalisation of the non-goal vector observations,
            updated only through :meth:`update_normalizer` (the learner calls it on valid rows).
        image_features: width each image key is embedded to by its CNN.
        dropout: dropout inside the MLP.
    """

    def __init__(
        self,
        spec: EnvSpec,
        d_hidden: int = 256,
        d_out: int = 128,
        num_layers: int = 2,
        normalize_inputs: bool = True,
        image_features: int = 128,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.spec = spec
        goal_names = {f.name for f in spec.goals.fields()} if spec.goals is not None else set()
        self.image_keys = [f.name for f in spec.observation if is_image(f)]
        vec = [f for f in spec.observation if not is_image(f)]
        # Goal/index/bool fields are categorical: they enter raw. Only measured vectors are
        # standardised.
        self.norm_keys = [
            f.name
            for f in vec
            if f.name not in goal_names and np.issubdtype(f.dtype, np.floating)
        ]
        self.raw_keys = [f.name for f in vec if f.name not in self.norm_keys]
        self.field_shapes = {f.name: f.shape for f in spec.observation}
        norm_dim = sum(int(np.prod(self.field_shapes[k])) for k in self.norm_keys)
        raw_dim = sum(int(np.prod(self.field_shapes[k])) for k in self.raw_keys)
        self.normalizer = RunningNorm(norm_dim) if (normalize_inputs and norm_dim) else None
        self.image_encoders = nn.ModuleDict(
            {k: ImageEncoder(self.field_shapes[k], image_features) for k in self.image_keys}
        )
        self.action_dim = action_feature_dim(spec.action)
        in_dim = norm_dim + raw_dim + image_features * len(self.image_keys) + self.action_dim + 2
        self.in_dim = in_dim
        self.d_out = d_out
        self.net = mlp(in_dim, d_hidden, d_out, num_layers, dropout=dropout, out_norm=True)

    def _vector(self, rows: dict[str, torch.Tensor], keys: list[str], lead: torch.Size):
        if not keys:
            return None
        parts = [rows[k].reshape(*lead, -1).to(torch.float32) for k in keys]
        return torch.cat(parts, dim=-1)

    @torch.no_grad()
    def update_normalizer(self, rows: dict[str, torch.Tensor], valid: torch.Tensor) -> None:
        """Fold the observation rows where ``valid`` (…,) is True into the running statistics."""
        if self.normalizer is None:
            return
        x = self._vector(rows, self.norm_keys, valid.shape)
        self.normalizer.update(x, valid)

    def forward(self, rows: dict[str, torch.Tensor], time_index: torch.Tensor) -> torch.Tensor:
        """``rows``: observation keys, ``action``, ``reward``, leading dims ``time_index.shape``.

        Returns the embeddings, shape ``(*time_index.shape, d_out)``.
        """
        lead = time_index.shape
        feats = []
        x = self._vector(rows, self.norm_keys, lead)
        if x is not None:
            feats.append(self.normalizer(x) if self.normalizer is not None else x)
        x = self._vector(rows, self.raw_keys, lead)
        if x is not None:
            feats.append(x)
        for k in self.image_keys:
            feats.append(self.image_encoders[k](rows[k]))
        boundary = (time_index == 0).unsqueeze(-1).to(torch.float32)
        # At a rollout start there is no previous action/reward: zero them explicitly.
        exists = 1.0 - boundary
        feats.append(action_features(rows["action"], self.spec.action) * exists)
        feats.append(symlog(rows["reward"].to(torch.float32)).unsqueeze(-1) * exists)
        feats.append(boundary)
        return self.net(torch.cat(feats, dim=-1))
