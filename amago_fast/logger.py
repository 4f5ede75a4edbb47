"""Run logging: CSV files and TensorBoard by default, Weights & Biases when asked.

Metrics are logged in groups (`train`, `eval`, `collect`, ...). Each group gets one wide CSV file
`<run_dir>/<group>.csv` whose first columns are `env_steps` and `wall_time` (seconds of training,
summed across resumes); a metric that appears later widens the file (it is rewritten once with
the new header). TensorBoard scalars are named `<group>/<metric>` with env steps as the x axis.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any

__all__ = ["RunLogger", "read_csv"]

_INDEX = ("env_steps", "wall_time")


def _to_float(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f


def read_csv(path: str | os.PathLike) -> dict[str, list[float]]:
    """Read a logger CSV as {column: values} (missing cells are NaN)."""
    cols: dict[str, list[float]] = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        names = reader.fieldnames or []
        for n in names:
            cols[n] = []
        for row in reader:
            for n in names:
                v = _to_float(row.get(n))
                cols[n].append(math.nan if v is None else v)
    return cols


class _CsvGroup:
    """One wide CSV file; appends rows, widening the header when new keys appear."""

    def __init__(self, path: Path, truncate_after: int | None) -> None:
        self.path = path
        self.columns: list[str] = list(_INDEX)
        self.rows_written = 0
        if path.exists():
            with open(path, newline="") as fh:
                reader = csv.DictReader(fh)
                header = reader.fieldnames or []
                rows = list(reader)
            if header:
                self.columns = list(header)
            if truncate_after is not None:
                # A resumed run continues from its checkpoint: drop rows logged after it so the
                # curve has no duplicated stretch.
                kept = [
                    r for r in rows if (_to_float(r.get("env_steps")) or 0) <= truncate_after
                ]
                if len(kept) != len(rows):
                    self._rewrite(kept)
                    rows = kept
            self.rows_written = len(rows)

    def _rewrite(self, rows: list[dict]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns, restval="")
            writer.writeheader()
            for r in rows:
                writer.writerow({k: r.get(k, "") for k in self.columns})
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

    def append(self, row: dict[str, float]) -> None:
        new = [k for k in row if k not in self.columns]
        if new:
            self.columns.extend(sorted(new))
            if self.path.exists():
                with open(self.path, newline="") as fh:
                    rows = list(csv.DictReader(fh))
                self._rewrite(rows)
        exists = self.path.exists()
        with open(self.path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=self.columns, restval="")
            if not exists:
                writer.writeheader()
            writer.writerow({k: row.get(k, "") for k in self.columns})
        self.rows_written += 1


class RunLogger:
    """Writes metric groups to CSV, TensorBoard and (optionally) wandb.

    Args:
        run_dir: the run directory (created if missing).
        tensorboard: write TensorBoard event files under `run_dir/tb`.
        wandb: log to Weights & Biases too; wandb is imported only then.
        wandb_project: wandb project name.
        config: the resolved config (dict), sent to wandb.
        resume_env_steps: when resuming, CSV rows logged after this env step are dropped.
        enabled: False makes every call a no-op (non-zero ranks).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        tensorboard: bool = True,
        wandb: bool = False,
        wandb_project: str = "amago_fast",
        config: dict | None = None,
        resume_env_steps: int | None = None,
        enabled: bool = True,
    ) -> None:
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self._groups: dict[str, _CsvGroup] = {}
        self._resume = resume_env_steps
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(
                log_dir=str(self.run_dir / "tb"),
                purge_step=resume_env_steps + 1 if resume_env_steps is not None else None,
            )
        if wandb:
            try:
                import wandb as wandb_lib
            except ImportError as e:
                raise ImportError(
                    "wandb logging was asked for (--wandb true) but wandb is not installed: "
                    "pip install wandb"
                ) from e
            self._wandb = wandb_lib.init(
                project=wandb_project,
                name=self.run_dir.name,
                dir=str(self.run_dir),
                config=config,
                resume="allow",
                id=self.run_dir.name.replace("/", "_"),
            )

    def log(self, group: str, metrics: dict[str, Any], env_steps: int, wall_time: float) -> None:
        """Log numeric `metrics` under `group` at `env_steps` (non-numeric values are skipped)."""
        if not self.enabled:
            return
        clean: dict[str, float] = {}
        for k, v in metrics.items():
            f = _to_float(v)
            if f is not None and not isinstance(v, str):
                # a metric named like an index column (e.g. an eval's own env_steps) is kept
                # under "<group>_<name>" so it cannot overwrite the x axis
                clean[f"{group}_{k}" if k in _INDEX else k] = f
        if group not in self._groups:
            self._groups[group] = _CsvGroup(self.run_dir / f"{group}.csv", self._resume)
        row = {"env_steps": float(env_steps), "wall_time": float(wall_time), **clean}
        self._groups[group].append(row)
        if self._tb is not None:
            for k, v in clean.items():
                self._tb.add_scalar(f"{group}/{k}", v, global_step=int(env_steps))
        if self._wandb is not None:
            payload = {f"{group}/{k}": v for k, v in clean.items()}
            self._wandb.log(payload | {"env_steps": env_steps})

    def flush(self) -> None:
        """Flush TensorBoard (CSV rows are written immediately)."""
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Flush and close every sink."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None
