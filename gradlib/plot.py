"""A tuned file's speedup over default as one heat map per device (``solidx csv plot``).

Rows are weight shapes (M×K, dtypes), columns token counts N; each cell shows the speedup and
the winning libtype, coloured red below 1, white at 1, green above.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from solidx.gradlib.tuned_file import TunedRow

_SHORT = {"float8_e4m3fn": "fp8", "float8_e4m3fnuz": "fp8", "float8_e5m2": "e5m2",
          "bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


def _short(dtype_name: str) -> str:
    name = dtype_name.removeprefix("torch.")
    return _SHORT.get(name, name)


def _speedup(row: TunedRow) -> float:
    if not math.isnan(row.speedup):
        return row.speedup
    if row.default_ms > 0 and row.soltimems > 0:
        return row.default_ms / row.soltimems
    return math.nan


def _geomean(values: list[float]) -> float:
    kept = [v for v in values if v > 0]
    return math.exp(sum(map(math.log, kept)) / len(kept)) if kept else math.nan


def _weight_label(row: TunedRow) -> str:
    p = row.problem
    dtypes = f"{_short(p.dtype_name)}→{_short(p.outdtype_name)}"
    return f"{p.M}×{p.K} {dtypes}" + (" +bias" if p.bias else "")


def plot_speedup(rows: list[TunedRow], output: str | Path, title: str) -> None:
    """Write the heat map of ``rows`` (one panel per device) to ``output`` (PNG, SVG, PDF...)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    by_device: dict[str, list[TunedRow]] = defaultdict(list)
    for row in rows:
        by_device[row.device or "unknown device"].append(row)
    speedups = [s for s in map(_speedup, rows) if not math.isnan(s)]
    low = min([0.95, *speedups])
    high = max([1.3, *speedups])
    norm = TwoSlopeNorm(vmin=low, vcenter=1.0, vmax=high)
    panels = []
    for device, group in sorted(by_device.items()):
        order: dict[str, tuple[int, int]] = {}
        for r in group:
            order.setdefault(_weight_label(r), (r.problem.M, r.problem.K))
        labels = sorted(order, key=order.__getitem__)
        tokens = sorted({r.problem.N for r in group})
        panels.append((device, group, labels, tokens))
    width = max(6.0, 1.0 + 0.75 * max(len(p[3]) for p in panels) + 2.5)
    heights = [1.2 + 0.5 * len(p[2]) for p in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(width, sum(heights) + 0.8), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, (device, group, labels, tokens) in zip(axes[:, 0], panels):
        grid = [[math.nan] * len(tokens) for _ in labels]
        for row in group:
            i, j = labels.index(_weight_label(row)), tokens.index(row.problem.N)
            s = _speedup(row)
            grid[i][j] = s
            if not math.isnan(s):
                ax.text(j, i, f"{s:.2f}\n{row.libtype}", ha="center", va="center", fontsize=7)
        image = ax.imshow(grid, cmap="RdYlGn", norm=norm, aspect="auto")
        ax.set_xticks(range(len(tokens)), [str(n) for n in tokens])
        ax.set_yticks(range(len(labels)), labels)
        ax.set_xlabel("tokens N")
        geomean = _geomean([_speedup(r) for r in group])
        ax.set_title(f"{device}: speedup over default (geometric mean {geomean:.3f}×)", fontsize=10)
        fig.colorbar(image, ax=ax, label="speedup")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(output, dpi=130)
    plt.close(fig)
