"""Leaderboards shown: cells as text, one section per protocol, and the files (md, csv, tex, html, png).

    format_table(table)        numbers -> cells as shown (`66.3`, `66.3 ± 0.4`, `26.7 (n=32/5000)†`, `66.3*`, `-`)
    sections(table)            (protocol, the rows and columns of that protocol) in order
    to_markdown / to_latex / to_html
    write_table(table, stem)   STEM.md .csv .tex .html .png (+ STEM.conflicts.json)
    figure / plot_table        PNG: grouped bars per benchmark, a panel per protocol (perplexity: lines)

Every format shows the same cells: a partial cell carries `(n=scored/of)†` in md, csv, tex and html,
and its bar in the PNG is pale, hatched and labelled with n.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from qwen_eval.errors import UserError
from qwen_eval.reference import split_variant

FORMATS = ("md", "csv", "tex", "html", "png")
MISSING = "-"
CONFLICT_MARK = "*"
PARTIAL_MARK = "†"
PROTOCOL_NOTES = {
    "base": "the model card's k-shot prompts, as Qwen's evaluation scripts write them",
    "instruct": "Qwen2.5-Coder's instruct evaluation: EvalPlus's ChatML prompt in the checkpoint's chat template, "
                "the reply pre-filled with a code fence, greedy",
    "qwen_chat": "Qwen's chat evaluation scripts: the question as a chat turn, 0-shot",
    "chat": "the base prompt as one user turn of the checkpoint's chat template",
    "chat-multiturn": "the base prompt's shots as chat turns",
}


def format_table(table: pd.DataFrame) -> pd.DataFrame:
    """The cells as text: fixed decimals, `± stderr` when asked, `+`/`-` signs on diffs,
    `(n=scored/of)†` on partial cells, `*` on conflicts."""
    decimals = table.attrs.get("decimals", 1)
    kinds = table.attrs.get("row_kinds", {})
    stderrs = table.attrs.get("stderr", {}) if table.attrs.get("show_stderr") else {}
    flags = table.attrs.get("flags", {})
    partial = table.attrs.get("partial", {})
    rows = []
    for label, values in table.iterrows():
        signed = kinds.get(label) == "diff"
        marks = partial.get(label, {})
        rows.append([_cell(value, stderrs.get(label, {}).get(column), decimals, signed,
                           column in flags.get(label, ()), marks.get(column))
                     for column, value in values.items()])
    return pd.DataFrame(rows, index=table.index, columns=table.columns, dtype=object)


def _cell(value: float, stderr: float | None, decimals: int, signed: bool, flagged: bool,
          documents: Sequence[int | None] | None = None) -> str:
    if value is None or math.isnan(value):
        return MISSING
    text = f"{value:+.{decimals}f}" if signed else f"{value:.{decimals}f}"
    if stderr is not None:
        text += f" ± {stderr:.{decimals}f}"
    if documents is not None:
        scored, of = documents
        text += (f" (n={scored}" + (f"/{of}" if of else "") + ")" if scored is not None else "") + PARTIAL_MARK
    return text + (CONFLICT_MARK if flagged else "")


def sections(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """The table cut by protocol: for each protocol (in column order), its rows and the columns
    of that protocol that hold a number in them. A long-context table is one section."""
    row_protocol = table.attrs.get("row_protocol") or {}
    column_protocol = table.attrs.get("column_protocol") or {}
    order = list(dict.fromkeys([column_protocol.get(c, "base") for c in table.columns]
                               + [row_protocol.get(r, "base") for r in table.index]))
    out = []
    for protocol in order:
        rows = [r for r in table.index if row_protocol.get(r, "base") == protocol]
        columns = [c for c in table.columns if column_protocol.get(c, "base") == protocol]
        if not rows or not columns:
            continue
        part = table.loc[rows, columns]
        columns = [c for c in columns if part[c].notna().any()] or columns
        part = table.loc[rows, columns]
        part.attrs = table.attrs
        out.append((protocol, part))
    return out


def footnotes(table: pd.DataFrame, conflicts_file: str | None = None) -> list[str]:
    """What a reader needs to read the table: units, diffs, partial cells, conflicts, protocols
    and where each reference row comes from."""
    notes = []
    if table.attrs.get("kind") == "long_context":
        notes.append("Perplexity on arXiv documents by context length in tokens; lower is better.")
    else:
        notes.append("Headline metric in percent (accuracy or pass@1). Rows: checkpoint · quantization · dtype · "
                     "protocol (measured here), or model · reference · protocol (published).")
    if any(kind == "diff" for kind in table.attrs.get("row_kinds", {}).values()):
        unit = "perplexity" if table.attrs.get("kind") == "long_context" else "percentage points"
        same = " (the same variant of B)" if table.attrs.get("kind") == "long_context" else ""
        notes.append(f"Rows `A - B`: measured minus reference{same}, in {unit}.")
    if table.attrs.get("partial"):
        notes.append(f"{PARTIAL_MARK} a partial run (`limit` set): n = documents scored / documents in the data; "
                     f"not the benchmark's number. A full run of the cell is shown instead wherever one exists.")
    if any(table.attrs.get("flags", {}).values()):
        where = f" (details: {conflicts_file})" if conflicts_file else ""
        notes.append(f"{CONFLICT_MARK} equally complete runs that measured this cell differently; the newest is shown{where}.")
    if table.attrs.get("kind") != "long_context":
        shown = {table.attrs.get("column_protocol", {}).get(c, "base") for c in table.columns}
        for protocol in [p for p in PROTOCOL_NOTES if p in shown] + sorted(shown - set(PROTOCOL_NOTES)):
            notes.append(f"Protocol `{protocol}`: {PROTOCOL_NOTES.get(protocol, 'as the task defines it (docs/protocols.md)')}.")
    for column, version in (table.attrs.get("data_versions") or {}).items():
        if column in table.columns:
            notes.append(f"`{column}`: data release {version}.")
    for ref in table.attrs.get("references", []):
        retrieved = f", transcribed {ref['retrieved']}" if ref.get("retrieved") else ""
        notes.append(f"Reference `{ref['name']}`: {ref['source']}{retrieved}.")
    return notes


def to_markdown(table: pd.DataFrame, conflicts_file: str | None = None) -> str:
    parts = sections(table)
    if not parts:
        return "(no rows)\n\n" + "\n".join(f"- {note}" for note in footnotes(table, conflicts_file)) + "\n"
    headed = len(parts) > 1
    blocks = []
    for protocol, part in parts:
        cells = format_table(part)
        body = cells.to_markdown(disable_numparse=True, colalign=["left"] + ["right"] * len(cells.columns))
        blocks.append((f"Protocol `{protocol}`:\n\n" if headed else "") + body)
    return "\n\n".join(blocks) + "\n\n" + "\n".join(f"- {note}" for note in footnotes(table, conflicts_file)) + "\n"


def to_csv(table: pd.DataFrame, path: Path) -> None:
    """Every row and column in one grid (protocols are in the labels), the cells as shown."""
    format_table(table).to_csv(path, encoding="utf-8")


def to_latex(table: pd.DataFrame) -> str:
    blocks = []
    for protocol, part in sections(table):
        cells = format_table(part).reset_index()  # `model` heads the first column, not a row of its own
        styler = cells.style.hide(axis="index").format(escape="latex").format_index(escape="latex", axis=1)
        latex = styler.to_latex(hrules=True, column_format="l" + "r" * (len(cells.columns) - 1))
        blocks.append(f"% protocol: {protocol}\n" + latex)
    text = "\n".join(blocks)
    return text.replace("±", r"$\pm$").replace(PARTIAL_MARK, r"$^\dagger$").replace("·", r"$\cdot$")


def to_html(table: pd.DataFrame, conflicts_file: str | None = None) -> str:
    blocks = []
    parts = sections(table)
    for protocol, part in parts:
        html = format_table(part).reset_index().to_html(index=False, escape=True, border=0, classes="qwen-eval-table")
        heading = f"<h3>Protocol <code>{_html_escape(protocol)}</code></h3>\n" if len(parts) > 1 else ""
        blocks.append(heading + html)
    notes = "".join(f"<li>{_html_escape(note)}</li>" for note in footnotes(table, conflicts_file))
    return "\n".join(blocks) + f"\n<ul class=\"qwen-eval-notes\">{notes}</ul>\n"


def _html_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_table(table: pd.DataFrame, stem: str | Path, formats: Sequence[str] = ("md", "csv", "tex", "html"),
                report_dir: Path | None = None) -> list[Path]:
    """Write `stem.<format>` for each format (md, csv, tex, html, png) and `stem.conflicts.json`
    when runs conflicted or were superseded, its run files named relative to `report_dir`
    (default: the folder it is written to). Returns the paths written."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise UserError(f"unknown table format {unknown[0]!r}; choose from {', '.join(FORMATS)}")
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    conflicts = table.attrs.get("conflicts", [])
    conflicts_path = Path(f"{stem}.conflicts.json")
    written = []
    for fmt in formats:
        path = Path(f"{stem}.{fmt}")
        if fmt == "md":
            path.write_text(to_markdown(table, conflicts_path.name if conflicts else None), encoding="utf-8")
        elif fmt == "csv":
            to_csv(table, path)
        elif fmt == "tex":
            path.write_text(to_latex(table), encoding="utf-8")
        elif fmt == "html":
            path.write_text(to_html(table, conflicts_path.name if conflicts else None), encoding="utf-8")
        else:
            plot_table(table, path)
        written.append(path)
    if conflicts:
        portable = [_relative_sources(c, report_dir or conflicts_path.parent) for c in conflicts]
        conflicts_path.write_text(json.dumps(portable, indent=2, default=str) + "\n", encoding="utf-8")
        written.append(conflicts_path)
    return written


def _relative_sources(conflict: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """The report with its run files named relative to `base` (the report's folder), so a report
    committed beside its runs reads the same on every checkout."""
    def relative(source: str) -> str:
        path = Path(source)
        return os.path.relpath(path.resolve(), base.resolve()) if path.is_file() else source

    return {**conflict, "shown": relative(conflict["shown"]),
            "runs": [{**run, "source": relative(run["source"])} for run in conflict["runs"]]}


# ---------------------------------------------------------------------------------------------
# The PNG

# Reference rows in light colours (and hatched bars), measured rows in saturated ones: the two
# sets share no colour, so a measured bar is never read as a published one.
REFERENCE_PALETTES = ("Pastel1", "Pastel2", "Set3")
MEASURED_PALETTES = ("tab10", "Dark2")
PARTIAL_ALPHA = 0.35


def row_colours(rows: Sequence[str], kinds: Mapping[str, str]) -> dict[str, tuple[float, ...]]:
    """A colour per row: measured rows from MEASURED_PALETTES, the others from REFERENCE_PALETTES
    (each set is cycled only when its rows outnumber it)."""
    from matplotlib import colormaps

    def palette(names: Sequence[str]) -> list[tuple[float, ...]]:
        colours: list[tuple[float, ...]] = []
        for name in names:
            colours += [tuple(c) for c in colormaps[name].colors if tuple(c) not in colours]
        return colours

    measured_colours = palette(MEASURED_PALETTES)
    reference_colours = [c for c in palette(REFERENCE_PALETTES) if c not in measured_colours]
    out: dict[str, tuple[float, ...]] = {}
    counts = {"measured": 0, "reference": 0}
    for row in rows:
        group = "measured" if kinds.get(row) == "measured" else "reference"
        colours = measured_colours if group == "measured" else reference_colours
        out[row] = colours[counts[group] % len(colours)]
        counts[group] += 1
    return out


def plot_table(table: pd.DataFrame, path: str | Path, rows: Sequence[str] | None = None) -> Path:
    """PNG of measured vs reported (see `figure`)."""
    fig = figure(table, rows)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    return path


def figure(table: pd.DataFrame, rows: Sequence[str] | None = None):
    """A matplotlib Figure: one panel of grouped bars per protocol, or perplexity-by-length lines.

    rows: which rows to draw; default = the measured rows plus the `reference_row` when one was
    chosen, else plus every reference row in the table. Diff rows are never drawn. Every row
    drawn has a legend entry, measured rows first. A partial cell's bar is pale and hatched and
    carries `n=scored/of` above it.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # imported here: matplotlib is slow to load
    from matplotlib.figure import Figure

    kinds = table.attrs.get("row_kinds", {})
    rows = list(rows) if rows is not None else _default_plot_rows(table)
    colours = row_colours(rows, kinds)
    if table.attrs.get("kind") == "long_context":
        fig = Figure(figsize=(max(6.0, 1.1 * len(table.columns) + 0.25 * len(rows)), 4.5), layout="constrained")
        FigureCanvasAgg(fig)
        _lines(fig.add_subplot(), table, rows, colours, kinds)
        return fig
    parts = [(p, part.loc[[r for r in part.index if r in rows]]) for p, part in sections(table)]
    parts = [(p, part) for p, part in parts if len(part.index)] or [("base", table.loc[[r for r in rows if r in table.index]])]
    widths = [max(2.5, 1.1 * len(part.columns) + 0.25 * len(part.index)) for _, part in parts]
    fig = Figure(figsize=(max(6.0, sum(widths)), 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(parts), squeeze=False, width_ratios=widths)[0]
    for ax, (protocol, part) in zip(axes, parts):
        _bars(ax, part, colours, kinds, table.attrs)
        if len(parts) > 1:
            ax.set_title(f"protocol: {protocol}", fontsize="medium")
    return fig


def _bars(ax, part: pd.DataFrame, colours: Mapping[str, tuple], kinds: Mapping[str, str], attrs: Mapping) -> None:
    from matplotlib.patches import Patch

    stderrs = attrs.get("stderr", {})
    partial = attrs.get("partial", {})
    rows = list(part.index)
    width = 0.8 / max(1, len(rows))
    handles = {}
    for i, row in enumerate(rows):
        measured = kinds.get(row) == "measured"
        for j, column in enumerate(part.columns):
            value = part.loc[row, column]
            if math.isnan(value):
                continue
            x = j - 0.4 + width * (i + 0.5)
            documents = partial.get(row, {}).get(column)
            error = stderrs.get(row, {}).get(column) if measured else None
            ax.bar([x], [value], width, yerr=[error] if error else None, color=colours[row], capsize=2,
                   hatch=("xx" if documents else None) if measured else "//", edgecolor="black", linewidth=0.4,
                   alpha=PARTIAL_ALPHA if documents else 1.0, label=row)
            if documents:
                scored, of = documents
                ax.annotate(f"n={scored}" + (f"/{of}" if of else ""), (x, value), xytext=(0, 3),
                            textcoords="offset points", ha="center", fontsize=6, rotation=90)
        handles[row] = Patch(facecolor=colours[row], hatch=None if measured else "//", edgecolor="black",
                             linewidth=0.4, label=row)
    ax.set_xticks(range(len(part.columns)), list(part.columns), rotation=30, ha="right")
    ax.set_ylabel("score (%)")
    order = [r for r in rows if kinds.get(r) == "measured"] + [r for r in rows if kinds.get(r) != "measured"]
    ax.legend(handles=[handles[r] for r in order], fontsize="x-small", loc="upper left")
    ax.grid(axis="y", alpha=0.3)


def _lines(ax, table: pd.DataFrame, rows: Sequence[str], colours: Mapping[str, tuple], kinds: Mapping[str, str]) -> None:
    from matplotlib.lines import Line2D

    lengths = [int(c) for c in table.columns]
    handles = {}
    for row in rows:
        values = table.loc[row]
        points = [(x, v) for x, v in zip(lengths, values) if not math.isnan(v)]
        style = "-o" if kinds.get(row) == "measured" else "--s"
        if points:
            ax.plot(*zip(*points), style, label=row, color=colours[row])
        handles[row] = Line2D([], [], linestyle=style[:-1], marker=style[-1], color=colours[row], label=row)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("perplexity (lower is better)")
    order = [r for r in rows if kinds.get(r) == "measured"] + [r for r in rows if kinds.get(r) != "measured"]
    ax.legend(handles=[handles[r] for r in order], fontsize="small", ncols=2 if len(rows) > 6 else 1)
    ax.grid(axis="y", alpha=0.3)


def _default_plot_rows(table: pd.DataFrame) -> list[str]:
    kinds = table.attrs.get("row_kinds", {})
    measured = [r for r in table.index if kinds.get(r) == "measured"]
    chosen = table.attrs.get("reference_row")
    reference = [r for r in table.index if kinds.get(r) == "reference"]
    if chosen:
        reference = [r for r in reference if split_variant(r)[0] == chosen or r.split(" · ")[0] == chosen]
    return reference + measured
