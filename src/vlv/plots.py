"""PNG plots people look at: loss curves and image grids (matplotlib, Agg; no CDN)."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_curves(curves: dict[str, Sequence[float]], path: str | Path, title: str = "training loss", smooth: int = 20) -> Path:
    """One panel per curve: raw loss (faint) and its running mean over ``smooth`` steps."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.2), squeeze=False)
    for ax, (name, values) in zip(axes[0], curves.items()):
        y = np.asarray(values, dtype=float)
        x = np.arange(1, len(y) + 1)
        ax.plot(x, y, alpha=0.25, lw=0.8, color="tab:blue")
        if len(y) >= smooth:
            ax.plot(x[smooth - 1 :], np.convolve(y, np.ones(smooth) / smooth, mode="valid"), color="tab:blue", lw=1.6)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def image_grid(rows: Sequence[Sequence[np.ndarray]], path: str | Path, row_titles: Sequence[str] | None = None,
               col_titles: Sequence[str] | None = None, title: str | None = None) -> Path:
    """A grid of uint8 HxWx3 images; rows may carry captions (wrapped)."""
    plt = _plt()
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.6 * n_cols + (2.4 if row_titles else 0), 1.7 * n_rows), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < len(row):
                ax.imshow(row[j], interpolation="nearest")
            else:
                ax.axis("off")
            if i == 0 and col_titles and j < len(col_titles):
                ax.set_title(col_titles[j], fontsize=8)
        if row_titles:
            axes[i][0].set_ylabel("\n".join(textwrap.wrap(row_titles[i], 26)), fontsize=6, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def to_uint8(images) -> np.ndarray:
    """B x 3 x H x W tensor in [-1, 1] -> B x H x W x 3 uint8."""
    x = images.detach().float().cpu().clamp(-1, 1)
    return ((x + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()


def _save(fig, path: str | Path) -> Path:
    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def cost_bars(usd: dict[str, float], budget: float, path: str | Path, title: str) -> Path:
    """Dollars per stage with the budget as a line; log scale, so cents and the budget share one axis."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    names, values = list(usd), [max(v, 1e-6) for v in usd.values()]
    bars = ax.bar(names, values, color="tab:blue")
    for b, v in zip(bars, usd.values()):
        ax.annotate(f"\\${v:.3g}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom", fontsize=7)
    ax.axhline(budget, color="tab:red", ls="--", lw=1.2, label=f"budget \\${budget:g}")
    ax.axhline(max(sum(usd.values()), 1e-6), color="tab:gray", ls=":", lw=1.0, label=f"total \\${sum(usd.values()):.3g}")
    ax.set_yscale("log")
    ax.set_ylabel("USD (log scale)")
    ax.legend(fontsize=8, loc="center right")
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(title.replace("$", r"\$"), fontsize=10)  # "$" would start mathtext
    fig.tight_layout()
    return _save(fig, path)


def bars(values: dict[str, float], path: str | Path, title: str, ylabel: str) -> Path:
    """One bar per named value, annotated."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    rects = ax.bar(list(values), list(values.values()), color="tab:blue")
    for r, v in zip(rects, values.values()):
        ax.annotate(f"{v:.4g}", (r.get_x() + r.get_width() / 2, r.get_height()), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)
