"""Learner under real `torchrun --nproc_per_node 2` processes (gloo on CPU): PopArt is updated
with the all-reduced TD-target moments of the global batch, identically on every rank."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which(
    "torchrun"
)

WORKER = r'''
import json, sys
import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, sys.argv[2])
from test_learner import SMALL, make_batch, make_spec
from amago_fast.agent import Agent, AgentConfig
from amago_fast.learner import Learner, LearnerConfig

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.set_num_threads(1)
torch.manual_seed(0)
agent = Agent(make_spec(), AgentConfig(**SMALL, dropout_emb=0.0, dropout_ff=0.0))
beta = 0.25
learner = Learner(agent, LearnerConfig(warmup_steps=0, popart_beta=beta),
                  wrap_module=lambda m: DistributedDataParallel(m))
stash = []
learner.loss_module.register_forward_hook(lambda m, i, out: stash.append(out[1]))
batch = make_batch(agent.spec, seed=rank)
if rank == 1:  # fewer valid transitions on rank 1: the moments must be count-weighted
    for k in ("obs", "reward", "action"):
        batch[k][2, 5:] = 0
    batch["mask"][2, 5:] = False
    batch["truncated"][2, 4] = True
pa = learner.loss_module.popart
results = {"rank": rank}
for step_i in range(2):
    mu0, nu0, step = pa.mu.clone(), pa.nu.clone(), pa.step_size()
    m = learner.update(batch)
    assert m["skipped_nonfinite"] == 0.0
    aux = stash[-1]
    c = aux["target_count"].float().expand_as(aux["target_mean"])
    local = torch.cat([aux["target_mean"] * c, aux["target_sq_mean"] * c, c])
    parts = [torch.zeros_like(local) for _ in range(2)]
    dist.all_gather(parts, local)
    tot = parts[0] + parts[1]
    G = c.numel()
    mean, sq = tot[:G] / tot[2 * G:], tot[G:2 * G] / tot[2 * G:]
    assert abs(step - beta / (1 - (1 - beta) ** (step_i + 2))) < 1e-12  # bias-corrected step
    torch.testing.assert_close(pa.mu, (1 - step) * mu0 + step * mean)
    torch.testing.assert_close(pa.nu, (1 - step) * nu0 + step * sq)
    # the two ranks' local moments differ, so a rank-local update would have diverged
    results[f"local_mean_{step_i}"] = aux["target_mean"].tolist()
results["mu"] = pa.mu.tolist()
results["nu"] = pa.nu.tolist()
results["w"] = pa.w.detach().tolist()
results["b"] = pa.b.detach().tolist()
with open(f"{sys.argv[1]}/rank{rank}.json", "w") as f:
    json.dump(results, f)
dist.barrier()  # no rank closes its connections while the other is still in a collective
dist.destroy_process_group()
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not found")
def test_popart_moments_are_all_reduced_across_ranks(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    tests_dir = str(Path(__file__).parent)
    cmd = [TORCHRUN, "--nproc_per_node", "2", "--master_port", str(_free_port()),
           str(script), str(tmp_path), tests_dir]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["local_mean_0"] != r1["local_mean_0"]
    for key in ("mu", "nu", "w", "b"):
        assert r0[key] == r1[key], key
