"""The one-step greedy policy as a ``torch.export`` program: ``amago-fast export RUN OUT.pt2``,
:meth:`amago_fast.DeployedPolicy.export`; :func:`amago_fast.exported.load_exported` runs a
file (kept apart so that writing never imports the deployed policy that runs it).

The program maps (this step's row, the rollout state) to (the greedy action, the next state),
with no Python and no amago_fast code needed to run it (``torch.export.load``, or AOTInductor /
ExecuTorch from the same file). Inputs, in order (B = the batch the program was exported
for, W = its window, below):

- the step's row: each observation field ``(B, *shape)`` in the run's order, the previous
  action, the previous reward ``(B,)`` float32 and the step's time index ``(B,)`` int64 (0 opens
  a rollout: previous action and reward are then ignored);
- the state: the same fields over the last W steps ``(B, W, ...)`` and ``filled`` ``(B,)`` int64,
  the number of those rows in use (set an env's ``filled`` to 0 to start a new rollout there).

Outputs: the action ``(B,)`` int32 / ``(B, k)`` int32 / ``(B, d)`` float32 within the env's
bounds, then the next state in the same order.

Why a window and not the KV cache the eager step keeps: a ring cache is updated in place at
a data-dependent slot, which an exported graph expresses poorly; the window holds the inputs
instead and the step re-encodes them. The Transformer attends over the last ``context_len``
steps in every layer, so the newest step depends on at most ``W = num_layers · (context_len -
1) + 1`` earlier rows: with that window the program computes what the eager step computes, at
every step of any rollout length (the test checks equal actions on a trained run). Cost: one
W-row encoder pass per step instead of one row (fine for deployment; training never uses it).
The feed-forward (memory-free) encoder has W = 1. GRU encoders keep a recurrent state the
window cannot reproduce: export refuses them.

ONNX: a path ending in ``.onnx`` writes the same program through ``torch.onnx.export``
(opset 18; needs ``pip install 'amago_fast[onnx]'``: onnx and onnxscript, no torch
requirement), inputs named ``row.<field>``, ``state.<field>``, ``state.filled`` and outputs
``action``, ``next.<field>``, ``next.filled``; :func:`load_exported` runs it with onnxruntime.

Files hold the run's observation/action spec (``extra_files["amago_fast_spec.json"]``, or the
ONNX model's metadata), so :func:`load_exported` gives back a
:class:`~amago_fast.deploy.DeployedPolicy` that keeps the bookkeeping (previous action /
reward, time index, episode starts) as the eager one does.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from amago_fast.spaces import ACTION, REWARD, EnvSpec

__all__ = ["export_policy", "export_program", "window_len", "row_fields", "example_inputs",
           "SPEC_ENTRY"]

SPEC_ENTRY = "amago_fast_spec.json"
"""The name of the spec inside an exported file's extra files."""


def window_len(agent: Any) -> int:
    """W: the rows the newest step of `agent` depends on (see the module docstring)."""
    cfg = agent.config
    if cfg.traj_encoder == "transformer":
        return cfg.num_layers * (cfg.context_len - 1) + 1
    if cfg.traj_encoder == "ff":
        return 1
    raise ValueError(f"export supports the Transformer and feed-forward encoders, not "
                     f"{cfg.traj_encoder!r} (a recurrent state is not a window of inputs)")


def row_fields(spec: EnvSpec) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    """(name, per-step shape, dtype) of the program's row inputs, in order."""
    out = [(f.name, tuple(f.shape), torch.from_numpy(np.zeros(0, f.dtype)).dtype)
           for f in spec.observation]
    act = spec.action.field
    out.append((ACTION, tuple(act.shape), torch.from_numpy(np.zeros(0, act.dtype)).dtype))
    out.append((REWARD, (), torch.float32))
    out.append(("time_index", (), torch.int64))
    return out


class _GreedyStep(nn.Module):
    """The exported function (see the module docstring) around an Agent's modules."""

    def __init__(self, agent: Any, window: int) -> None:
        super().__init__()
        self.tstep_encoder, self.traj_encoder, self.actor = (agent.tstep_encoder,
                                                             agent.traj_encoder, agent.actor)
        self.fields = row_fields(agent.spec)
        self.window = window
        spec = agent.spec.action
        self.kind = spec.kind
        if spec.kind == "continuous":
            low = torch.tensor(spec.low, dtype=torch.float32)
            self.register_buffer("low", low)
            self.register_buffer("half_range",
                                 0.5 * (torch.tensor(spec.high, dtype=torch.float32) - low))

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = len(self.fields)
        row, win, filled = args[:n], args[n:2 * n], args[2 * n]
        W = self.window
        full = filled >= W
        pos = torch.where(full, torch.full_like(filled, W - 1), filled)  # the new row's slot
        slots = torch.arange(W, device=filled.device)
        at_pos = slots[None, :] == pos[:, None]  # (B, W)
        new_win = []
        for r, w in zip(row, win):
            extra = (1,) * (w.dim() - 2)
            shifted = torch.cat([w[:, 1:], torch.zeros_like(w[:, :1])], dim=1)
            base = torch.where(full.view(-1, 1, *extra), shifted, w)
            new_win.append(torch.where(at_pos.view(*at_pos.shape, *extra), r[:, None], base))
        new_filled = torch.clamp(filled + 1, max=W)
        rows = {name: t for (name, _, _), t in zip(self.fields, new_win)}
        ti = rows.pop("time_index")
        # Rows past `pos` are stale or zero: the attention is causal, so row `pos` never reads
        # them (the window is filled from slot 0 on), and no mask is needed.
        emb = self.tstep_encoder(rows, ti)
        h = self.traj_encoder(emb, ti, None)
        h = h.gather(1, pos.view(-1, 1, 1).expand(-1, 1, h.shape[-1])).squeeze(1)
        params = self.actor(h)[:, -1]
        action = self.actor.act(params, False)
        if self.kind == "continuous":
            action = (self.low + (action + 1.0) * self.half_range).to(torch.float32)
        else:
            action = action.to(torch.int32)
        return (action, *new_win, new_filled)


def example_inputs(spec: EnvSpec, batch: int, window: int) -> tuple[torch.Tensor, ...]:
    fields = row_fields(spec)
    row = [torch.zeros((batch, *shape), dtype=dt) for _, shape, dt in fields]
    win = [torch.zeros((batch, window, *shape), dtype=dt) for _, shape, dt in fields]
    return (*row, *win, torch.zeros(batch, dtype=torch.int64))


def export_program(agent: Any, batch: int = 1) -> Any:
    """The ``torch.export.ExportedProgram`` of `agent`'s greedy step for `batch` envs (CPU,
    float32; the agent is copied, not changed)."""
    import copy

    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ValueError(f"export: batch must be a positive integer, got {batch!r}")
    window = window_len(agent)
    cpu = copy.deepcopy(agent).to("cpu").float().eval().requires_grad_(False)
    step = _GreedyStep(cpu, window).eval()
    example = example_inputs(cpu.spec, int(batch), window)
    with torch.no_grad():
        # One eager call first: module-level caches the forward fills on first use (the
        # continuous action bounds) then hold real tensors; filled while tracing they would
        # hold fake ones, which torch.export rejects and later eager calls could not use.
        step(*example)
        return torch.export.export(step, example)


def io_names(spec: EnvSpec) -> tuple[list[str], list[str]]:
    """(input names, output names) of the program, in order (the ONNX graph's names)."""
    names = [name for name, _, _ in row_fields(spec)]
    inputs = [f"row.{n}" for n in names] + [f"state.{n}" for n in names] + ["state.filled"]
    outputs = ["action"] + [f"next.{n}" for n in names] + ["next.filled"]
    return inputs, outputs


def _save_onnx(program: Any, tmp: str, meta: dict, spec: EnvSpec) -> None:
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch.onnx's exporter translates through it)
    except ImportError:
        raise ValueError("export: ONNX needs onnx and onnxscript: pip install "
                         "'amago_fast[onnx]'") from None
    inputs, outputs = io_names(spec)
    torch.onnx.export(program, (), tmp, dynamo=True, input_names=inputs,
                      output_names=outputs, verbose=False)
    model = onnx.load(tmp)
    entry = model.metadata_props.add()
    entry.key, entry.value = SPEC_ENTRY, json.dumps(meta)
    onnx.save(model, tmp)


def export_policy(agent: Any, path: str | os.PathLike, batch: int = 1,
                  overwrite: bool = False) -> Path:
    """Write `agent`'s greedy step (see the module docstring) to `path` (``.pt2``, or
    ``.onnx`` for ONNX), atomically; an existing file is replaced only with
    ``overwrite=True``."""
    from amago_fast.spec_io import spec_to_dict

    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"export: {target} exists (pass overwrite=True to replace it)")
    if not target.parent.is_dir():
        raise FileNotFoundError(f"export: no directory {target.parent}")
    program = export_program(agent, batch)
    meta = {"spec": spec_to_dict(agent.spec), "window": window_len(agent), "batch": int(batch)}
    onnx_out = target.suffix == ".onnx"
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                               suffix=".onnx" if onnx_out else ".pt2")
    os.close(fd)
    try:
        if onnx_out:
            _save_onnx(program, tmp, meta, agent.spec)
        else:
            torch.export.save(program, tmp, extra_files={SPEC_ENTRY: json.dumps(meta)})
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
        Path(tmp + ".data").unlink(missing_ok=True)  # (ONNX external data: none for these)
    return target
