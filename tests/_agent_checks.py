"""Checks shared by the agent/collector tests."""

from __future__ import annotations

import numpy as np
import torch


def assert_rollout_steps_match_full_forward(agent, rollouts) -> int:
    """Each recorded rollout — a list of ``(row dict, main-gamma actor output)`` per step, as
    ``Agent.act`` saw and produced them — must equal the full-sequence forward over the same
    rows (incremental decoding == training forward). Returns the number of steps checked."""
    checked = 0
    with torch.no_grad():
        for steps in rollouts:
            if not steps:
                continue
            seq = {k: torch.as_tensor(np.stack([s[0][k] for s in steps]))[None]
                   for k in steps[0][0]}
            h = agent.encode(seq, seq["time_index"], torch.ones(1, len(steps), dtype=torch.bool))
            full = agent.actor(h)[0, :, -1]
            torch.testing.assert_close(torch.stack([s[1] for s in steps]), full,
                                       rtol=1e-4, atol=1e-5)
            checked += len(steps)
    return checked
