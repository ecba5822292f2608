"""The distribution installs one top-level package, ``solidx``, whose subpackages are the
repository's folders; it lives beside ROCm's own ``gradlib`` distribution (same module paths
``gradlib/gemm_tuner.py``, ``gradlib/fp8_gemm_tuner.py``) without touching its files.

The stand-in ``gradlib`` built here is ours (two modules that say who they are), not ROCm's code.
"""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import tomllib
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str | Path, cwd: Path | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # no source tree on the path
    done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=env)
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done.stdout


def _wheel(source: Path, out: Path) -> Path:
    _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", out, source)
    (wheel,) = out.glob("*.whl")
    return wheel


@pytest.fixture(scope="module")
def solidx_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel of the tracked tree, built in a copy (an in-tree build/ could hold stale modules)."""
    source = tmp_path_factory.mktemp("solidx_source")
    for name in _run("git", "-C", ROOT, "ls-files", "-z").split("\0"):
        if name and (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    return _wheel(source, tmp_path_factory.mktemp("solidx_wheel"))


def test_every_package_folder_is_listed() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    listed = set(pyproject["tool"]["setuptools"]["packages"])
    folders = {".".join(("solidx", *p.parent.relative_to(ROOT).parts))
               for p in ROOT.rglob("__init__.py")
               if not {"tests", "build", ".git"} & set(p.relative_to(ROOT).parts)}
    assert listed == folders


def test_wheel_has_solidx_as_its_only_top_level_package(solidx_wheel: Path) -> None:
    with zipfile.ZipFile(solidx_wheel) as wheel:
        names = wheel.namelist()
        (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        assert wheel.read(top_level).decode().split() == ["solidx"]
    roots = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert roots == {"solidx"}
    for module in ("solidx/__init__.py", "solidx/gradlib/fp8_gemm_tuner.py",
                   "solidx/runtime/llm.py", "solidx/cli/main.py",
                   "solidx/shape_capture/recorder.py"):
        assert module in names


def test_no_module_imports_a_top_level_name_of_ours() -> None:
    """Inside the package every import of our code goes through ``solidx.``: a bare ``gradlib``
    would be ROCm's where it is installed."""
    ours = {"cli", "gradlib", "runtime", "shape_capture"}
    for path in [*ROOT.glob("[!.]*/**/*.py"), *ROOT.glob("*.py")]:
        if "tests" in path.relative_to(ROOT).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                     else [])
            bad = [n for n in names if n.split(".")[0] in ours]
            assert not bad, f"{path.relative_to(ROOT)}:{node.lineno}: import {bad[0]}"


STANDIN_PYPROJECT = """\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "gradlib"
version = "0.0.1"

[tool.setuptools]
packages = ["gradlib"]
"""


def test_beside_a_gradlib_distribution(solidx_wheel: Path, tmp_path: Path) -> None:
    """Installed into one venv with a distribution named ``gradlib``: both import, and
    uninstalling either leaves the other's files and imports intact."""
    standin = tmp_path / "standin"
    (standin / "gradlib").mkdir(parents=True)
    (standin / "pyproject.toml").write_text(STANDIN_PYPROJECT)
    for module in ("__init__", "gemm_tuner", "fp8_gemm_tuner"):
        (standin / "gradlib" / f"{module}.py").write_text(f"WHO = 'stand-in {module}'\n")
    standin_wheel = _wheel(standin, tmp_path / "standin_wheel")

    env = tmp_path / "venv"
    venv.create(env, system_site_packages=True, with_pip=False)
    python = env / "bin" / "python"
    pip = (sys.executable, "-m", "pip", "--python", python)
    probe = ("import gradlib.fp8_gemm_tuner as g, solidx.gradlib.fp8_gemm_tuner as s, os;"
             "print(g.WHO); print(os.path.relpath(s.__file__, os.path.dirname(g.__file__)))")

    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
                .strip())

    def installed() -> set[str]:
        """The distributions in the venv's own site-packages (the system's are visible too)."""
        return {p.name.split("-")[0] for p in site.glob("*.dist-info")}

    _run(*pip, "install", "-q", "--no-deps", "--no-index", standin_wheel, solidx_wheel)
    assert installed() == {"gradlib", "solidx"}
    who, rel = _run(python, "-c", probe, cwd=tmp_path).splitlines()
    assert who == "stand-in fp8_gemm_tuner" and rel == "../solidx/gradlib/fp8_gemm_tuner.py"

    _run(*pip, "uninstall", "-q", "-y", "solidx")
    assert _run(python, "-c", "import gradlib.gemm_tuner as g; print(g.WHO)",
                cwd=tmp_path).split() == ["stand-in", "gemm_tuner"]
    assert installed() == {"gradlib"}

    _run(*pip, "install", "-q", "--no-deps", "--no-index", solidx_wheel)
    _run(*pip, "uninstall", "-q", "-y", "gradlib")
    assert installed() == {"solidx"}
    out = _run(python, "-c", "import solidx.gradlib.gemm_tuner as s; print(s.__file__);"
               "import importlib.util as u; print(u.find_spec('gradlib'))", cwd=tmp_path)
    assert out.split()[0].startswith(str(env)) and out.split()[1] == "None"
