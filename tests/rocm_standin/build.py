"""Compile the ROCm ABI stand-ins (``*_standin.c`` here) with the system C compiler into a
directory; the tests then load them through solidx's real bindings."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def build(name: str, out_dir: Path) -> Path:
    """``lib<name>.so`` built from ``<name>_standin.c``; skips the test where no C compiler
    exists, fails with the compiler's output where it does not compile."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler (gcc/cc) for the ROCm ABI stand-in")
    target = out_dir / f"lib{name}.so"
    command = [compiler, "-O1", "-shared", "-fPIC", "-std=c11", "-Wall", "-Werror",
               f"-I{HERE}", str(HERE / f"{name}_standin.c"), "-o", str(target), "-lm"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr}")
    return target
