"""Result rows -> Markdown table, JSON (a list of row objects), CSV, and a PNG plot.

Every writer takes the same rows (dicts with identical keys, in a fixed column order), so the
three text formats always carry the same fields; None prints as an empty cell.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from embedpipe.errors import EmbedpipeError


class PlotUnavailableError(EmbedpipeError):
    """matplotlib (the `plot` extra) is not installed."""


def columns_of(rows: Sequence[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for row in rows:
        cols.extend(c for c in row if c not in cols)
    return cols


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".") if value != int(value) or abs(value) < 1e15 else str(value)
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """GitHub-flavoured Markdown; columns that are empty in every row are left out."""
    cols = [c for c in (columns or columns_of(rows)) if any(r.get(c) is not None for r in rows)]
    numeric = {c for c in cols if all(isinstance(r.get(c), (int, float)) or r.get(c) is None for r in rows)}
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---:" if c in numeric else "---" for c in cols) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def write_json(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    cols = columns_of(rows)
    Path(path).write_text(json.dumps([{c: r.get(c) for c in cols} for r in rows], indent=2) + "\n", encoding="utf-8")


def write_csv(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> None:
    cols = columns_of(rows)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols)
        writer.writeheader()
        for r in rows:
            writer.writerow({c: "" if r.get(c) is None else r.get(c) for c in cols})


def label(row: dict[str, Any], knobs: Sequence[str]) -> str:
    parts = [row["index"], row["quant"]] + [f"{k}={row[k]}" for k in knobs if row.get(k) is not None]
    return " ".join(str(p) for p in parts)


def write_plot(
    rows: Sequence[dict[str, Any]],
    path: str | os.PathLike,
    recall: str,
    panels: Sequence[tuple[str, str]],
    knobs: Sequence[str],
    title: str,
) -> None:
    """One scatter panel per (x column, x label): `recall` against it, a colour per dim and a
    marker per index type. Needs matplotlib (pip install 'embedpipe[plot]')."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailableError("--plot needs matplotlib: pip install 'embedpipe[plot]'") from None
    markers = {"brute": "o", "annoy": "^", "hnsw": "s"}
    dims = sorted({r["dim"] for r in rows}, reverse=True)
    colours = {d: f"C{i}" for i, d in enumerate(dims)}
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5), squeeze=False)
    for ax, (x, xlabel) in zip(axes[0], panels):
        for kind, marker in markers.items():
            for d in dims:
                pts = [r for r in rows if r["index"] == kind and r["dim"] == d and r.get(x) is not None]
                if pts:
                    ax.scatter(
                        [r[x] for r in pts],
                        [r[recall] for r in pts],
                        marker=marker,
                        color=colours[d],
                        label=f"{kind} d{d}",
                        alpha=0.8,
                    )
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(recall)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
