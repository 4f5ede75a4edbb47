"""MP4 videos of a trained agent's greedy episodes: ``amago-fast eval RUN --video DIR``.

An env renders when it has ``render_slot(index) -> (H, W, 3) uint8 frame or None``: gymnasium
envs made with ``render_mode="rgb_array"`` (``gym:<id>``: CartPole, the MuJoCo envs, MiniGrid,
...) and the AIB MuJoCo tasks stepped in this process (dm_control and gymnasium MuJoCo, drawn by
``mujoco.Renderer``; headless machines need ``MUJOCO_GL=egl``, set here when unset). Other envs
(the NumPy built-ins, EnvPool pools) cannot render: :class:`RenderError` says so in one line.

One env slot is stepped with :func:`amago_fast.load_agent`'s policy (the same code a user
deploys); every rollout becomes ``<env>-<checkpoint step>-ep<k>.mp4`` in DIR. Files are written
under a temporary name in DIR and linked to their final name, which fails when that name exists:
nothing outside DIR is written and an existing video is never replaced (all names are checked
before the first episode runs). Encoding needs ``imageio-ffmpeg`` (``pip install
'amago_fast[video]'``: a wheel carrying its own ffmpeg binary, no torch dependency).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["RenderError", "record_videos", "video_names"]

MAX_FRAMES = 10_000
"""Frames per video at most: a rollout that never ends (an env without a time limit whose
policy never finishes) is cut here (about 5.5 minutes at 30 fps) instead of filling the disk."""

DEFAULT_FPS = 30.0


class RenderError(ValueError):
    """The run's env cannot render, or the video encoder is missing (one line for the CLI)."""


def _slug(text: str) -> str:
    """A file-name-safe form of an env name (``gym:ALE/Pong-v5`` -> ``gym-ALE-Pong-v5``): no
    path separators, so a name can never leave the output folder."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "env"


def video_names(env_name: str, step: int, episodes: int) -> list[str]:
    """The file names :func:`record_videos` writes, in order."""
    base = f"{_slug(env_name)}-{int(step):012d}"
    return [f"{base}-ep{k:03d}.mp4" for k in range(episodes)]


def _render_kwargs(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The make_env kwargs that make the run's env render in this process (a mixture: each
    task's own kwargs)."""
    from amago_fast.envs.aib_mujoco import MUJOCO_TASKS
    from amago_fast.envs.mixture import MIXTURE_NAME

    if name == MIXTURE_NAME and isinstance(kwargs.get("tasks"), list):
        tasks = [t if not isinstance(t, dict) else
                 {**t, "kwargs": _render_kwargs(str(t.get("name")), t.get("kwargs") or {})}
                 for t in kwargs["tasks"]]
        return {**kwargs, "tasks": tasks}
    if name.startswith("gym:"):
        return {**kwargs, "render_mode": "rgb_array"}
    if name in MUJOCO_TASKS:
        return {**kwargs, "num_workers": 0}
    return kwargs


def _writer_module() -> Any:
    try:
        import imageio.v2 as iio
        import imageio_ffmpeg  # noqa: F401  (the ffmpeg binary imageio's MP4 writer runs)
    except ImportError:
        raise RenderError("--video needs imageio and imageio-ffmpeg: pip install "
                          "'amago_fast[video]' (or pip install imageio-ffmpeg)") from None
    return iio


def _even(frame: np.ndarray) -> np.ndarray:
    """H.264 (yuv420p) needs even sides: pad one black row / column where odd."""
    h, w = frame.shape[:2]
    if h % 2 or w % 2:
        frame = np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)))
    return frame


def _write_mp4(iio: Any, frames: list[np.ndarray], target: Path, fps: float) -> None:
    """Encode `frames` to a temporary file in target's folder, then link it to `target` (fails
    with FileExistsError if `target` exists, even as a dangling link); the temporary is gone
    either way."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.", suffix=".mp4")
    os.close(fd)
    try:
        writer = iio.get_writer(tmp, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                macro_block_size=1, quality=7, pixelformat="yuv420p")
        try:
            for frame in frames:
                writer.append_data(_even(frame))
        finally:
            writer.close()
        os.link(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)


def record_videos(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    episodes: int = 2,
    seed: int = 12345,
    device: str = "cpu",
    env_kwargs: dict | None = None,
    sample: bool = False,
) -> list[Path]:
    """Record `episodes` greedy rollouts of the run's newest checkpoint as MP4 files in
    `out_dir` (created if missing); returns their paths (see the module docstring).

    Raises RenderError when the env cannot render or imageio-ffmpeg is missing,
    FileExistsError when a video of the same name is in `out_dir` (nothing is written then),
    NotADirectoryError when `out_dir` is a file."""
    os.environ.setdefault("MUJOCO_GL", "egl")  # before anything imports mujoco's GL context
    from amago_fast.checkpoint import verify_checkpoint
    from amago_fast.config import load_config
    from amago_fast.deploy import load_agent
    from amago_fast.envs import make_env
    from amago_fast.envs.mixture import MIXTURE_NAME, normalize_tasks
    from amago_fast.trainer import eval_env_kwargs

    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"video episodes must be an int >= 1, got {episodes!r}")
    iio = _writer_module()
    run_dir, out = Path(run_dir), Path(out_dir)
    policy = load_agent(run_dir, device=device)
    cfg = load_config(run_dir / "config.json")
    step = int(verify_checkpoint(policy.checkpoint)["step"])
    kwargs = _render_kwargs(cfg.env.name, eval_env_kwargs(cfg, env_kwargs))
    shown = cfg.env.name
    if cfg.env.name == MIXTURE_NAME:  # one slot: the task --env-kwargs '{"only": label}'
        if "only" not in kwargs:      # names, else the first
            kwargs["only"] = normalize_tasks(kwargs.get("tasks"))[0]["label"]
        shown = str(kwargs["only"])
    names = video_names(shown, step, episodes)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--video {out}: exists and is not a directory")
    taken = [n for n in names if os.path.lexists(out / n)]
    if taken:
        raise FileExistsError(f"--video {out}: {taken[0]} exists (videos are never replaced: "
                              "move it or pick another folder)")
    try:
        env = make_env(cfg.env.name, 1, seed=seed, **kwargs)
    except TypeError as e:
        raise RenderError(f"{cfg.env.name!r} cannot render ({e})") from None
    try:
        render = getattr(env, "render_slot", None)
        obs = env.reset(seed=seed)
        first = render(0) if callable(render) else None
        if first is None:
            raise RenderError(f"{cfg.env.name!r} cannot render frames (videos need a gymnasium "
                              "env with rgb_array rendering or an AIB MuJoCo task)")
        fps = getattr(env, "render_fps", None) or DEFAULT_FPS
        out.mkdir(parents=True, exist_ok=True)
        policy.reset(1)
        written: list[Path] = []
        frames, reward, done = [first], None, None
        while len(written) < episodes:
            actions = policy.act(obs, reward, done, sample=sample)
            obs, rew, term, trunc, _ = env.step(np.asarray(actions))
            reward, done = rew, term | trunc
            if frames is None:  # the step after a rollout ended: the next one's first frame
                frames = []
            frames.append(render(0))
            if bool(done[0]) or len(frames) >= MAX_FRAMES:
                target = out / names[len(written)]
                _write_mp4(iio, frames, target, fps)
                written.append(target)
                frames = None
                if not bool(done[0]):  # cut at MAX_FRAMES: the next video opens a new rollout
                    obs, reward, done = env.reset(), None, None
                    policy.reset(1)
                    frames = [render(0)]
        return written
    finally:
        env.close()
