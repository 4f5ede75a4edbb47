"""Collection on a background thread while the main thread learns (``overlap_collection``).

The trainer's loop hands this thread its collector and a policy copy; the buffer's thread
contract (one appender, concurrent samplers) makes collecting and sampling at once safe, and a
condition variable keeps the update / env-step ratio: the thread waits while it is ahead of
what the learner has consumed, and the loop waits while nothing new was collected and no update
is owed.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol

import numpy as np
import torch

from amago_fast.distributed import make_current

__all__ = ["BackgroundCollector", "TrainingLoop", "steps_collected"]


class TrainingLoop(Protocol):
    """What the background collector reads and advances of the training loop (the Trainer)."""

    cfg: Any  # TrainConfig: the collection and ratio settings
    env_steps: int  # this rank's collected env steps; the thread adds what it collects
    total_per_rank: int
    device: torch.device
    collector: Any  # Collector: stepped by the thread only
    policy: Any  # the thread's policy copy (the agent itself when nothing overlaps)
    agent: Any  # the learner's agent, whose weights the copy takes after each chunk

    def updates_owed(self) -> int: ...


def steps_collected(stats: dict, cfg: Any) -> int:
    """Transitions a `collect` call added (its own count when it reports one)."""
    return int(stats.get("env_steps", cfg.collect_steps_per_iter * cfg.env.num_envs))


class BackgroundCollector:
    """Collects in the background while the main thread learns, keeping the update ratio.

    The thread runs `collector.collect` in chunks. After each chunk it copies the learner's
    latest weights into its policy copy (under `weights_lock`, which the learner holds during an
    update). It stops collecting when it is more than `slack` env steps ahead of what the
    learner has consumed (so the ratio holds however fast either side is).
    """

    def __init__(self, loop: TrainingLoop) -> None:
        self.t = loop
        self.weights_lock = threading.Lock()
        self.cv = threading.Condition()
        self.stats: list[dict] = []
        self.new_steps = 0
        self.stopping = False
        self.paused = False
        self.busy = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="amago-collector", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _ahead(self) -> bool:
        t, cfg = self.t, self.t.cfg
        if cfg.updates_per_env_step <= 0 or t.env_steps < cfg.learning_starts:
            return False
        slack = 2 * cfg.collect_steps_per_iter * cfg.env.num_envs
        return t.updates_owed() * 1.0 > slack * cfg.updates_per_env_step + 1

    def _run(self) -> None:
        t, cfg = self.t, self.t.cfg
        try:
            make_current(t.device)  # per thread: the policy's decode kernels
            while True:
                with self.cv:
                    while not self.stopping and (self.paused or self._ahead()):
                        self.cv.wait(0.05)
                    if self.stopping or t.env_steps >= t.total_per_rank:
                        return
                    self.busy = True
                stats = t.collector.collect(cfg.collect_steps_per_iter, sample=cfg.collect_sample)
                n = steps_collected(stats, cfg)
                with self.weights_lock:
                    t.policy.load_state_dict(t.agent.state_dict())
                with self.cv:
                    self.busy = False
                    t.env_steps += n
                    self.new_steps += n
                    self.stats.append(stats)
                    self.cv.notify_all()
        except BaseException as e:  # surfaced in the main thread
            with self.cv:
                self.error = e
                self.busy = False
                self.cv.notify_all()

    def wait_for_data(self, trainer: TrainingLoop) -> tuple[dict, int]:
        """Block until the thread has collected something (or learning is owed); merge stats."""
        with self.cv:
            while (
                self.error is None
                and self.new_steps == 0
                and trainer.updates_owed() == 0
                and trainer.env_steps < trainer.total_per_rank
            ):
                self.cv.wait(0.05)
            if self.error is not None:
                raise RuntimeError("the collector thread failed") from self.error
            stats_list, self.stats = self.stats, []
            n, self.new_steps = self.new_steps, 0
        returns: list[float] = []
        successes: list[float] = []
        for s in stats_list:
            returns.extend(s.get("returns", []))
            if "success" in s:
                successes.extend([s["success"]] * int(s.get("episodes", 0)))
        merged: dict[str, Any] = {"returns": returns, "episodes": len(returns)}
        if successes:
            merged["success"] = float(np.mean(successes))
            merged["episodes"] = len(successes)
        return merged, n

    def notify_learner_progress(self) -> None:
        with self.cv:
            self.cv.notify_all()

    def pause(self) -> None:
        """Stop collecting after the current chunk and wait for it to finish."""
        with self.cv:
            self.paused = True
            while self.busy:
                self.cv.wait(0.05)

    def resume(self) -> None:
        with self.cv:
            self.paused = False
            self.cv.notify_all()

    def stop(self) -> None:
        with self.cv:
            self.stopping = True
            self.cv.notify_all()
        if self.thread.is_alive() and threading.current_thread() is not self.thread:
            self.thread.join()
