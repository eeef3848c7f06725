"""PNG plots of benchmark and capacity results (matplotlib: ``pip install "lmzip[bench]"``)."""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..errors import LMZipError

__all__ = ["plot_bench", "plot_capacity", "have_matplotlib"]


def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only, never a window
        import matplotlib.pyplot as plt
    except ImportError:
        raise LMZipError('plots need matplotlib: pip install matplotlib (or "lmzip[bench]")') from None
    return plt


def plot_bench(results: Sequence, path: str | os.PathLike, title: str = "") -> None:
    """Grouped bars: bits per byte of every file (x) for every compressor (one colour each)."""
    plt = _pyplot()
    files: list[str] = []
    names: list[str] = []
    bpb: dict[tuple[str, str], float] = {}
    for r in results:
        files += [r.file] if r.file not in files else []
        names += [r.compressor] if r.compressor not in names else []
        bpb[(r.file, r.compressor)] = r.bpb
    width = 0.8 / max(len(names), 1)
    fig, ax = plt.subplots(figsize=(min(14.0, max(7.0, 2 + 0.2 * len(files) * max(1, len(names)))), 5.0))
    # the axis stops at 9 bits per byte (raw data is 8): bars beyond are cut and labelled,
    # so that one expanded binary file does not flatten every other bar
    top = min(max(bpb.values(), default=1.0) * 1.05, 9.0)
    for i, name in enumerate(names):
        xs = [j + (i - (len(names) - 1) / 2) * width for j in range(len(files))]
        ys = [bpb.get((f, name), 0.0) for f in files]
        ax.bar(xs, [min(y, top) for y in ys], width, label=name, hatch="//" if name.startswith("lmzip") else None,
               edgecolor="black", linewidth=0.4)
        for x, y in zip(xs, ys):
            if y > top:
                ax.annotate(f"{y:.1f}", (x, top * 0.97), ha="center", va="top", fontsize="x-small", rotation=90,
                            color="white", fontweight="bold")
    ax.set_ylim(0, top)
    ax.set_xticks(range(len(files)))
    ax.set_xticklabels(files, rotation=30, ha="right")
    ax.set_ylabel("bits per byte (lower is better)")
    ax.set_title(title or "Compressed size per file")
    ax.axhline(8, color="grey", linewidth=0.5, linestyle=":")
    ax.legend(fontsize="small", ncol=3, loc="upper left")
    ax.grid(axis="y", linewidth=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_capacity(rows: Sequence, path: str | os.PathLike, title: str = "") -> None:
    """Three panels per model: information capacity, bits per byte, FLOPs per token."""
    plt = _pyplot()
    names = [r.model for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.8))
    panels = [
        ("information capacity", [r.capacity for r in rows], "{:.4f}"),
        ("cross-entropy, bits per byte", [r.bpb for r in rows], "{:.3f}"),
        ("forward FLOPs per token", [r.flops_per_token for r in rows], "{:.3g}"),
    ]
    for ax, (label, values, fmt) in zip(axes, panels):
        bars = ax.bar(names, values, color=["C0", "C1", "C2", "C3", "C4"][: len(names)])
        for bar, v in zip(bars, values):
            ax.annotate(fmt.format(v), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize="small")
        ax.set_title(label, fontsize="medium")
        ax.tick_params(axis="x", labelrotation=15)
        ax.grid(axis="y", linewidth=0.3)
    fig.suptitle(title or "Information capacity (Yuan et al., 2025)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
