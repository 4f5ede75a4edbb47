"""Timestep encoder: one row (o_t, a_{t-1}, r_{t-1}, boundary flag) → one embedding.

Row layout follows docs/DESIGN.md: row t holds the observation o_t, the previous action and
reward, and ``time_index``; a row with ``time_index == 0`` is a rollout start, where the previous
action/reward do not exist (their features are zeroed there, the boundary flag is 1).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from amago_fast.nets.layers import Dropout, RunningNorm, mlp
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
    low, high = _action_bounds(tuple(spec.low), tuple(spec.high), action.device)
    return (2.0 * (action.to(torch.float32) - low) / (high - low) - 1.0).clamp(-1.0, 1.0)


@functools.lru_cache(maxsize=64)
def _action_bounds(low: tuple, high: tuple, device: torch.device):
    """(low, high) float32 tensors on ``device``, made once: building them from the tuples on
    every call is a blocking host-to-device copy on a GPU (and cannot be graph-captured)."""
    return (torch.tensor(low, dtype=torch.float32, device=device),
            torch.tensor(high, dtype=torch.float32, device=device))


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
        # Rollout path (see rollout_forward): per-key widths, action constants, and one
        # preallocated float32 feature matrix per batch size (filled by NumPy each step).
        self.image_features = image_features
        self._flat_dims = {k: int(np.prod(s)) for k, s in self.field_shapes.items()}
        a = spec.action
        if a.kind == "discrete":
            self._arange_n = [np.arange(a.n)]
        elif a.kind == "multidiscrete":
            self._arange_n = [np.arange(n) for n in a.nvec]
        else:
            self._act_low = np.asarray(a.low, np.float32)
            self._act_range = np.asarray(a.high, np.float32) - self._act_low
        self._rollout_buffers: dict[int, np.ndarray] = {}

    def _vector(self, rows: dict[str, torch.Tensor], keys: list[str], lead: torch.Size):
        if not keys:
            return None
        parts = [rows[k].reshape(*lead, -1).to(torch.float32) for k in keys]
        return torch.cat(parts, dim=-1)

    @torch.no_grad()
    def update_normalizer(self, rows: dict[str, torch.Tensor], valid: torch.Tensor,
                          check_finite: bool = True) -> None:
        """Fold the observation rows where ``valid`` (…,) is True into the running statistics
        (``check_finite``: see :meth:`RunningNorm.update`)."""
        if self.normalizer is None:
            return
        x = self._vector(rows, self.norm_keys, valid.shape)
        self.normalizer.update(x, valid, check_finite=check_finite)

    @property
    def measured_dim(self) -> int:
        """Width of :meth:`measured_observation`: the standardised (float, non-goal) fields."""
        return sum(int(np.prod(self.field_shapes[k])) for k in self.norm_keys)

    def measured_observation(self, rows: dict[str, torch.Tensor], lead: torch.Size,
                             standardize: bool = True) -> torch.Tensor | None:
        """The measured vector observation (…, measured_dim): the float, non-goal fields
        concatenated, standardised by the running statistics as the network sees them (raw
        with ``standardize=False`` or when ``normalize_inputs`` is off); None when the spec
        has no such field."""
        x = self._vector(rows, self.norm_keys, lead)
        if x is None or self.normalizer is None or not standardize:
            return x
        return self.normalizer(x)

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

    def image_embeddings(self, rows: dict[str, np.ndarray]) -> list[torch.Tensor]:
        """Each image key's CNN embedding (b, image_features) from NumPy rollout rows (uint8
        (b, H, W, C)); the CNNs are called as modules, so their hooks see the call."""
        return [self.image_encoders[k](torch.from_numpy(np.ascontiguousarray(rows[k])))
                for k in self.image_keys]

    def rollout_plan(self) -> TimestepRolloutPlan:
        """Parameter-derived tensors for :meth:`rollout_forward` (rebuild after any change)."""
        return TimestepRolloutPlan(self)

    def rollout_forward(
        self, plan: TimestepRolloutPlan, rows: dict[str, np.ndarray], time_index: np.ndarray
    ) -> torch.Tensor:
        """Rollout step on CPU: NumPy rows (b, …) as validated by the agent, ``time_index``
        (b,) int64 → (b, d_out), equal to ``forward`` on the same rows. Features are assembled
        by NumPy into a preallocated matrix shared with torch (no per-key tensor conversion),
        then the MLP runs one aten op per module."""
        return _timestep_rollout_forward(self, plan, rows, time_index)


def mlp_plan(net: nn.Sequential) -> list[tuple]:
    """Parameter-derived tensors of an :func:`mlp` for the unchecked rollout path: per module
    ("linear", bias, Wᵀ) / ("norm", shape, weight, bias, eps) / ("leaky", slope); dropout is
    skipped (rollouts are deterministic, see ``amago_fast.nets.layers``)."""
    plan: list[tuple] = []
    for m in net:
        if isinstance(m, nn.Linear):
            plan.append(("linear", m.bias.detach(), m.weight.detach().t()))
        elif isinstance(m, nn.LayerNorm):
            plan.append(("norm", m.normalized_shape, m.weight.detach(), m.bias.detach(), m.eps))
        elif isinstance(m, nn.LeakyReLU):
            plan.append(("leaky", m.negative_slope))
        elif not isinstance(m, (Dropout, nn.Dropout)):
            raise TypeError(f"rollout path: unexpected module {type(m).__name__} in the MLP")
    return plan


def run_mlp_plan(plan: list[tuple], x: torch.Tensor) -> torch.Tensor:
    """Apply :func:`mlp_plan` (one aten op per module; activations in place)."""
    for op in plan:
        if op[0] == "linear":
            x = torch.addmm(op[1], x, op[2])
        elif op[0] == "norm":
            x = F.layer_norm(x, op[1], op[2], op[3], op[4])
        else:
            x = F.leaky_relu_(x, op[1])
    return x


class TimestepRolloutPlan:
    """What :meth:`TimestepEncoder.rollout_forward` needs, derived from the parameters once per
    parameter version: the normaliser's float32 mean/std as NumPy arrays and the MLP plan."""

    def __init__(self, enc: TimestepEncoder) -> None:
        if enc.normalizer is not None and float(enc.normalizer.count) >= 2:
            norm = enc.normalizer
            self.norm_mean = norm.mean.to(torch.float32).cpu().numpy()
            self.norm_std = torch.sqrt(norm.var + norm.eps).to(torch.float32).cpu().numpy()
        else:
            self.norm_mean = self.norm_std = None
        self.clip = np.float32(enc.normalizer.clip) if enc.normalizer is not None else None
        self.mlp = mlp_plan(enc.net)


def _timestep_rollout_forward(
    enc: TimestepEncoder, plan: TimestepRolloutPlan, rows: dict[str, np.ndarray],
    time_index: np.ndarray,
) -> torch.Tensor:
    """See :meth:`TimestepEncoder.rollout_forward`."""
    b = time_index.shape[0]
    feats = enc._rollout_buffers.get(b)
    if feats is None:
        feats = np.zeros((b, enc.in_dim), np.float32)
        enc._rollout_buffers[b] = feats
    col = 0
    # The same features, in the same order and float32 arithmetic, as ``forward``.
    if enc.norm_keys:
        w = sum(enc._flat_dims[k] for k in enc.norm_keys)
        seg = feats[:, col:col + w]
        c = col
        for k in enc.norm_keys:
            d = enc._flat_dims[k]
            seg_k = feats[:, c:c + d]
            seg_k[...] = rows[k].reshape(b, d)
            c += d
        if plan.clip is not None:
            if plan.norm_mean is not None:
                np.subtract(seg, plan.norm_mean, out=seg)
                np.divide(seg, plan.norm_std, out=seg)
            np.clip(seg, -plan.clip, plan.clip, out=seg)
        col += w
    for k in enc.raw_keys:
        d = enc._flat_dims[k]
        feats[:, col:col + d] = rows[k].reshape(b, d)
        col += d
    first = None
    if enc.image_keys:
        first = col
        col += len(enc.image_keys) * enc.image_features
    exists = (time_index != 0).astype(np.float32)
    a = enc.spec.action
    action = rows["action"]
    if a.kind == "discrete":
        feats[:, col:col + a.n] = (action.reshape(b, 1) == enc._arange_n[0]) * exists[:, None]
        col += a.n
    elif a.kind == "multidiscrete":
        for i, n in enumerate(a.nvec):
            feats[:, col:col + n] = (action[:, i:i + 1] == enc._arange_n[i]) * exists[:, None]
            col += n
    else:
        d = a.shape[0]
        x = 2.0 * (action.astype(np.float32) - enc._act_low) / enc._act_range - 1.0
        feats[:, col:col + d] = np.clip(x, -1.0, 1.0) * exists[:, None]
        col += d
    r = rows["reward"].astype(np.float32, copy=False)
    feats[:, col] = np.sign(r) * np.log1p(np.abs(r)) * exists
    feats[:, col + 1] = 1.0 - exists
    x = torch.from_numpy(feats)
    if enc.image_keys:
        x = x.clone()
        for j, emb in enumerate(enc.image_embeddings(rows)):
            s = first + j * enc.image_features
            x[:, s:s + enc.image_features] = emb
    return run_mlp_plan(plan.mlp, x)
