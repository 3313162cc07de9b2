"""Result files every harness writes: JSON, a markdown table, a PNG chart, and a run manifest.

One place for the output formats, so ``eval.ir``, ``eval.ragas_suite`` and the pipeline produce
reports that look and hash the same way (project standard: JSON + markdown table + PNG plot +
``manifest.json`` with inputs, hashes, versions, timings).
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# the run-record writers live in rag.manifest (finetune/ uses them too); re-exported for the harnesses
from rag.manifest import (
    MANIFEST_PACKAGES,
    atomic_write_text,
    describe_input,
    package_versions,
    run_manifest,
    sha256_file,
    write_json,
)

__all__ = ["MANIFEST_PACKAGES", "bar_chart", "describe_input", "markdown_table", "package_versions", "run_manifest",
           "sha256_file", "write_json", "write_markdown_table", "write_report"]

def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A GitHub markdown table; floats with 3 decimals, missing cells as ``-``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def write_markdown_table(rows: list[dict], columns: list[str], path: str | Path | None, *,
                         title: str | None = None, notes: Sequence[str] = ()) -> str:
    """Write (when ``path`` is given) and return a markdown document: optional title, table, notes."""
    parts = []
    if title:
        parts.append(f"## {title}\n")
    parts.append(markdown_table(rows, columns))
    if notes:
        parts.append("\n" + "\n".join(notes))
    text = "\n".join(parts) + "\n"
    if path is not None:
        atomic_write_text(Path(path), text)
    return text


def bar_chart(data: Mapping[str, Mapping[str, tuple[float, float, float]]], path: str | Path, *,
              metric_name: str, title: str) -> Path:
    """Grouped bars: one group per key of ``data`` (a scope, a set), one bar per model inside it,
    error bars from ``(value, lo, hi)`` confidence intervals. Written as PNG with the Agg backend
    (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(data)
    models = list(dict.fromkeys(m for g in groups for m in data[g]))
    if not groups or not models:
        raise ValueError("bar_chart needs at least one group with one model")
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 + len(groups) * len(models) * 0.55), 4.2))
    for i, model in enumerate(models):
        xs, ys, err_lo, err_hi = [], [], [], []
        for g_i, group in enumerate(groups):
            if model not in data[group]:
                continue
            value, lo, hi = data[group][model]
            xs.append(g_i - 0.4 + width * (i + 0.5))
            ys.append(value)
            err_lo.append(max(0.0, value - lo) if not math.isnan(lo) else 0.0)
            err_hi.append(max(0.0, hi - value) if not math.isnan(hi) else 0.0)
        bars = ax.bar(xs, ys, width * 0.95, yerr=[err_lo, err_hi], capsize=3, label=model)
        for bar, y, up in zip(bars, ys, err_hi):  # the value sits above its error bar, not on it
            ax.annotate(f"{y:.3f}", (bar.get_x() + bar.get_width() / 2, y + up), ha="center", va="bottom",
                        fontsize=7, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups)
    ax.set_ylabel(metric_name)
    ax.set_title(title, fontsize=10)
    top = max((v[2] if not math.isnan(v[2]) else v[0]) for g in groups for v in data[g].values())
    ax.set_ylim(0, max(0.05, min(1.12, top * 1.1 + 0.05)))
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write_report(out: str | Path, stem: str, summary: Mapping[str, Any], rows: list[dict], columns: list[str], *,
                 title: str, chart: Mapping[str, Mapping[str, tuple[float, float, float]]], metric_name: str,
                 chart_title: str, inputs: Mapping[str, Any], parameters: Mapping[str, Any]) -> str:
    """A small harness's four files in ``out``: ``<stem>.json``, ``<stem>.md`` (the table), ``<stem>.png``
    (the bars) and ``manifest.json``; returns the table for the console."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(summary, out / f"{stem}.json")
    table = write_markdown_table(rows, columns, out / f"{stem}.md", title=title)
    bar_chart(chart, out / f"{stem}.png", metric_name=metric_name, title=chart_title)
    write_json(run_manifest(inputs=dict(inputs), parameters={k: str(v) for k, v in parameters.items()}),
               out / "manifest.json")
    return table
