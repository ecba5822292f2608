"""Ranks started by hand meet within SOLIDX_RENDEZVOUS_TIMEOUT, or fail naming the missing ranks
and the address (issue 18 item 5), on gloo with torchrun's variables set by hand."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from solidx.runtime import envs

ROOT = Path(__file__).resolve().parents[1]
RANK = ("from solidx.runtime.config import Config\n"
        "from solidx.runtime.distributed import init_distributed, tp_all_reduce\n"
        "import torch\n"
        "init_distributed(Config(model='tiny-llama', load_format='dummy', device='cpu',"
        " tensor_parallel_size=2))\n"
        "print('sum', int(tp_all_reduce(torch.ones(1)).item()), flush=True)\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int, timeout: str = "3") -> subprocess.Popen:
    env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "SOLIDX_RENDEZVOUS_TIMEOUT": timeout,
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH"))
                                         if p)}
    for name in ("TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_RUN_ID"):
        env.pop(name, None)
    return subprocess.Popen([sys.executable, "-c", RANK], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_two_hand_started_ranks_meet() -> None:
    port = _free_port()
    procs = [_rank(0, port, "60"), _rank(1, port, "60")]
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        assert "sum 2" in out


def test_a_peer_that_never_comes_is_named_within_the_timeout() -> None:
    port = _free_port()
    started = time.monotonic()
    proc = _rank(0, port)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert (f"rank 0 of 2: rank(s) 1 did not join the rendezvous at 127.0.0.1:{port} within 3 s "
            "(SOLIDX_RENDEZVOUS_TIMEOUT)") in err
    assert time.monotonic() - started < 60


def test_a_missing_rank_0_is_reported_by_its_peer() -> None:
    port = _free_port()
    proc = _rank(1, port)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert f"rank 1 of 2 could not reach the rendezvous at 127.0.0.1:{port} within 3 s" in err


def test_the_timeout_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOLIDX_RENDEZVOUS_TIMEOUT", raising=False)
    assert 0 < envs.SOLIDX_RENDEZVOUS_TIMEOUT < 60
    monkeypatch.setenv("SOLIDX_RENDEZVOUS_TIMEOUT", "7.5")
    assert envs.SOLIDX_RENDEZVOUS_TIMEOUT == 7.5
    for bad in ("-1", "soon", "inf", "0"):
        monkeypatch.setenv("SOLIDX_RENDEZVOUS_TIMEOUT", bad)
        with pytest.raises(ValueError, match="SOLIDX_RENDEZVOUS_TIMEOUT="):
            _ = envs.SOLIDX_RENDEZVOUS_TIMEOUT
