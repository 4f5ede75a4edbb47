"""The `amago-fast` command (also `python -m amago_fast`).

    amago-fast train [--preset NAME] [--run-dir DIR] [--resume RUN_DIR] [--<field> VALUE ...]
    amago-fast eval RUN_DIR [--episodes N] [--num-envs N] [--device DEV] [--video DIR]
    amago-fast export RUN_DIR OUT.pt2 [--batch N] [--checkpoint NAME]
    amago-fast bench [--only NAME,...] [--quick] [--json PATH]
    amago-fast plot RUN_DIR... [--out DIR] [--metric NAME]
    amago-fast presets

`amago-fast train` with no arguments trains the default preset (passive T-Maze, a small
Transformer) on CPU in minutes. Any field of TrainConfig can be overridden with its dotted name:
`--learner.lr 3e-4`, `--env.num_envs 16`, `--env.kwargs '{"corridor_length": 50}'`.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

__all__ = ["main", "build_parser"]


def _add_train(sub) -> None:
    from amago_fast.config import TrainConfig, add_dataclass_arguments
    from amago_fast.presets import AUTO_PRESET, DEFAULT_PRESET, list_presets

    p = sub.add_parser(
        "train",
        help="train an agent (default: the T-Maze preset)",
        description="Train an agent. Any TrainConfig field can be overridden with --<dotted.name>.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--preset",
        default=None,
        choices=list_presets(),
        help=f"starting config (default {DEFAULT_PRESET}, or {AUTO_PRESET} when --env.name is "
        "given: sized for the machine and the env by --profile; ignored with --resume)",
    )
    p.add_argument("--run-dir", default=None, help="run directory (default: <log_dir>/<run_name>)")
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=None,
        help="continue the run in RUN_DIR from its newest complete checkpoint "
        "(its saved config; overrides given here are applied on top)",
    )
    p.add_argument(
        "--print-config", action="store_true", help="print the resolved config as JSON and exit"
    )
    p.add_argument(
        "--data", dest="cfg:data.path", metavar="PATH", default=argparse.SUPPRESS,
        help="offline dataset (= --data.path): a folder of .npz trajectories, a buffer "
        "snapshot, a checkpoint or a run directory (amago_fast/offline.py)")
    p.add_argument(
        "--config", metavar="FILE.json", default=None,
        help="start from this config file (an earlier run's config.json, or a partial one: "
        "fields it leaves out keep the defaults, or --preset's values when given); overrides "
        "given here apply on top")
    add_dataclass_arguments(p, TrainConfig())


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a run's newest checkpoint (greedy or sampled "
                       "episodes)")
    p.add_argument("run_dir", help="a run directory written by `amago-fast train`")
    p.add_argument("--episodes", type=int, default=32, help="episodes to run")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--sample", dest="sample", action="store_const", const=True, default=None,
                     help="act with draws from the policy (default: as the run evaluated, its "
                     "eval_sample)")
    how.add_argument("--greedy", dest="sample", action="store_const", const=False,
                     help="act with the policy's greedy action")
    p.add_argument(
        "--num-envs", type=int, default=None, help="parallel eval envs (default: config)"
    )
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--seed", type=int, default=12345, help="eval env seed")
    p.add_argument(
        "--env-kwargs",
        default=None,
        metavar="JSON",
        help="env keyword arguments merged over the run's env.kwargs and env.eval_kwargs, e.g. "
        "'{\"split\": \"eval-out\"}' (actuator inversion's held-out contexts)",
    )
    p.add_argument(
        "--video", metavar="DIR", default=None,
        help="also write MP4s of greedy episodes to DIR (gymnasium envs with rgb_array "
        "rendering, AIB MuJoCo tasks; needs imageio-ffmpeg: pip install 'amago_fast[video]'); "
        "existing videos are never replaced")
    p.add_argument("--video-episodes", type=int, default=2, metavar="N",
                   help="episodes recorded with --video")


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export", help="write a run's greedy policy step as a torch.export program (.pt2)",
        description="Export the one-step greedy policy (observation row + rollout state in, "
        "action + state out) of a run's checkpoint with torch.export (amago_fast/export.py); "
        "amago_fast.exported.load_exported(OUT) acts with it like load_agent.")
    p.add_argument("run_dir", help="a run directory written by `amago-fast train`")
    p.add_argument("out", help="the .pt2 file to write, or .onnx for ONNX (never replaced "
                   "unless --overwrite)")
    p.add_argument("--batch", type=int, default=1, help="envs the program steps at once")
    p.add_argument("--checkpoint", default="latest",
                   help="'latest', an env-step count or a ckpt-<12 digits> name")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")


def _add_aib(sub) -> None:
    p = sub.add_parser(
        "aib", help="AIB protocol: AER per split over run directories (seeds) of one aib-* task",
        description="Evaluate each run's newest checkpoint on the 20 instances of every split "
        "(5 greedy episodes each), add it to the run's evaluation history, and print AER (the "
        "better of the last two evaluations per seed; mean ± std over seeds) beside AMAGO's "
        "published rows. --combine builds one table from several --json reports.")
    p.add_argument("run_dirs", nargs="*", help="run directories of one aib-* task, one per seed")
    p.add_argument("--no-evaluate", action="store_true",
                   help="use the training-time evaluation history only (no fresh evaluation)")
    p.add_argument("--warmup-steps", type=int, default=None,
                   help="history warm-up before each scored episode (default: the run's)")
    p.add_argument("--episodes-per-trial", type=int, default=None,
                   help="scored episodes per rollout, context kept (default: the run's)")
    p.add_argument("--episodes", type=int, default=5, help="episodes per instance")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--seed", type=int, default=12345, help="eval env seed (start states)")
    p.add_argument("--json", default=None, help="also write the report as JSON to this file")
    p.add_argument("--markdown", default=None, help="also write a markdown table to this file")
    p.add_argument("--combine", nargs="+", default=None, metavar="REPORT.json",
                   help="instead of evaluating: one table from reports written with --json")


def _add_bench(sub) -> None:
    p = sub.add_parser(
        "bench", help="run the benchmarks that exist (buffer, collect, update, attention, critic)"
    )
    p.add_argument("--only", default=None, help="comma-separated benchmark names")
    p.add_argument("--quick", action="store_true", help="smaller cases (smoke run)")
    p.add_argument("--json", default=None, help="also write the JSON results to this file")


def _add_plot(sub) -> None:
    p = sub.add_parser("plot", help="PNG learning curves comparing runs")
    p.add_argument("run_dirs", nargs="+", help="run directories")
    p.add_argument("--out", default=None, help="output directory (default: the first run dir)")
    p.add_argument(
        "--metric", default=None, help="eval.csv column to plot (default: return / mean return)"
    )
    p.add_argument(
        "--reference", action="append", default=[], metavar="LABEL=VALUE",
        help="a dashed horizontal line (random play, chance, a paper's figure), e.g. "
        "--reference random=-0.51; repeatable. The 95%% interval band of each curve is drawn "
        "when eval.csv holds it",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of `amago-fast`."""
    parser = argparse.ArgumentParser(
        prog="amago-fast",
        description="Fast in-context off-policy RL (AMAGO): train, evaluate, benchmark, plot.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train(sub)
    _add_eval(sub)
    _add_export(sub)
    _add_aib(sub)
    _add_bench(sub)
    _add_plot(sub)
    sub.add_parser("presets", help="list the training presets")
    return parser


def _env_family(name: str) -> str:
    """"gym" / "envpool" for prefixed ids, else the registered name itself."""
    return name.split(":", 1)[0] if ":" in name else name


def _drop_preset_env_kwargs(preset: Any, overrides: dict[str, str], preset_name: str) -> None:
    """A preset's env kwargs belong to its env: when ``--env.name`` moves to another env family
    (another built-in task, or between ``gym:`` and ``envpool:`` ids) and no ``--env.kwargs`` /
    ``--env.eval_kwargs`` is given, they are dropped (with a note) instead of being passed to
    an env that does not take them (tmaze's corridor_length to key-to-door). Within a family
    (``--preset minigrid --env.name gym:MiniGrid-Empty-5x5-v0``) they are kept."""
    new = overrides.get("env.name", "mixture" if "env.mixture" in overrides else None)
    if new is None or _env_family(new) == _env_family(preset.env.name):
        return
    for field_name in ("kwargs", "eval_kwargs"):
        old = getattr(preset.env, field_name)
        if old and f"env.{field_name}" not in overrides:
            print(f"amago-fast: note: preset {preset_name}'s env.{field_name} {old} are for "
                  f"{preset.env.name!r}, not passed to {new!r} (give --env.{field_name} to set "
                  "them)", file=sys.stderr)
            setattr(preset.env, field_name, {})


def _cmd_train(args: argparse.Namespace) -> int:
    from amago_fast.config import (
        ConfigError,
        apply_overrides,
        config_to_dict,
        load_config,
        overrides_from_namespace,
        validate,
    )
    from amago_fast.presets import default_preset, get_preset
    from amago_fast.profiles import size_config
    from amago_fast.trainer import Trainer, TrainingError

    overrides = overrides_from_namespace(args)
    if args.resume and args.config:
        print("amago-fast: --config starts a new run; --resume continues one with its own "
              "config.json (give overrides instead)", file=sys.stderr)
        return 2
    # a ConfigError is one "invalid config: ..." line (main's error handling)
    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.json").is_file():
            print(
                f"amago-fast: {run_dir} has no config.json (not a run directory)",
                file=sys.stderr,
            )
            return 2
        cfg = apply_overrides(load_config(run_dir / "config.json"), overrides)
    elif args.config:  # a run from a file (amago_fast/config_file.py)
        from amago_fast.config_file import read_config_file

        base = get_preset(args.preset) if args.preset else None
        try:
            cfg, typed = read_config_file(args.config, base)
        except ValueError as e:
            if isinstance(e, ConfigError):
                raise
            print(f"amago-fast: {e}", file=sys.stderr)
            return 2
        cfg = apply_overrides(cfg, overrides)
        validate(cfg)
        cfg = size_config(cfg, explicit=[*typed, *overrides])
        run_dir = Path(args.run_dir) if args.run_dir else None
    else:
        # no --preset: the T-Maze demo, or with --env.name the profile-sized `auto`
        preset_name = args.preset or default_preset(overrides)
        preset = get_preset(preset_name)
        _drop_preset_env_kwargs(preset, overrides, preset_name)
        cfg = apply_overrides(preset, overrides)
        validate(cfg)  # a bad typed value is named before any env is built for sizing
        # profile-sized presets (auto, gym, ...): every field not typed is sized for the
        # device and the env's episode limit (amago_fast/profiles.py)
        cfg = size_config(cfg, explicit=overrides)
        run_dir = Path(args.run_dir) if args.run_dir else None
    validate(cfg)
    if args.print_config:
        print(json.dumps(config_to_dict(cfg), indent=2))
        return 0
    trainer = Trainer(cfg, run_dir, resume=bool(args.resume))
    finished = False
    try:
        # Config errors found while building the envs, run-directory, lock and checkpoint
        # errors are one line each (main's error handling).
        result = trainer.train()
        finished = True
    except TrainingError as e:
        print(f"amago-fast: training stopped: {e}", file=sys.stderr)
        return 1
    finally:
        trainer.dist.shutdown(synchronize=finished)
    if trainer.dist.is_main:
        print(json.dumps(result, indent=2, default=float))
        if result["interrupted"]:
            print(
                f"amago-fast: interrupted; checkpoint written. Continue with: "
                f"amago-fast train --resume {result['run_dir']}",
                file=sys.stderr,
            )
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from amago_fast.trainer import evaluate_run

    env_kwargs = None
    if args.env_kwargs is not None:
        try:
            env_kwargs = json.loads(args.env_kwargs)
        except json.JSONDecodeError as e:
            print(f"amago-fast: --env-kwargs is not JSON: {e}", file=sys.stderr)
            return 2
        if not isinstance(env_kwargs, dict):
            print(f"amago-fast: --env-kwargs must be a JSON object, got {args.env_kwargs}",
                  file=sys.stderr)
            return 2
    # a bad argument, run directory or checkpoint is one line (main's error handling)
    stats = evaluate_run(
        args.run_dir,
        episodes=args.episodes,
        num_envs=args.num_envs,
        device=args.device,
        seed=args.seed,
        env_kwargs=env_kwargs,
        sample=args.sample,
    )
    print(json.dumps(stats, indent=2, default=float))
    if args.video is not None:
        from amago_fast.video import record_videos

        # a non-rendering env or a missing encoder is one line (RenderError is a ValueError)
        for path in record_videos(args.run_dir, args.video, episodes=args.video_episodes,
                                  seed=args.seed, device=args.device, env_kwargs=env_kwargs):
            print(path)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from amago_fast.deploy import load_agent

    checkpoint: str | int = args.checkpoint
    if checkpoint.isdigit():
        checkpoint = int(checkpoint)
    # a bad run, checkpoint, batch or an existing OUT is one line (main's error handling)
    policy = load_agent(args.run_dir, checkpoint)
    print(policy.export(args.out, batch=args.batch, overwrite=args.overwrite))
    return 0


def _cmd_aib(args: argparse.Namespace) -> int:
    from amago_fast.aib_protocol import (
        aib_report,
        combine_reports,
        format_table,
        markdown_table,
    )

    if bool(args.combine) == bool(args.run_dirs):
        print("amago-fast: aib takes run directories or --combine REPORT.json ..., not both",
              file=sys.stderr)
        return 2
    try:
        if args.combine:
            reports = combine_reports(args.combine)
        else:
            report = aib_report(args.run_dirs, evaluate=not args.no_evaluate,
                                warmup_steps=args.warmup_steps,
                                episodes_per_trial=args.episodes_per_trial,
                                episodes_per_instance=args.episodes, device=args.device,
                                seed=args.seed)
            reports = [report]
            if args.json:
                _write_text(args.json, json.dumps(report, indent=2) + "\n")
        print(format_table(reports))
        if args.markdown:
            _write_text(args.markdown, markdown_table(reports) + "\n")
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as e:
        print(f"amago-fast: {e}", file=sys.stderr)
        return 2
    return 0


def _write_text(path: str, text: str) -> None:
    """Write `text` atomically (a temporary file renamed over `path`)."""
    import os
    import tempfile

    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent or ".", prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _cmd_bench(args: argparse.Namespace) -> int:
    from amago_fast.bench.suite import run_suite

    only = [s.strip() for s in args.only.split(",")] if args.only else None
    try:
        results = run_suite(only=only, quick=args.quick, print_table=True)
    except KeyError as e:
        print(f"amago-fast: {e.args[0]}", file=sys.stderr)
        return 2
    text = json.dumps(results, indent=2, default=float)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from amago_fast.plot import plot_runs

    reference: dict[str, float] = {}
    for item in args.reference:
        label, sep, value = item.rpartition("=")
        try:
            reference[label] = float(value)
        except ValueError:
            sep = ""
        if not sep or not label:
            print(f"amago-fast: --reference wants LABEL=VALUE with a number, got {item!r}",
                  file=sys.stderr)
            return 2
    try:
        paths = plot_runs(args.run_dirs, out_dir=args.out, metric=args.metric,
                          reference=reference)
    except (FileNotFoundError, ValueError) as e:
        print(f"amago-fast: {e}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    from amago_fast.presets import PRESETS

    for name, overrides in sorted(PRESETS.items()):
        sized = " (sized by --profile)" if overrides.get("profile", "off") != "off" else ""
        print(f"{name:15s} env={overrides.get('env.name', '<--env.name>')}{sized}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `amago-fast` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # --debug (anywhere) or AMAGO_FAST_DEBUG=1: errors keep their traceback. Otherwise every
    # user-caused error is one line on stderr and exit code 2 (see _user_error_message).
    debug = "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]
    if not argv:
        argv = ["train"]  # the main job: `amago-fast` alone trains the default preset
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    handlers = {
        "train": _cmd_train,
        "eval": _cmd_eval,
        "export": _cmd_export,
        "aib": _cmd_aib,
        "bench": _cmd_bench,
        "plot": _cmd_plot,
        "presets": _cmd_presets,
    }
    if debug:
        return handlers[args.command](args)
    old_format = warnings.formatwarning
    warnings.formatwarning = _one_line_warning
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print("amago-fast: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        message = _user_error_message(e)
        if message is None:
            raise
        print(f"amago-fast: {message} (--debug or {DEBUG_ENV}=1 for the traceback)",
              file=sys.stderr)
        return 2
    finally:
        warnings.formatwarning = old_format


DEBUG_ENV = "AMAGO_FAST_DEBUG"
_NO_SPACE = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
             errno.EROFS: "read-only file system"}


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings shown as one ``amago-fast: warning: ...`` line (no source line, no location)."""
    return "amago-fast: warning: " + " ".join(str(message).split()) + "\n"


def _user_error_message(e: BaseException) -> str | None:
    """One line for an error the user caused (bad config, run directory, checkpoint, input
    file, disk full); None for anything else (a bug: its traceback is shown)."""
    from amago_fast.checkpoint import CheckpointError, RunDirError, RunLockedError
    from amago_fast.config import ConfigError

    if isinstance(e, OSError) and e.errno in _NO_SPACE:
        where = f" writing {e.filename}" if e.filename else ""
        return (f"{_NO_SPACE[e.errno]}{where}; the previous checkpoint is intact (free space "
                "and resume with --resume)")
    user = (ConfigError, CheckpointError, RunDirError, RunLockedError, ValueError,
            FileExistsError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
            PermissionError)
    if not isinstance(e, user):
        return None
    text = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, OSError) and e.filename and str(e.filename) not in text:
        text = f"{text}: {e.filename}"
    if isinstance(e, ConfigError):
        text = f"invalid config: {text}"
    return text


if __name__ == "__main__":
    sys.exit(main())
