"""Running an exported policy file (``.pt2`` from ``torch.export``, or ``.onnx``):
:func:`load_exported` gives back a :class:`~amago_fast.deploy.DeployedPolicy` whose agent is the
file's program, so it keeps the same bookkeeping (previous action / reward, time index, episode
starts) as the eager policy. The file format is amago_fast/export.py's; this module is apart
from it so that the import graph stays one-way (deploy -> export for writing, exported ->
deploy and export for reading)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from amago_fast.deploy import DeployedPolicy
from amago_fast.export import SPEC_ENTRY, example_inputs, row_fields
from amago_fast.spaces import EnvSpec
from amago_fast.spec_io import spec_from_dict

__all__ = ["load_exported", "ExportedAgent"]


class ExportedAgent:
    """An exported step behind the agent interface :class:`~amago_fast.deploy.DeployedPolicy`
    drives (``init_state`` / ``reset_state`` / ``act``), so a loaded program acts with the same
    bookkeeping as the eager policy. Greedy only; ``num_envs`` must be the exported batch."""

    def __init__(self, run: Any, spec: EnvSpec, window: int, batch: int) -> None:
        self.run = run  # list of input tensors -> list of output tensors
        self.spec, self.window, self.batch = spec, window, batch
        self._fields = row_fields(spec)

    def init_state(self, num_envs: int) -> list[torch.Tensor]:
        if num_envs != self.batch:
            raise ValueError(f"this exported policy runs {self.batch} envs, not {num_envs} "
                             "(export again with batch=...)")
        return list(example_inputs(self.spec, self.batch, self.window)[len(self._fields):])

    def reset_state(self, state: list[torch.Tensor], env_ids: np.ndarray) -> list[torch.Tensor]:
        filled = state[-1].clone()
        filled[torch.as_tensor(np.asarray(env_ids, np.int64))] = 0
        return [*state[:-1], filled]

    def act(self, rows: dict[str, np.ndarray], state: list[torch.Tensor],
            sample: bool) -> tuple[np.ndarray, list[torch.Tensor]]:
        if sample:
            raise ValueError("an exported policy is greedy (sample=False)")
        inputs = [torch.as_tensor(np.ascontiguousarray(rows[name]), dtype=dt)
                  for name, _, dt in self._fields]
        out = self.run([*inputs, *state])
        return out[0].numpy(), list(out[1:])


def load_exported(path: str | os.PathLike) -> Any:
    """A :class:`~amago_fast.deploy.DeployedPolicy` running an exported file's program
    (``reset(batch)`` then ``act(obs, reward, done)`` as with :func:`amago_fast.load_agent`).
    ValueError names a file that is not an amago_fast export."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such exported policy")
    if path.suffix == ".onnx":
        run, text = _onnx_runner(path)
    else:
        extra = {SPEC_ENTRY: ""}
        try:
            program = torch.export.load(path, extra_files=extra)
        except Exception as e:  # a zip that is not an ExportedProgram, a truncated file, ...
            raise ValueError(f"{path}: not a torch.export program ({type(e).__name__}: {e})"
                             ) from None
        module, text = program.module(), extra[SPEC_ENTRY]

        def run(inputs: list[torch.Tensor]) -> list[torch.Tensor]:
            with torch.no_grad():
                return list(module(*inputs))
    try:
        meta = json.loads(text)
        spec = spec_from_dict(meta["spec"], f"{path}:{SPEC_ENTRY}")
        window, batch = int(meta["window"]), int(meta["batch"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: no amago_fast spec in the file ({SPEC_ENTRY}: {e})"
                         ) from None
    return DeployedPolicy(ExportedAgent(run, spec, window, batch))


def _onnx_runner(path: Path) -> tuple[Any, str]:
    """(run, spec JSON) of an ONNX export, run by onnxruntime."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ValueError(f"{path}: running an ONNX export needs onnxruntime (pip install "
                         "onnxruntime)") from None
    try:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's own error types for a file that is not a model
        raise ValueError(f"{path}: not an ONNX model ({type(e).__name__}: {e})") from None
    names = [i.name for i in sess.get_inputs()]

    def run(inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        out = sess.run(None, {n: t.numpy() for n, t in zip(names, inputs)})
        return [torch.from_numpy(np.asarray(o)) for o in out]

    return run, sess.get_modelmeta().custom_metadata_map.get(SPEC_ENTRY, "")
