"""The training loop (CleanRL style: `Trainer.train` reads top to bottom).

    cfg = presets.get("tmaze"); Trainer(cfg, run_dir="runs/demo").train()

One iteration: collect `collect_steps_per_iter` vectorized env steps into the buffer, then run
as many gradient updates as `updates_per_env_step` says are owed, then log / evaluate /
checkpoint when their intervals are crossed. With `overlap_collection` a background thread
collects (with its own copy of the policy, refreshed from the learner after every collection
call) while the main thread samples and learns; the buffer's thread contract (one appender,
concurrent samplers) makes that safe, and a condition variable keeps the update/env-step ratio.

A run directory holds config.json, train.csv / eval.csv / collect.csv, tb/ (TensorBoard) and
checkpoints/ (see amago_fast.checkpoint). `Trainer.resume(run_dir)` continues a run from its
newest complete checkpoint.
"""

from __future__ import annotations

import copy
import importlib
import math
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from amago_fast import checkpoint as ckpt
from amago_fast.components import build_agent, learner_config
from amago_fast.config import (
    ConfigError,
    TrainConfig,
    config_to_dict,
    load_config,
    save_config,
    validate,
)
from amago_fast.distributed import (
    DistContext,
    init_distributed,
    make_current,
    resolve_device,
    wrap_ddp,
)
from amago_fast.errors import TrainingError
from amago_fast.evaluation import eval_env_kwargs, evaluate_run, evaluation_row
from amago_fast.intervals import format_interval
from amago_fast.logger import RunLogger
from amago_fast.loop_meters import PROGRESS_REFRESH_S, LoopMeters, mean_or_nan, note
from amago_fast.resume import check_resume_overrides, choose_checkpoint, fields_mismatch
from amago_fast.seeding import rng_state, seed_everything, set_rng_state

if TYPE_CHECKING:
    from amago_fast.collector.background import BackgroundCollector

# resolve_device, build_agent and evaluate_run live in distributed / components / evaluation;
# they stay importable from here, where callers found them.
__all__ = ["Trainer", "TrainingError", "resolve_device", "default_run_dir", "build_agent",
           "evaluate_run"]


def default_run_dir(cfg: TrainConfig) -> Path:
    """`<log_dir>/<run_name or env-name-timestamp>`."""
    name = cfg.run_name or (
        cfg.env.name.replace(":", "_").replace("/", "_") + time.strftime("-%Y%m%d-%H%M%S")
    )
    return Path(cfg.log_dir) / name


class Trainer:
    """Builds env, buffer, agent, learner and collector from a TrainConfig and trains.

    Args:
        cfg: the config (validated here, before anything is built).
        run_dir: where logs and checkpoints go (default: `default_run_dir(cfg)`).
        resume: continue from the newest complete checkpoint in `run_dir`.
        dist: the distributed context (default: join torchrun's job when launched by it).
        env: the user's own training env instead of ``cfg.env.name``: a VectorEnv, a gymnasium
            vector env, an EnvPool pool or a callable building one (amago_fast.user_env).
        eval_env: the evaluation env, in the same forms (default: see amago_fast.user_env).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: str | os.PathLike | None = None,
        *,
        resume: bool = False,
        dist: DistContext | None = None,
        env: Any = None,
        eval_env: Any = None,
    ) -> None:
        from amago_fast.user_env import EnvSource

        if eval_env is not None and env is None:
            raise TypeError("eval_env is given without env (give both, or neither)")
        # A given env is checked before anything else; cfg.env.name is then only a label.
        self.env_source = EnvSource(env, eval_env) if env is not None else None
        # (a copy then: build() records the given env's counts in it, not in the caller's)
        self.cfg = validate(copy.deepcopy(cfg) if env is not None else cfg,
                            check_env_name=env is None)
        self.run_dir = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
        self.resume_requested = resume
        self.device = resolve_device(cfg.device)
        self.dist = dist if dist is not None else init_distributed(str(self.device))
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        # Triton launches on the *current* device: make it the learner's (--device cuda:1
        # without torchrun would otherwise run kernels on GPU 0). The collector thread sets it
        # again for itself (the current device is per thread).
        make_current(self.device)
        # Counters (per rank; env_steps here counts this rank's transitions).
        self.env_steps = 0
        self.updates = 0
        self.skipped_updates = 0
        self.train_seconds = 0.0  # wall time spent in train(), summed across resumes
        self.next_log = 0
        self.next_eval = cfg.eval_interval
        self.next_checkpoint = cfg.checkpoint_interval
        self.last_eval: dict[str, float] = {}
        self.last_eval_step = -1
        self.eval_env_steps = 0  # env steps spent in evaluation episodes (not in env_steps)
        self._stop_signal: int | None = None
        self.offline_updates = 0  # updates made on the dataset alone (amago_fast.offline)
        self.dataset = None  # the offline dataset's buffer, when cfg.data.path names one
        # Every rank collects the same number of steps (and so makes the same number of updates,
        # which DDP needs).
        self.total_per_rank = math.ceil(cfg.total_env_steps / self.dist.world_size)

    @classmethod
    def resume(cls, run_dir: str | os.PathLike, overrides: dict | None = None, *,
               env: Any = None, eval_env: Any = None) -> Trainer:
        """A Trainer continuing the run in `run_dir` (its saved config, plus `overrides`); a
        run trained on the user's own env gets it again as `env` / `eval_env`."""
        from amago_fast.config import apply_overrides

        cfg = load_config(Path(run_dir) / "config.json")
        if overrides:
            cfg = apply_overrides(cfg, overrides)
        return cls(cfg, run_dir, resume=True, env=env, eval_env=eval_env)

    # ------------------------------------------------------------------------------ build
    def build(self) -> None:
        """Create env, eval env, buffer, agent, learner, exploration and collectors."""
        from amago_fast.buffer import RelabelConfig, TrajectoryBuffer
        from amago_fast.collector import Collector
        from amago_fast.envs import make_env
        from amago_fast.exploration import make_exploration
        from amago_fast.learner import Learner
        from amago_fast.user_env import BorrowedEval

        cfg, rank = self.cfg, self.dist.rank
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        for mod in cfg.env.import_modules:  # e.g. popgym registers its gymnasium ids on import
            importlib.import_module(mod)
        env_seed = cfg.seed + 1000 * rank
        eval_envs: dict[str, Any] = {}
        if self.env_source is not None:
            # The user's own env (amago_fast.user_env): its env counts are the run's (and so
            # recorded in config.json); without an eval env, evaluation borrows this one.
            if cfg.env.eval_sets:
                raise ConfigError("env.eval_sets: named evaluation sets are built by env name; "
                                  "with env= given, pass eval_env= instead")
            self.env, own_eval = self.env_source.build(
                cfg.env.num_envs, cfg.env.eval_num_envs, env_seed, env_seed + 500)
            cfg.env.num_envs = self.env.num_envs
            if own_eval is None and cfg.overlap_collection:
                self.env.close()
                raise ConfigError("overlap_collection: the collector thread owns the training "
                                  "env, so evaluation cannot borrow it: give eval_env=")
            if own_eval is not None:
                cfg.env.eval_num_envs = own_eval.num_envs
            eval_envs[""] = own_eval if own_eval is not None else self.env
            sets: dict[str, dict] = {}
        else:
            # Env construction errors (unknown id, bad kwargs, unsupported spaces) are config
            # errors: ConfigError names the fields, and the CLI prints it on one line.
            try:
                self.env = make_env(cfg.env.name, cfg.env.num_envs, seed=env_seed,
                                    **cfg.env.kwargs)
            except (ValueError, TypeError) as e:
                msg = f"env.name={cfg.env.name!r} / env.kwargs={cfg.env.kwargs}: {e}"
                raise ConfigError(msg) from e
            # One evaluation env, or one per named set (env.eval_sets: AIB's three splits).
            sets = cfg.env.eval_sets or {"": {}}
        spec = self.env.spec
        self.spec = spec
        for i, (label, set_kwargs) in enumerate(sets.items()):
            eval_kwargs = eval_env_kwargs(cfg, set_kwargs)
            where = f"env.eval_sets[{label!r}]" if label else "env.eval_kwargs"
            try:
                env = make_env(cfg.env.name, cfg.env.eval_num_envs,
                               seed=env_seed + 500 + 100 * i, **eval_kwargs)
            except (ValueError, TypeError) as e:
                for opened in (self.env, *eval_envs.values()):
                    opened.close()
                raise ConfigError(
                    f"env.eval_num_envs={cfg.env.eval_num_envs} / {where} (the evaluation "
                    f"env: {cfg.env.name!r} with kwargs {eval_kwargs}): {e}"
                ) from e
            eval_envs[label] = env
            if env.spec.observation != spec.observation or env.spec.action != spec.action:
                for opened in (self.env, *eval_envs.values()):
                    opened.close()
                raise ConfigError(
                    f"{where}: the evaluation env's observation/action spec differs from the "
                    f"training env's ({env.spec} vs {spec})"
                )
        self.eval_env = next(iter(eval_envs.values()))
        if cfg.buffer.relabel != "none" and spec.goals is None:
            raise ConfigError(
                f"buffer.relabel={cfg.buffer.relabel!r} needs a multi-goal env; "
                f"{cfg.env.name} has no goals"
            )
        self.buffer = TrajectoryBuffer.from_env_spec(
            spec,
            cfg.buffer.capacity_steps,
            cfg.env.num_envs,
            max_trajectory_len=cfg.buffer.max_trajectory_len,
            seed=cfg.seed + rank,
        )
        if cfg.data.path:  # an offline dataset, read and checked whole (amago_fast.offline)
            from amago_fast.offline import load_dataset

            try:
                self.dataset = load_dataset(cfg.data.path, spec, seed=cfg.seed + rank,
                                            max_trajectory_len=cfg.buffer.max_trajectory_len)
            except ConfigError:
                for opened in (self.env, *eval_envs.values()):
                    opened.close()
                raise
        self.agent = build_agent(spec, cfg, self.device)
        seed_everything(cfg.seed + rank)  # collection/sampling randomness differs per rank
        wrap = wrap_ddp(self.dist, self.device)
        self.learner = Learner(self.agent, learner_config(cfg, self.device), wrap_module=wrap)
        try:
            self.exploration = make_exploration(
                spec.action, cfg.env.num_envs, seed=cfg.seed + rank, **cfg.exploration
            )
        except (TypeError, ValueError) as e:
            raise ConfigError(f"exploration={cfg.exploration}: {e}") from None
        if cfg.overlap_collection:
            # The collector thread acts with its own copy so it never reads weights mid-update.
            self.policy = copy.deepcopy(self.agent)
        else:
            self.policy = self.agent
        self.collector = Collector(self.env, self.policy, self.buffer, self.exploration,
                                   nan_policy=cfg.env.nan_policy)
        self.eval_collectors = {label: Collector(env, self.agent) if env is not self.env
                                else BorrowedEval(self) for label, env in eval_envs.items()}
        self.eval_collector = self.eval_collectors[next(iter(eval_envs))]
        self.relabel = (
            None
            if cfg.buffer.relabel == "none"
            else RelabelConfig(strategy=cfg.buffer.relabel, probability=cfg.buffer.relabel_prob)
        )

    # ------------------------------------------------------------------------- train
    def train(self) -> dict:
        """Train until `total_env_steps` (or a stop signal); return the final evaluation stats.

        Rank 0 holds the run directory's lock (:func:`amago_fast.checkpoint.lock_run_dir`) from
        before anything is built until training returns: a second trainer on the same
        directory is refused (RunLockedError), and an unusable directory (read-only, under a
        regular file) is named (RunDirError) before any env or agent is built. A run refused
        before it wrote anything removes the lock file and the directories it created."""
        lock = ckpt.lock_run_dir(self.run_dir) if self.dist.is_main else None
        failed = True
        try:
            stats = self._train_locked()
            failed = False
            return stats
        finally:
            if lock is not None:
                # A run refused before it wrote anything (a bad config caught while its parts
                # are built) leaves no directory behind.
                lock.release(undo_if_unused=failed)

    def _train_locked(self) -> dict:
        cfg, dist = self.cfg, self.dist
        # --- components, run dir, config, resume ---------------------------------------
        if self.resume_requested and (self.run_dir / "config.json").is_file():
            check_resume_overrides(load_config(self.run_dir / "config.json"), cfg)
        if not self.resume_requested and ckpt.checkpoint_candidates(self.run_dir):
            raise FileExistsError(
                f"{self.run_dir} already holds a run; use --resume {self.run_dir} "
                "to continue it or pick another run_name"
            )
        self.build()
        resumed_from = None
        if self.resume_requested:
            # Before the config is saved: a resume that fails (a checkpoint that does not fit
            # the overridden config) leaves the run's config.json as it was.
            resumed_from = self.load_checkpoint()
        if dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.run_dir / "config.json")
            # The agent's observation/action spec: load_agent rebuilds the agent from it (an
            # env given as an object has no name a config could rebuild it from).
            from amago_fast.spec_io import SPEC_FILE, save_spec

            save_spec(self.spec, self.run_dir / SPEC_FILE)
        dist.barrier()
        world = dist.world_size
        total_per_rank = self.total_per_rank
        self.logger = RunLogger(
            self.run_dir,
            tensorboard=cfg.tensorboard,
            wandb=cfg.wandb,
            wandb_project=cfg.wandb_project,
            config=config_to_dict(cfg),
            # rows logged after the checkpoint we continue from (or, for a fresh start in a
            # directory whose earlier attempt died before its first checkpoint, all rows) go
            resume_env_steps=self.env_steps * world if resumed_from else 0,
            enabled=dist.is_main,
        )
        # --- signals: checkpoint and stop at the next iteration boundary ----------------
        old_handlers = self._install_signal_handlers()
        progress = None
        if cfg.progress_bar and dist.is_main:
            from tqdm import tqdm

            progress = tqdm(
                total=cfg.total_env_steps,
                initial=self.env_steps * world,
                unit="step",
                dynamic_ncols=True,
            )
        if dist.is_main:  # before the first step: where to look (tail eval.csv, plot, resume)
            note(f"run directory {self.run_dir}", progress)
        from amago_fast.collector.background import BackgroundCollector, steps_collected

        meters = LoopMeters(self.train_seconds)
        thread = (BackgroundCollector(self) if cfg.overlap_collection and cfg.data.online
                  else None)
        interrupted = False
        try:
            # --- 0. offline updates on the dataset first (amago_fast.offline) ---------------
            if self.dataset is not None and self.offline_updates < cfg.data.offline_updates:
                from amago_fast.offline import run_offline_phase

                interrupted = run_offline_phase(self)
            if thread is not None and not interrupted:
                thread.start()
            min_steps = self.env_steps
            while min_steps < total_per_rank and cfg.data.online and not interrupted:
                # --- 1. collect --------------------------------------------------------
                if thread is None:
                    stats = self.collector.collect(cfg.collect_steps_per_iter,
                                                   sample=cfg.collect_sample)
                    new_steps = steps_collected(stats, cfg)
                    self.env_steps += new_steps
                else:
                    stats, new_steps = thread.wait_for_data(self)
                meters.add_collection(stats, new_steps, self.env)
                # Ranks agree (one all-reduce) on the slowest rank's env steps, the updates all
                # of them owe and whether any got a stop signal, so every rank makes the same
                # number of DDP updates and the same checkpoint/stop decisions.
                min_steps, owed, stop = self._sync_counters()
                # --- 2. learn: as many updates as the ratio says are owed ----------------
                meters.add_updates(self.learn_owed(meters.pending, thread, owed))
                if thread is not None:
                    thread.notify_learner_progress()
                # --- 3. progress, logs, eval, checkpoint --------------------------------
                self._report(meters, min_steps, progress, thread)
                if stop:
                    interrupted = True
                    break
            # --- end: final checkpoint and evaluation -----------------------------------
            if thread is not None:
                thread.stop()
                if not interrupted:  # what the thread collected last is still owed updates
                    self.learn_owed(meters.pending, None, self._sync_counters()[1])
            self.save_checkpoint(None)
            if not interrupted and self.last_eval_step != self.env_steps:
                self.evaluate_and_log(None)
        finally:
            if thread is not None:
                thread.stop()
            self._restore_signal_handlers(old_handlers)
            if progress is not None:
                progress.close()
            self.logger.close()
            self.env.close()
            for collector in self.eval_collectors.values():
                collector.env.close()
        result = {
            "env_steps": self.env_steps * world,
            "updates": self.updates,
            "skipped_updates": self.skipped_updates,
            "train_seconds": self.train_seconds,
            # greedy evaluation episodes' env steps, counted apart from the training env_steps
            "eval_env_steps": self.eval_env_steps,
            "interrupted": interrupted,
            "run_dir": str(self.run_dir),
            "eval": dict(self.last_eval),
        }
        return result

    def _report(self, m: LoopMeters, min_steps: int, progress: Any,
                thread: BackgroundCollector | None) -> None:
        """Step 3 of the loop: the progress bar, a train.csv row, an evaluation and a checkpoint,
        each when its interval is crossed (by the slowest rank's env steps)."""
        cfg, world = self.cfg, self.dist.world_size
        now = time.perf_counter()
        self.train_seconds = m.t_offset + (now - m.t_start)
        global_steps = min_steps * world
        if progress is not None:
            progress.update(global_steps - progress.n)
            if now - m.bar_t0 >= PROGRESS_REFRESH_S:
                dt = now - m.bar_t0
                progress.set_postfix_str(self._progress_text(
                    m.bar_steps * world / dt, m.bar_updates / dt, m.recent_returns))
                m.bar_t0, m.bar_steps, m.bar_updates = now, 0, 0
        if global_steps >= self.next_log:
            dt = max(now - m.window_t0, 1e-9)
            sps = m.window_steps * world / dt
            ups = m.window_updates / dt
            row = {k: mean_or_nan(v) for k, v in m.pending.items()}
            row |= {
                "env_steps_per_s": sps,
                "updates_per_s": ups,
                "updates": self.updates,
                "skipped_updates": self.skipped_updates,
                "buffer_rows": len(self.buffer),
                "buffer_fill": len(self.buffer) / cfg.buffer.capacity_steps,
                "recent_return": mean_or_nan(m.recent_returns),
                "recent_success": mean_or_nan(m.recent_success),
            }
            self.logger.log("train", row, global_steps, self.train_seconds)
            m.pending.clear()
            m.window_t0, m.window_steps, m.window_updates = now, 0, 0
            while self.next_log <= global_steps:
                self.next_log += cfg.log_interval or cfg.total_env_steps
        if cfg.eval_interval and global_steps >= self.next_eval:
            while self.next_eval <= global_steps:
                self.next_eval += cfg.eval_interval
            self.evaluate_and_log(thread)
        if cfg.checkpoint_interval and global_steps >= self.next_checkpoint:
            while self.next_checkpoint <= global_steps:
                self.next_checkpoint += cfg.checkpoint_interval
            self.save_checkpoint(thread)

    def _progress_text(self, sps: float, ups: float, recent_returns) -> str:
        """The bar's postfix: env steps/s and updates/s over the last refresh period, the mean
        return of the last 100 training episodes, and the last evaluation's mean with its 95%
        interval (success when the env reports it, else return)."""
        text = f"sps={sps:.0f} ups={ups:.1f} ret={mean_or_nan(recent_returns):.3g}"
        ev = self.last_eval
        shown = format_interval(ev, "success") or format_interval(ev, "return")
        if shown:
            metric = "success" if "success" in ev else "return"
            text += f" eval {metric}={shown}"
        return text

    def _sync_counters(self) -> tuple[int, int, bool]:
        """(min env steps over ranks, updates owed by every rank, stop requested on any rank)."""
        owed = self.updates_owed() if len(self.buffer) > 0 else 0
        stop = 1 if self._stop_signal is not None else 0
        min_steps, owed, neg_stop = self.dist.all_min([self.env_steps, owed, -stop])
        return min_steps, owed, neg_stop < 0

    def learn_owed(
        self, pending: dict[str, list[float]], thread: BackgroundCollector | None, owed: int
    ) -> int:
        """Run `owed` gradient updates (what the collection ratio says is owed); return how many.

        Metrics are appended to `pending`. Updates skipped by the learner for non-finite values
        are counted; past `max_skipped_updates` training stops with TrainingError.
        """
        cfg = self.cfg
        done = 0
        while owed > 0:
            if self.dataset is None:
                batch = self.buffer.sample_windows(cfg.batch_size, cfg.window_len,
                                                   relabel=self.relabel)
            else:  # offline→online: data.share of the windows from the dataset
                from amago_fast.offline import sample_mixed

                batch = sample_mixed(self.buffer, self.dataset, cfg.batch_size, cfg.window_len,
                                     cfg.data.share, self.relabel)
            # NumPy windows as sampled: Learner.update moves them to the device (one conversion).
            if thread is not None:  # the collector thread copies weights between updates only
                with thread.weights_lock:
                    metrics = self.learner.update(batch)
            else:
                metrics = self.learner.update(batch)
            self.updates += 1
            done += 1
            owed -= 1
            if metrics.get("skipped_nonfinite"):  # a count (learner stats_every > 1)
                self.skipped_updates += int(metrics["skipped_nonfinite"])
                if self.skipped_updates > cfg.max_skipped_updates:
                    shown = {k: v for k, v in metrics.items() if isinstance(v, float)}
                    raise TrainingError(
                        f"{self.skipped_updates} updates were skipped because the loss or "
                        f"gradients were NaN/inf (max_skipped_updates={cfg.max_skipped_updates}); "
                        f"last metrics: {shown}"
                    )
            for k, v in metrics.items():
                pending.setdefault(k, []).append(float(v))
        return done

    def updates_owed(self) -> int:
        """Gradient updates the collection ratio says are owed now (0 before learning_starts)."""
        cfg = self.cfg
        if self.env_steps < cfg.learning_starts:
            return 0
        target = int((self.env_steps - cfg.learning_starts) * cfg.updates_per_env_step)
        # the ratio counts online updates: the offline phase's come on top
        return max(0, target - (self.updates - self.offline_updates))

    # ------------------------------------------------------------------------- eval
    def evaluate(self) -> dict[str, float]:
        """Episodes without exploration noise (greedy, or sampled with ``eval_sample``) on the
        eval envs; returns their statistics."""
        if self.cfg.eval_episodes == 0:
            return {}
        out: dict[str, float] = {}
        for label, collector in self.eval_collectors.items():
            stats = collector.evaluate(self.cfg.eval_episodes, sample=self.cfg.eval_sample,
                                       **self._eval_limits(collector))
            self.eval_env_steps += int(stats.get("env_steps", 0))
            flat = evaluation_row(collector.env, stats) | {"sampled": float(self.cfg.eval_sample)}
            out |= {(f"{label}/{k}" if label else k): v for k, v in flat.items()}
        return out

    def _eval_limits(self, collector: Any) -> dict[str, Any]:
        """Collector.evaluate's step cap (``eval_max_steps`` per env slot; 0: the collector's
        default from the env's time limit) and stop check: a SIGTERM/SIGINT ends an evaluation
        within one vector step, so the trainer checkpoints and exits within seconds."""
        per_slot = self.cfg.eval_max_steps
        return {"max_steps": per_slot * collector.env.num_envs if per_slot else None,
                "should_stop": lambda: self._stop_signal is not None}

    def evaluate_and_log(self, thread: BackgroundCollector | None) -> dict[str, float]:
        """Run `evaluate` (pausing the collector thread if any) and log the result."""
        if thread is not None:
            with thread.weights_lock:
                stats = self.evaluate()
        else:
            stats = self.evaluate()
        self.last_eval = stats
        self.last_eval_step = self.env_steps
        self.logger.log("eval", stats, self.env_steps * self.dist.world_size, self.train_seconds)
        return stats

    # -------------------------------------------------------------------- checkpoints
    def _rank_state(self) -> dict:
        state = {
            "rng": rng_state(),
            "counters": {
                "env_steps": self.env_steps,
                "updates": self.updates,
                "skipped_updates": self.skipped_updates,
                "train_seconds": self.train_seconds,
                "next_log": self.next_log,
                "next_eval": self.next_eval,
                "next_checkpoint": self.next_checkpoint,
                "offline_updates": self.offline_updates,
                "eval_env_steps": self.eval_env_steps,
            },
            "last_eval": self.last_eval,
            "last_eval_step": self.last_eval_step,
            # Every rank records a digest of its model: equal digests across ranks show DDP kept
            # them identical (tests compare them; resume checks them).
            "model_fingerprint": ckpt.model_fingerprint(self.learner.loss_module),
        }
        # The collector's state holds the open rollouts, the policy's rollout memory, the
        # exploration state and (built-in envs) the env state. The eval env is rebuilt fresh.
        state["collector"] = self.collector.state_dict()
        if hasattr(self.eval_env, "state_dict"):
            state["eval_env"] = self.eval_env.state_dict()
        # The other named evaluation sets (env.eval_sets), so a resumed run draws the same
        # evaluation episodes as an uninterrupted one.
        others = {label: c.env.state_dict() for label, c in list(self.eval_collectors.items())[1:]
                  if hasattr(c.env, "state_dict")}
        if others:
            state["eval_sets"] = others
        return state

    def save_checkpoint(self, thread: BackgroundCollector | None) -> Path | None:
        """Write a full checkpoint (every rank its own part; rank 0 commits)."""
        if thread is not None:
            thread.pause()
        tmp: Path | None = None
        try:
            dist = self.dist
            # Named by the slowest rank's steps so every rank writes into the same directory.
            step = dist.all_min([self.env_steps])[0] * dist.world_size
            tmp = ckpt.begin_checkpoint(self.run_dir, step) if dist.is_main else None
            dist.barrier()
            if tmp is None:
                tmp = ckpt.begin_checkpoint(self.run_dir, step, clean=False)
            rank_dir = tmp / f"rank{dist.rank}"
            rank_dir.mkdir(parents=True, exist_ok=True)
            ckpt.save_object(self._rank_state(), rank_dir / "state.pt")
            self.buffer.save(rank_dir / "buffer")
            if dist.is_main:
                ckpt.save_object(
                    {"learner": self.learner.state_dict(), "world_size": dist.world_size},
                    tmp / "learner.pt",
                )
            dist.barrier()
            final = ckpt.commit_checkpoint(self.run_dir, tmp, step) if dist.is_main else None
            dist.barrier()
            return final
        except OSError:
            # A full disk (ENOSPC) or a vanished directory: the previous checkpoint is untouched
            # (the write went to a temp dir); free what the failed write took.
            if self.dist.is_main and tmp is not None and tmp.name.startswith(".tmp-"):
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            if thread is not None:
                thread.resume()

    def load_checkpoint(self) -> Path | None:
        """Restore everything from the run's newest intact checkpoint (None if it has none)."""
        from amago_fast.collector import Collector

        chosen = choose_checkpoint(self.run_dir, self.dist)
        if chosen is None:
            return None
        path, shared, state, buffer = chosen
        if shared.get("world_size") != self.dist.world_size:
            raise ckpt.CheckpointError(
                f"{path} was written by {shared.get('world_size')} ranks; this job has "
                f"{self.dist.world_size} (resume with the same --nproc_per_node)"
            )
        # The buffer first: a run whose env now stores other observation fields (another
        # env, other env kwargs, or the gymnasium adapter's one-hot Discrete observations read
        # by a run that stored indices) is named here instead of as a weight-shape mismatch.
        mismatch = fields_mismatch(buffer.fields, self.env)
        if mismatch:
            raise ckpt.CheckpointError(f"{path}: the run's buffer does not fit this env: "
                                       f"{mismatch}")
        try:
            self.learner.load_state_dict(shared["learner"])
        except (RuntimeError, KeyError, ValueError, TypeError) as e:
            first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), repr(e))
            raise ckpt.CheckpointError(
                f"{path}: its model does not fit this config's agent ({first[:300]}); resume "
                "with the run's own agent.* settings") from e
        if self.policy is not self.agent:
            self.policy.load_state_dict(self.agent.state_dict())
        self.buffer = buffer
        self.collector = Collector(self.env, self.policy, self.buffer, self.exploration,
                                   nan_policy=self.cfg.env.nan_policy)
        self.collector.load_state_dict(state["collector"])
        eval_state = state.get("eval_env")
        if eval_state is not None and eval_state.get("num_envs") == self.eval_env.num_envs:
            # (another env.eval_num_envs: the evaluation env starts afresh from its seed)
            self.eval_env.load_state_dict(eval_state)
        for label, env_state in state.get("eval_sets", {}).items():
            if label in self.eval_collectors:
                self.eval_collectors[label].env.load_state_dict(env_state)
        c = state["counters"]
        self.env_steps = c["env_steps"]
        self.updates = c["updates"]
        self.skipped_updates = c["skipped_updates"]
        self.train_seconds = c["train_seconds"]
        self.next_log, self.next_eval = c["next_log"], c["next_eval"]
        self.next_checkpoint = c["next_checkpoint"]
        self.offline_updates = c.get("offline_updates", 0)
        self.eval_env_steps = int(c.get("eval_env_steps", 0))  # absent in older checkpoints
        self.last_eval = state["last_eval"]
        self.last_eval_step = state.get("last_eval_step", -1)
        set_rng_state(state["rng"])
        return path

    # ------------------------------------------------------------------------- signals
    @property
    def stop_requested(self) -> bool:
        """A SIGINT/SIGTERM arrived: the loop checkpoints and stops at its next boundary."""
        return self._stop_signal is not None

    def _install_signal_handlers(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}
        old = {}

        def handler(signum, frame):
            if self._stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # second Ctrl-C: stop now, no checkpoint
            self._stop_signal = signum

        for sig in (signal.SIGINT, signal.SIGTERM):
            old[sig] = signal.signal(sig, handler)
        return old

    @staticmethod
    def _restore_signal_handlers(old: dict) -> None:
        for sig, h in old.items():
            signal.signal(sig, h)
