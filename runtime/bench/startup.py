"""Start-up benchmark: wall time of ``solidx`` commands in fresh interpreters, from launch to
exit (median of a few runs), and of ``generate`` on the tiny model to its first token (a run
with ``--max-tokens 1``: start-up, engine build, prefill, exit).

``python -m solidx.runtime.bench.startup [--repeats 3] [--output-json F]`` prints one line per
command and saves the figures as JSON."""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from solidx.gradlib.timing import Stopwatch

TINY = ["--model", "tiny-llama", "--load-format", "dummy"]


def commands(shapes_file: str, merged_file: str) -> dict[str, list[str]]:
    """Name → ``solidx`` arguments, light commands first."""
    return {
        "solidx --help": ["--help"],
        "solidx --version": ["--version"],
        "solidx csv --help": ["csv", "--help"],
        "solidx csv validate": ["csv", "validate", shapes_file],
        "solidx csv show": ["csv", "show", shapes_file],
        "solidx csv merge": ["csv", "merge", shapes_file, shapes_file, "-o", merged_file],
        "solidx csv diff": ["csv", "diff", merged_file, merged_file],
        "solidx generate (tiny, to first token)": ["generate", *TINY, "--max-tokens", "1",
                                                   "--prompt", "Hello"],
    }


def wall_seconds(args: list[str]) -> float:
    """Seconds from launching ``python -m solidx.cli.main ARGS`` to its exit; RuntimeError
    when it fails."""
    with Stopwatch(torch.device("cpu")) as watch:
        done = subprocess.run([sys.executable, "-m", "solidx.cli.main", *args], text=True,
                              capture_output=True, check=False)
    seconds = watch.seconds
    if done.returncode != 0:
        raise RuntimeError(f"solidx {' '.join(args)} exited {done.returncode}: {done.stderr}")
    return seconds


def run(repeats: int) -> dict[str, object]:
    """The median and every sample per command, and the machine they ran on."""
    with tempfile.TemporaryDirectory() as folder:
        shapes = Path(folder) / "fp8_shapes.csv"
        shapes.write_text("M,N,K\n4096,1,4096\n6144,32,4096\n")
        results = {}
        for name, args in commands(str(shapes), str(Path(folder) / "merged.csv")).items():
            samples = [wall_seconds(args) for _ in range(repeats)]
            results[name] = {"median_s": statistics.median(samples), "samples_s": samples}
    return {"machine": f"{platform.node()} ({platform.processor() or platform.machine()}), "
                       f"python {platform.python_version()}", "commands": results}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m solidx.runtime.bench.startup")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output-json", default=None)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    figures = run(args.repeats)
    print(f"start-up, median of {args.repeats}, {figures['machine']}")
    for name, entry in figures["commands"].items():
        print(f"  {name:<42} {entry['median_s']:6.2f} s")
    if args.output_json:
        Path(args.output_json).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
