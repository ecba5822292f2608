"""Start a real ``solidx serve`` subprocess (optionally under torchrun) for the serve tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "sk-solidx-test"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: str, args: list[str], log: Path, ranks: int = 1,
                 timeout_s: float = 150, device: tuple[str, ...] = ("--device", "cpu",
                 "--dtype", "float32")) -> tuple[subprocess.Popen, str]:
    """``solidx serve MODEL ARGS`` on a free port of 127.0.0.1 (under torchrun when ``ranks``
    > 1), once /health answers; (the process, its base URL)."""
    port = free_port()
    cli = ["-m", "solidx.cli.main", "serve", model, "--host", "127.0.0.1", "--port", str(port),
           *device, *args]
    if ranks > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   "--nnodes=1", f"--nproc-per-node={ranks}", "--no-python", sys.executable]
        command += [*cli, "--tensor-parallel-size", str(ranks)]
    else:
        command = [sys.executable, *cli]
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(ROOT)) if p)
    env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(command, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"solidx serve exited ({proc.returncode}):\n{log.read_text()}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop_server(proc)
    raise RuntimeError(f"solidx serve did not answer in {timeout_s} s:\n{log.read_text()}")


def stop_server(proc: subprocess.Popen) -> None:
    """End the server and its children (its own process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(10)
