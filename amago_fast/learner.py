"""The AMAGO learning update: one gradient step on every timestep of every window in parallel.

:class:`Learner` owns the loss module (:class:`amago_fast.loss.AMAGOLoss`, which documents the
loss itself), the fused AdamW step, the learning-rate warm-up, PopArt's update from the
(all-reduced) TD-target moments, the non-finite skip, metrics and checkpoint state.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from amago_fast.agent import Agent
from amago_fast.cpu_malloc import tune_cpu_malloc
from amago_fast.graph_update import StaticBatch, ema_where_
from amago_fast.learner_config import LearnerConfig
from amago_fast.loss import NUM_LOSS_SCALARS, AMAGOLoss
from amago_fast.seeding import restore_cuda_rng_states

# LearnerConfig and AMAGOLoss are imported from here by users and tests (their own modules:
# learner_config.py, loss.py); tune_cpu_malloc by the fast-path tests.
__all__ = ["Learner", "LearnerConfig", "AMAGOLoss", "tune_cpu_malloc"]


class Learner:
    """Owns the loss module, optimizer, LR schedule, PopArt and the update counter.

    An update never reads a tensor on the host between the batch's arrival and the metrics
    read (``stats_every``): the non-finite skip, PopArt, the learning-rate warm-up, the REDQ
    subset draw and the batch value checks are device tensors, so on a GPU the host queues the
    whole update without waiting and the update can be captured as one CUDA graph
    (``cuda_graph``). tests/training/test_learner_sync.py counts the ops that would wait.

    Args:
        agent: the online :class:`Agent` (moved to ``config.device``).
        config: :class:`LearnerConfig`.
        wrap_module: optional callable applied to the loss module before use, e.g.
            ``lambda m: DistributedDataParallel(m)``; ``learner.loss_module`` stays the bare one.
    """

    def __init__(
        self,
        agent: Agent,
        config: LearnerConfig | None = None,
        wrap_module: Callable[[nn.Module], nn.Module] | None = None,
    ) -> None:
        config = config or LearnerConfig()
        config.validate()
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if config.cuda_graph and (wrap_module is not None or distributed):
            raise ValueError("LearnerConfig.cuda_graph: not with torch.distributed or a wrapped "
                             "loss module (their collectives are not captured); set "
                             "cuda_graph=False")
        self.config = config
        self.device = torch.device(config.device)
        if self.device.type == "cpu":
            tune_cpu_malloc()
        self.agent = agent.to(self.device)
        self.loss_module = AMAGOLoss(self.agent, config).to(self.device)
        self.model: nn.Module = wrap_module(self.loss_module) if wrap_module else self.loss_module
        if config.compile:
            if self.device.type == "cpu":
                warnings.warn("LearnerConfig.compile: torch.compile is not used on CPU "
                              "(it crashes with this torch build); running eagerly.",
                              stacklevel=2)
            else:
                self.model = torch.compile(self.model)
        self.online_params = [p for p in self.agent.parameters() if p.requires_grad]
        head = self.loss_module.dynamics_head
        self.trainable = self.online_params + [
            p for p in self.loss_module.popart.parameters() if p.requires_grad] + (
            [p for p in head.parameters() if p.requires_grad] if head is not None else [])
        # Applied (not skipped) updates, on the device: the warm-up and PopArt read it there.
        self._applied = torch.zeros((), dtype=torch.float64, device=self.device)
        # The learning rate as a device tensor AdamW reads (warm-up computed on the device).
        self._lr = torch.zeros((), dtype=torch.float32, device=self.device)
        self._set_lr()
        # Fused AdamW: one kernel for all parameters (0.68 vs 2.45 ms foreach on the small bench
        # model, 1 CPU thread) and the only torch AdamW that takes a device "skip this step"
        # flag (found_inf: moments, step count and decay all untouched).
        try:
            self.optimizer = torch.optim.AdamW(self.trainable, lr=self._lr,
                                               betas=self._betas(),
                                               weight_decay=config.weight_decay, fused=True)
        except RuntimeError as e:
            raise ValueError(f"LearnerConfig.device={config.device!r}: the learner needs "
                             f"AdamW's fused kernel, which is not available there ({e})") from None
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(config.seed)
        self._steps = 0  # update calls (the attention-entropy schedule)
        self._calls_since_reset = 0  # update calls since AdamW's moments were last zeroed
        # Multi-discrete action sizes on the device, for the batch check (made once: a
        # host-to-device copy per update would be a sync of its own).
        action = agent.spec.action
        self._nvec = (torch.tensor(action.nvec, device=self.device)
                      if action.kind == "multidiscrete" else None)
        self._check_messages = self._value_check_messages()
        # Target-network EMA ``ema_fn(targets, onlines, tau, apply)`` (apply: 0-dim bool
        # tensor): a foreach lerp (swappable for a per-parameter baseline).
        self.ema_fn: Callable = ema_where_
        # Seconds spent in each phase of the last update (forward, backward, optimizer): wall
        # time on CPU; on CUDA the GPU time between CUDA events, read with the metrics. Empty
        # for captured (CUDA-graph) updates.
        self.last_timings: dict[str, float] = {}
        self._marks: tuple = ()
        self._ema_pairs = (
            list(self.loss_module.target_actor.parameters())
            + list(self.loss_module.target_critics.parameters()),
            list(self.agent.actor.parameters()) + list(self.agent.critics.parameters()),
        )
        # Metrics accumulated on the device between reads (see read_stats).
        G = self.agent.num_gammas
        f64 = dict(dtype=torch.float64, device=self.device)
        self._acc = torch.zeros(NUM_LOSS_SCALARS + 3 * G, **f64)
        self._acc_counts = torch.zeros(2, **f64)  # applied, skipped (non-finite)
        self._last_skipped = torch.zeros(2, **f64)  # loss, grad_norm of the last skipped update
        self._bad = torch.zeros(len(self._check_messages), dtype=torch.bool, device=self.device)
        self._pending = 0  # updates since the last read
        self._entropies: list[torch.Tensor] = []
        # CUDA graph state (LearnerConfig.cuda_graph).
        self._graph: Any = None
        self._static: StaticBatch | None = None

    # ------------------------------------------------------------------------- counters
    @property
    def updates(self) -> int:
        """Updates applied so far (skipped ones excluded). Reads a device scalar: a host sync
        when called, never inside :meth:`update`."""
        return int(self._applied.item())

    @updates.setter
    def updates(self, value: int) -> None:
        self._applied.fill_(float(value))
        self._set_lr()

    def _set_lr(self) -> None:
        """lr = config.lr · min(1, (applied + 1) / warmup_steps), computed on the device."""
        warm = self.config.warmup_steps
        if warm:
            self._lr.copy_(self.config.lr * ((self._applied + 1.0) / warm).clamp(max=1.0))
        else:
            self._lr.fill_(self.config.lr)

    def _clock(self) -> float | torch.cuda.Event | None:
        """A phase mark: perf_counter on CPU; on CUDA an event recorded on the current stream
        (read with the metrics, so marking never stalls the host); None inside a capture."""
        if self.device.type == "cuda":
            if torch.cuda.is_current_stream_capturing():
                return None
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    @staticmethod
    def _seconds(start: float | torch.cuda.Event, end: float | torch.cuda.Event) -> float:
        if isinstance(start, float):
            return end - start
        end.synchronize()
        return start.elapsed_time(end) / 1e3

    # ------------------------------------------------------------------------------ batches
    def _to_tensors(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        out = {}
        for k, v in batch.items():
            if isinstance(v, np.ndarray) or isinstance(v, torch.Tensor):
                out[k] = torch.as_tensor(v).to(self.device, non_blocking=True)
        return out

    def _check_batch(self, batch: dict[str, torch.Tensor]) -> None:
        """Keys, shapes and dtypes (host metadata: no sync); raises before anything changes."""
        spec = self.agent.spec
        need = [f.name for f in spec.buffer_fields()] + ["mask", "time_index"]
        missing = [k for k in need if k not in batch]
        if missing:
            raise ValueError(f"Learner.update: batch is missing keys {missing}")
        mask = batch["mask"]
        if mask.dim() != 2 or mask.dtype != torch.bool or mask.shape[1] < 2:
            raise ValueError(f"Learner.update: mask must be bool (B, L+1) with L >= 1, got "
                             f"{tuple(mask.shape)} {mask.dtype}")
        B, L1 = mask.shape
        for f in spec.buffer_fields():
            t = batch[f.name]
            if tuple(t.shape) != (B, L1, *f.shape):
                raise ValueError(f"Learner.update: batch[{f.name!r}] has shape {tuple(t.shape)}, "
                                 f"expected {(B, L1, *f.shape)}")
        ti = batch["time_index"]
        if tuple(ti.shape) != (B, L1) or ti.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"Learner.update: time_index must be int (B, L+1), got "
                             f"{tuple(ti.shape)} {ti.dtype}")

    def _value_check_messages(self) -> list[str]:
        """The value checks' messages, in :meth:`_value_flags` order (fixed by the spec)."""
        spec = self.agent.spec
        out = ["Learner.update: non-finite reward (padded rows included)"]
        out += [f"Learner.update: non-finite values in observation {f.name!r}"
                for f in spec.observation if np.issubdtype(f.dtype, np.floating)]
        act = spec.action
        if act.kind == "discrete":
            out.append(f"Learner.update: discrete actions outside [0, {act.n})")
        elif act.kind == "multidiscrete":
            out.append(f"Learner.update: multi-discrete actions outside nvec {act.nvec}")
        elif act.kind == "continuous":
            out.append("Learner.update: non-finite continuous actions")
        return out

    def _value_flags(self, batch: dict[str, torch.Tensor]):
        """Value checks as device flags (one per message), and the batch with its index
        actions clamped into range so a bad one cannot index out of bounds on the device (the
        update it belongs to is then skipped and the read raises). Padded rows are checked too:
        the update reads them (NaN there times a zero weight is still NaN)."""
        spec = self.agent.spec
        flags = [(~torch.isfinite(batch["reward"])).any()]
        flags += [(~torch.isfinite(batch[f.name])).any()
                  for f in spec.observation if np.issubdtype(f.dtype, np.floating)]
        a = batch["action"]
        act = spec.action
        if act.kind == "discrete":
            flags.append(((a < 0) | (a >= act.n)).any())
            batch = {**batch, "action": a.clamp(0, act.n - 1)}
        elif act.kind == "multidiscrete":
            flags.append(((a < 0) | (a >= self._nvec)).any())
            batch = {**batch, "action": torch.minimum(a.clamp_min(0), self._nvec - 1).to(a.dtype)}
        elif act.kind == "continuous":
            flags.append((~torch.isfinite(a)).any())
        return torch.stack(flags), batch

    # ------------------------------------------------------------------------------- update
    def update(self, batch: dict[str, Any]) -> dict[str, float]:
        """One gradient step on ``batch`` (a ``sample_windows`` dict, NumPy or torch).

        Returns float metrics every ``stats_every``-th call (:meth:`read_stats`; every call by
        default) and {} in between. ``skipped_nonfinite`` counts updates whose loss, gradients
        or TD-target statistics were not finite (they changed nothing — weights, targets,
        PopArt, optimizer, normaliser). A batch with bad keys/shapes/dtypes raises ValueError
        at once; one with bad values (non-finite, actions out of range) changes nothing either
        and raises ValueError at the read covering it (with the default, this call).
        """
        cfg = self.config
        batch = self._to_tensors(batch)
        self._check_batch(batch)
        if not cfg.cuda_graph:
            self._step(batch)
        elif self._steps >= cfg.cuda_graph_warmup:
            self._graph_step(batch)
        else:  # warm-up on a side stream, as graph capture requires
            side, main = torch.cuda.Stream(self.device), torch.cuda.current_stream(self.device)
            side.wait_stream(main)
            with torch.cuda.stream(side):
                self._step(batch)
            main.wait_stream(side)
        self._steps += 1
        if cfg.optimizer_reset_interval:
            self._calls_since_reset += 1
            if self._calls_since_reset >= cfg.optimizer_reset_interval:
                self.reset_optimizer_moments()
        self._pending += 1
        if self._pending >= cfg.stats_every:
            return self.read_stats()
        return {}

    def _step(self, batch: dict[str, torch.Tensor]) -> None:
        """The update's device work, queued without any host read (eager or under capture)."""
        cfg = self.config
        capturing = self.device.type == "cuda" and torch.cuda.is_current_stream_capturing()
        if cfg.check_batch:
            bad, batch = self._value_flags(batch)
            batch_ok = ~bad.any()
        else:
            bad, batch_ok = None, None
        # Buffers the forward pass moves (σ-reparam power iteration, input statistics) are
        # restored if the step is skipped, so a skipped step changes nothing.
        buffers = list(self.agent.buffers()) + self.loss_module.model_buffers()
        buffers_before = [b.detach().clone() for b in buffers]
        self.agent.tstep_encoder.update_normalizer(batch, batch["mask"], check_finite=False)
        self.loss_module.update_model_normalizer(batch)
        traj = self.agent.traj_encoder
        want_entropy = (cfg.attention_entropy_every > 0
                        and self._steps % cfg.attention_entropy_every == 0
                        and hasattr(traj, "set_record_entropy"))
        if want_entropy:
            traj.set_record_entropy(True)
        self.model.train()
        t0 = self._clock()
        try:
            # A captured graph cannot keep autocast's cast cache across replays.
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.bf16,
                                cache_enabled=not capturing):
                loss, aux = self.model(batch, self.generator)
        finally:
            if want_entropy:
                self._entropies = [e.detach() for e in traj.recorded_entropy()]
                traj.set_record_entropy(False)
        t1 = self._clock()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, cfg.grad_clip)
        target_mean, target_sq_mean = aux["target_mean"], aux["target_sq_mean"]
        ok = (torch.isfinite(loss.detach()) & torch.isfinite(grad_norm)
              & torch.isfinite(target_mean).all() & torch.isfinite(target_sq_mean).all())
        if batch_ok is not None:
            ok = ok & batch_ok
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # PopArt must move identically on every rank: all-reduce the batch moments
            # (weighted by each rank's valid-transition count, so the result is the moment of
            # the global batch) and the "skip this step" flag in one collective.
            count = aux["target_count"].float().expand_as(target_mean)
            packed = torch.cat([target_mean.float() * count, target_sq_mean.float() * count,
                                count, (~ok).float().reshape(1)])
            torch.distributed.all_reduce(packed)
            G = target_mean.numel()
            total = packed[2 * G:3 * G].clamp_min(1.0)
            target_mean, target_sq_mean = packed[:G] / total, packed[G:2 * G] / total
            ok = packed[-1] == 0
        t2 = self._clock()
        with torch.no_grad():
            # Fused AdamW skips the whole step (moments, step count, decay) where found_inf = 1.
            self.optimizer.found_inf = (~ok).to(torch.float32)
            self.optimizer.step()
            for b, saved in zip(buffers, buffers_before):
                torch.where(ok, b, saved, out=b)
            self.ema_fn(*self._ema_pairs, cfg.tau, ok)
            self.loss_module.popart.update_where(target_mean, target_sq_mean, ok)
            self._applied.add_(ok.to(self._applied.dtype))
            self._set_lr()
            self._accumulate(loss.detach(), grad_norm, aux, ok, batch_ok, bad)
        t3 = self._clock()
        self._marks = (t0, t1, t2, t3) if t0 is not None else ()

    def _accumulate(self, loss: torch.Tensor, grad_norm: torch.Tensor,
                    aux: dict[str, torch.Tensor], ok: torch.Tensor,
                    batch_ok: torch.Tensor | None, bad: torch.Tensor | None) -> None:
        """Add this update's metrics to the device accumulators (applied updates only), count
        it as applied or skipped (a skip caused by bad batch values is not "non-finite"), and
        keep the value-check flags for the read."""
        vec = torch.cat([
            torch.stack([loss.float(), aux["critic_loss"].float(), aux["actor_loss"].float(),
                         aux["accept_rate"].float(), grad_norm.float(),
                         aux["actor_entropy"].float(), aux["valid_transitions"].float()]),
            aux["q_stats"].float(), aux["model_loss"].float().reshape(1),
            aux["critic_loss_per_gamma"].float(),
            aux["dpg_per_gamma"].float(), aux["bc_per_gamma"].float(),
        ]).to(torch.float64)
        self._acc.add_(torch.where(ok, vec, 0.0))
        skipped = ~ok if batch_ok is None else ~ok & batch_ok
        self._acc_counts.add_(torch.stack([ok, skipped]).to(torch.float64))
        last = torch.stack([loss.to(torch.float64), grad_norm.to(torch.float64)])
        self._last_skipped.copy_(torch.where(skipped, last, self._last_skipped))
        if bad is not None:
            self._bad.logical_or_(bad)

    def read_stats(self) -> dict[str, float]:
        """Metrics of the updates since the last read, in one host read (a device sync).

        Means over the applied updates of the loss terms, grad norm, Q statistics and per-gamma
        terms; ``skipped_nonfinite`` the number skipped (with only skipped updates: ``loss`` and
        ``grad_norm`` of the last one); PopArt μ/σ, ``lr`` and ``updates`` as they are now.
        Raises ValueError if a batch since the last read failed the value checks (that update
        changed nothing). {} when no update ran since the last read.
        """
        pop = self.loss_module.popart
        parts = [self._acc, self._acc_counts, self._last_skipped, self._bad.to(torch.float64),
                 self._applied.reshape(1).to(torch.float64), self._lr.reshape(1).double()]
        if pop.enabled:
            parts += [pop.mu.double(), pop.sigma.double()]
        parts += [e.reshape(1).double() for e in self._entropies]
        values = torch.cat(parts).tolist()
        pending, entropies, marks = self._pending, self._entropies, self._marks
        self._pending, self._entropies = 0, []
        self._acc.zero_()
        self._acc_counts.zero_()
        self._bad.zero_()
        if marks:
            t0, t1, t2, t3 = marks
            self.last_timings = {"forward": self._seconds(t0, t1),
                                 "backward": self._seconds(t1, t2),
                                 "optimizer": self._seconds(t2, t3)}
        else:
            self.last_timings = {}
        G = self.agent.num_gammas
        n_acc = NUM_LOSS_SCALARS + 3 * G
        acc, rest = values[:n_acc], values[n_acc:]
        applied, skipped, last_loss, last_gn = rest[:4]
        rest = rest[4:]
        bad, rest = rest[:len(self._check_messages)], rest[len(self._check_messages):]
        for flag, message in zip(bad, self._check_messages):
            if flag:
                raise ValueError(message)
        if pending == 0:
            return {}
        updates, lr = rest[:2]
        rest = rest[2:]
        metrics: dict[str, float] = {"skipped_nonfinite": skipped}
        if applied == 0:
            metrics["loss"], metrics["grad_norm"] = last_loss, last_gn
            return metrics
        m = [v / applied for v in acc]
        metrics.update({
            "loss": m[0], "critic_loss": m[1], "actor_loss": m[2], "bc_accept_rate": m[3],
            "grad_norm": m[4], "actor_entropy": m[5], "valid_transitions": m[6],
            "q_mean": m[7], "q_std": m[8], "q_min": m[9], "q_max": m[10],
            "lr": lr, "updates": updates,
        })
        if self.loss_module.dynamics_head is not None:
            metrics["model_loss"] = m[11]
        per_gamma = m[NUM_LOSS_SCALARS:]
        for g in range(G):
            metrics[f"critic_loss/g{g}"] = per_gamma[g]
            metrics[f"actor_dpg/g{g}"] = per_gamma[G + g]
            metrics[f"actor_bc/g{g}"] = per_gamma[2 * G + g]
        if pop.enabled:
            for g in range(G):
                metrics[f"popart/mu_g{g}"] = rest[g]
                metrics[f"popart/sigma_g{g}"] = rest[G + g]
            rest = rest[2 * G:]
        if entropies:
            for i, e in enumerate(rest):
                metrics[f"attention_entropy/layer{i}"] = e
        return metrics

    def reset_optimizer_moments(self) -> None:
        """Zero AdamW's first and second moments and step counts in place (a captured CUDA
        graph keeps reading the same tensors); the weights, the learning rate and its warm-up
        are unchanged. ``optimizer_reset_interval`` calls this on its schedule."""
        with torch.no_grad():
            for state in self.optimizer.state.values():
                for key in ("exp_avg", "exp_avg_sq", "step"):
                    if key in state:
                        state[key].zero_()
        self._calls_since_reset = 0

    def _betas(self) -> tuple[float, float]:
        """AdamW's (β1, β2): torch's β1, the config's β2."""
        return (0.9, self.config.adam_beta2)

    def _restore_optimizer_settings(self) -> None:
        """After ``optimizer.load_state_dict``: a loaded group brings its saved settings (a
        float lr, fused off in checkpoints of a foreach AdamW, a CPU step count, the saved β2);
        put back this learner's device lr tensor, β2 and fused kernel, and the step counts on
        the parameters' device as the fused kernel reads them."""
        for group in self.optimizer.param_groups:
            group.update(lr=self._lr, fused=True, foreach=None, capturable=False,
                         betas=self._betas())
        for p, state in self.optimizer.state.items():
            if "step" in state:
                state["step"] = torch.as_tensor(state["step"], dtype=torch.float32).to(p.device)

    # ---------------------------------------------------------------------------- CUDA graph
    def _graph_step(self, batch: dict[str, torch.Tensor]) -> None:
        """Replay the captured update on ``batch`` (capturing it on the first call)."""
        if self._graph is None:
            self._capture(batch)
        else:
            self._static.copy_in(batch)
        self._graph.replay()
        self._marks = ()
        # Replays change parameters without bumping their in-place versions, which is what
        # the agent's rollout plans are keyed on.
        self.agent.refresh_inference_cache()

    def _capture(self, batch: dict[str, torch.Tensor]) -> None:
        """Record one whole update (``_step`` on static batch tensors) as a CUDA graph. The
        recording runs nothing; the caller replays it once for this batch."""
        graph = torch.cuda.CUDAGraph()
        register = getattr(graph, "register_generator_state", None)
        if register is None:
            raise ValueError("LearnerConfig.cuda_graph: this torch cannot register the learner's "
                             "sampling generator with a CUDA graph (needs torch >= 2.6); set "
                             "cuda_graph=False")
        register(self.generator)
        self._static = StaticBatch(batch)
        for group in self.optimizer.param_groups:
            group["capturable"] = True
        torch.cuda.synchronize(self.device)
        try:
            with torch.cuda.graph(graph):
                self._step(self._static.tensors)
        except Exception as e:
            self._static = None
            raise RuntimeError(f"LearnerConfig.cuda_graph: capturing the update failed ({e}); "
                               "set cuda_graph=False") from e
        self._graph = graph

    def _drop_graph(self) -> None:
        """Forget the captured update (its tensors are replaced by a load); the next update
        captures again."""
        self._graph, self._static = None, None

    # ------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume bit-identically (on CPU)."""
        return {
            "loss_module": {
                k: v.detach().clone() for k, v in self.loss_module.state_dict().items()
            },
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "updates": self.updates,
            "generator": self.generator.get_state(),
            "generator_device": self.generator.device.type,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "agent_config": self.agent.config.to_dict(),
            "learner_config": self.config.to_dict(),
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`; validated first, so a rejected one changes nothing."""
        # (A "scheduler" entry from older checkpoints is ignored: the learning rate is a
        # function of ``updates``, as that scheduler's was.)
        need = ("loss_module", "optimizer", "updates", "generator", "torch_rng")
        missing = [k for k in need if k not in sd]
        if missing:
            raise ValueError(f"Learner.load_state_dict: missing entries {missing}")
        own = self.loss_module.state_dict()
        theirs = sd["loss_module"]
        key = "popart.updates"
        if key in own and key not in theirs:
            # Checkpoints from before PopArt's bias correction: it has applied exactly one
            # update per learner update (skipped steps touch neither).
            theirs = {**theirs, key: torch.tensor(float(sd["updates"]), dtype=torch.float64)}
        if set(own) != set(theirs):
            diff = sorted(set(own) ^ set(theirs))[:5]
            raise ValueError(f"Learner.load_state_dict: model keys differ, e.g. {diff}")
        for k, v in own.items():
            if tuple(v.shape) != tuple(theirs[k].shape):
                raise ValueError(f"Learner.load_state_dict: {k!r} has shape "
                                 f"{tuple(theirs[k].shape)}, expected {tuple(v.shape)}")
        opt_groups = sd["optimizer"].get("param_groups", [])
        if len(opt_groups) != 1 or len(opt_groups[0]["params"]) != len(self.trainable):
            raise ValueError("Learner.load_state_dict: optimizer state does not match the model")
        # RNG states are CPU ByteTensors whatever the device (torch.load's map_location may have
        # moved them), and their size depends on the generator's device (a CUDA generator's state
        # is 16 bytes, a CPU one's 5056): a run resumed or evaluated on another device type
        # restarts the sampling stream from the seed instead of failing.
        gen_state = torch.as_tensor(sd["generator"]).to("cpu", torch.uint8)
        torch_rng = torch.as_tensor(sd["torch_rng"]).to("cpu", torch.uint8)
        if torch_rng.numel() != torch.get_rng_state().numel():
            raise ValueError("Learner.load_state_dict: torch_rng is not a CPU RNG state "
                             f"({torch_rng.numel()} bytes)")
        gen_matches = (gen_state.numel() == self.generator.get_state().numel()
                       and sd.get("generator_device", self.generator.device.type)
                       == self.generator.device.type)
        self.loss_module.load_state_dict(theirs)
        self.optimizer.load_state_dict(sd["optimizer"])
        self._restore_optimizer_settings()
        # AdamW's step count restarts at each moment reset, so it is where the reset schedule
        # stands (update calls and applied steps differ only by skipped non-finite updates).
        interval = self.config.optimizer_reset_interval
        if interval:
            steps = [int(s["step"]) for s in self.optimizer.state.values() if "step" in s]
            self._calls_since_reset = max(steps, default=0) % interval
        self.updates = int(sd["updates"])
        self._drop_graph()
        if gen_matches:
            self.generator.set_state(gen_state)
        else:
            warnings.warn(
                f"Learner.load_state_dict: the checkpoint's sampling generator was on "
                f"{sd.get('generator_device', 'another device type')}, this learner's is on "
                f"{self.generator.device.type}; reseeding it with seed {self.config.seed} + "
                f"updates {self.updates} (the run continues, not bit-identically)",
                stacklevel=2,
            )
            self.generator.manual_seed(self.config.seed + self.updates)
        torch.set_rng_state(torch_rng)
        restore_cuda_rng_states(sd.get("cuda_rng"))
