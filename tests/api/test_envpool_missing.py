"""Without EnvPool installed (simulated: ``sys.modules["envpool"] = None`` makes ``import
envpool`` raise ImportError, as on Python 3.12 or aarch64), ``amago-fast train --env.name
envpool:...`` and the Python API name the missing package in one line, no traceback."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from amago_fast.envs.base import EnvUnavailableError

_RUN = textwrap.dedent("""
    import sys
    sys.modules["envpool"] = None
    from amago_fast.cli import main
    sys.exit(main({argv!r}))
""")


@pytest.mark.parametrize("argv", [
    # the profile path (auto preset: sizes the run from the env's episode limit)
    ["train", "--env.name", "envpool:CartPole-v1", "--print-config"],
    # a hand-tuned preset: the trainer builds the env
    ["train", "--preset", "tmaze", "--env.name", "envpool:CartPole-v1",
     "--total_env_steps", "8", "--run-dir", "{tmp}/run"],
])
def test_train_without_envpool_is_one_line(argv, tmp_path) -> None:
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    proc = subprocess.run([sys.executable, "-c", _RUN.format(argv=argv)], capture_output=True,
                          text=True, timeout=120)
    err = [line for line in proc.stderr.splitlines()
           if line.strip() and not line.startswith("amago-fast: note:")]
    assert proc.returncode == 2, proc.stderr
    assert len(err) == 1 and "Traceback" not in proc.stderr
    assert "envpool is not installed" in err[0] and "pip install envpool" in err[0]
    assert not (tmp_path / "run" / "config.json").exists()  # nothing of a run written


def test_make_env_without_envpool_raises_import_error(monkeypatch) -> None:
    from amago_fast.envs import make_env

    monkeypatch.setitem(sys.modules, "envpool", None)
    with pytest.raises(ImportError, match="envpool is not installed") as info:
        make_env("envpool:CartPole-v1", 2)
    assert isinstance(info.value, EnvUnavailableError) and isinstance(info.value, ValueError)
