"""Shape capture loses no rows (issue 18 item 3): a bad shapes file is refused before the run,
SIGTERM and SIGINT flush, and rows that cannot be merged are written beside the file with a
non-zero exit."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from solidx.gradlib.schema import CsvError
from solidx.gradlib.shapes_file import read_shapes
from solidx.shape_capture import recorder

ROOT = Path(__file__).resolve().parents[1]
RECORD = ("from solidx.gradlib import GemmProblem\n"
          "from solidx.shape_capture import start_recording\n"
          "r = start_recording({path!r})\n"
          "r.record(GemmProblem(16, 2, 32), 'model.layers.0.o')\n"
          "print('recording', flush=True)\n")


def _run(code: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def test_a_corrupt_shapes_file_is_refused_before_the_run(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "fp8_shapes.csv"
    path.write_text("M,N,K\n16,x,32\n")
    monkeypatch.setattr(recorder, "_active", None)
    with pytest.raises(CsvError, match=rf"{path}:2: column N"):
        recorder.start_recording(str(path))
    assert recorder.active_recorder() is None
    proc = _run(RECORD.format(path=str(path)))
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "recording" not in out
    assert f"{path}:2: column N" in err


def test_rows_that_cannot_be_merged_are_rescued_with_exit_1(tmp_path: Path) -> None:
    path = tmp_path / "fp8_shapes.csv"
    code = RECORD.format(path=str(path)) + f"open({str(path)!r}, 'w').write('garbage\\n')\n"
    proc = _run(code)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    rescued = list(tmp_path.glob("fp8_shapes.csv.rescued-*.csv"))
    assert len(rescued) == 1 and f"they are in {rescued[0]}" in err
    (row,) = read_shapes(rescued[0])
    assert (row.problem.M, row.problem.N, row.problem.K, row.count) == (16, 2, 32, 1)
    assert "Traceback" not in err


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_flush_the_rows(tmp_path: Path, signum: int) -> None:
    path = tmp_path / "fp8_shapes.csv"
    proc = _run(RECORD.format(path=str(path)) + "import time\ntime.sleep(120)\n")
    assert proc.stdout.readline().strip() == "recording"
    time.sleep(0.2)
    proc.send_signal(signum)
    proc.communicate(timeout=60)
    assert proc.returncode != 0
    if signum == signal.SIGTERM:
        assert proc.returncode == -signal.SIGTERM  # still ends by the signal, as before
    (row,) = read_shapes(path)
    assert (row.problem.M, row.problem.N, row.problem.K, row.layers) == (16, 2, 32,
                                                                         ("model.layers.*.o",))
