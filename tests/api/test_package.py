"""The package face: curated lazy top-level exports, one version source, py.typed, and every
script in examples/ run as a smoke test (in this process, `--quick`: the torch import is paid
once for all of them)."""

from __future__ import annotations

import json
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

import amago_fast

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


def test_every_export_resolves_and_all_lists_exactly_them():
    assert amago_fast.__all__ == ["__version__", *amago_fast._EXPORTS]
    for name in amago_fast.__all__:
        obj = getattr(amago_fast, name)
        if name != "__version__":
            assert obj.__name__ == name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        amago_fast.nope  # noqa: B018
    assert set(amago_fast._EXPORTS) <= set(dir(amago_fast))


def test_importing_the_package_imports_neither_torch_nor_numpy():
    code = ("import sys, amago_fast; print(json.dumps(['torch' in sys.modules, "
            "'numpy' in sys.modules, amago_fast.__version__]))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], check=True,
                         capture_output=True, text=True).stdout
    assert json.loads(out) == [False, False, amago_fast.__version__]


def test_one_version_source_and_py_typed():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^dynamic = \["version"\]$', pyproject, re.M)
    assert not re.search(r"^version = ", pyproject, re.M)
    assert 'input = "amago_fast/__init__.py"' in pyproject
    assert re.fullmatch(r"\d+\.\d+\.\d+", amago_fast.__version__)
    assert (ROOT / "amago_fast" / "py.typed").is_file()


@pytest.mark.parametrize("script", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_example_runs(script, tmp_path, monkeypatch, capsys, keep_torch_threads):
    monkeypatch.chdir(tmp_path)  # anything an example writes lands here
    monkeypatch.setattr(sys, "argv", [str(script), "--quick"])
    runpy.run_path(str(script), run_name="__main__")
    assert capsys.readouterr().out.strip()
    assert not (ROOT / "runs").exists() or not any(
        p.stat().st_mtime > tmp_path.stat().st_mtime for p in (ROOT / "runs").iterdir())


def test_examples_folder_has_the_documented_scripts():
    assert {p.stem for p in EXAMPLES} >= {"custom_env", "load_and_act", "buffer_replay",
                                          "meta_rl_trials"}
