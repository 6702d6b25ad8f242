"""`qwen-eval-table`: leaderboards from run folders, and the README copies of them kept true.
`build_tables` gives every table the runs call for: the benchmark leaderboard (qwen_eval/tables.py)
and, for arxiv_ppl runs, the long-context table (tasks/arxiv_ppl_table.py); `run_table_markdown`
is a run folder's table.md.

    qwen-eval-table results/runs --stderr -o board            # board.md .csv .tex .html .png
    qwen-eval-table results/runs --runs                       # one line per run: provenance, time, memory
    qwen-eval-table --update-readme results/real-0.5b/README.md
    qwen-eval-table --check-readme results/real-0.5b/README.md   # exit 1 when a copy is stale

A README holds generated blocks between `<!-- qwen-eval-table ARGS -->` and
`<!-- /qwen-eval-table -->`; ARGS are this command's own arguments, paths relative to the README's
folder. `--update-readme` rewrites every block (and the files its `-o` names); `--check-readme`
rebuilds them and fails, naming the block, when the committed text differs.
"""

from __future__ import annotations

import argparse
import difflib
import io
import re
import shlex
import sys
import tempfile
from contextlib import redirect_stderr
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from qwen_eval.errors import UserError
from qwen_eval.leaderboard import Results, as_runs, documents_scored
from qwen_eval.reference import load_long_context, load_published, load_reference, split_variant
from qwen_eval.run_files import (Run, checkpoint_of, headline, is_fraction_metric, is_long_context, load_runs,
                                 protocol_of)
from qwen_eval.table_formats import FORMATS, to_markdown, write_table
from qwen_eval.tables import build_table
from qwen_eval.tasks.arxiv_ppl_table import build_long_context_table

BLOCK = re.compile(r"(<!-- qwen-eval-table (?P<args>.*?) -->\n)(?P<body>.*?)(<!-- /qwen-eval-table -->)", re.DOTALL)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qwen-eval-table",
        description="Leaderboard tables from qwen-eval runs beside the published numbers of the same model and protocol.")
    parser.add_argument("paths", nargs="*", metavar="PATH",
                        help="results.json files, run folders, folders of runs, or glob patterns")
    parser.add_argument("-o", "--out", metavar="STEM",
                        help="write STEM.md/.csv/.tex/.html/.png (and STEM-long_context.* for perplexity runs)")
    parser.add_argument("-f", "--formats", default=",".join(FORMATS),
                        help=f"comma-separated formats to write with --out (default: {','.join(FORMATS)})")
    parser.add_argument("--stderr", action="store_true", help="show standard errors: 66.3 ± 0.4")
    parser.add_argument("--reference-row", metavar="MODEL",
                        help="add a diff row (measured minus MODEL) under each measured row of its protocol")
    parser.add_argument("--reference-models", metavar="A,B",
                        help="show these reference rows whatever was measured (default: those of the measured "
                             "models and protocols), e.g. Qwen-7B,Qwen-14B")
    parser.add_argument("--reference", action="append", default=[], metavar="CSV",
                        help="another reference set in the layout of qwen_eval/reference/*.csv (repeatable)")
    parser.add_argument("--no-model-card", action="store_true",
                        help="leave out the published tables shipped with qwen-eval (the model card's, the "
                             "Qwen2.5-Coder report's); only --reference sets")
    parser.add_argument("--label", action="append", default=[], metavar="NAME=LABEL",
                        help="show checkpoint NAME as LABEL (repeatable)")
    parser.add_argument("--runs", action="store_true",
                        help="instead of the leaderboard, one line per run: protocol, dtype, value, documents, "
                             "wall time, tokens/s, peak memory, commit and machine")
    parser.add_argument("--update-readme", metavar="README", action="append", default=[],
                        help="rewrite the generated blocks of README (and the files they name)")
    parser.add_argument("--check-readme", metavar="README", action="append", default=[],
                        help="fail (exit 1) when a generated block of README differs from what its runs give now")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.update_readme or args.check_readme:
            if args.paths:
                raise UserError("--update-readme / --check-readme take the run folders from the README's blocks; "
                                "give no PATH with them")
            for readme in args.update_readme:
                changed = update_readme(Path(readme), write=True)
                print(f"qwen-eval-table: {readme}: {len(changed)} generated block(s) rewritten" if changed
                      else f"qwen-eval-table: {readme}: already what its runs give", file=sys.stderr)
            stale = [problem for readme in args.check_readme for problem in update_readme(Path(readme), write=False)]
            for problem in stale:
                print(f"qwen-eval-table: {problem}", file=sys.stderr)
            return 1 if stale and args.check_readme else 0
        if not args.paths:
            raise UserError("give the runs to tabulate (run folders, results.json files or globs)")
        print(render(args), end="")
        return 0
    except UserError as exc:
        print(f"qwen-eval-table: error: {exc}", file=sys.stderr)
        return 2


def render(args: argparse.Namespace, base: Path | None = None, report_dir: Path | None = None) -> str:
    """The Markdown the command prints for `args` (paths relative to `base`), writing files for -o
    (the conflicts report naming runs relative to `report_dir`, default the folder it is in)."""
    def at(path: str) -> str:
        return str(base / path) if base is not None and not Path(path).is_absolute() else path

    runs = load_runs([at(p) for p in args.paths])
    if args.runs:
        return runs_table(runs, base)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    labels = {}
    for item in args.label:
        name, sep, label = item.partition("=")
        if not sep or not name or not label:
            raise UserError(f"--label {item!r}: expected NAME=LABEL, e.g. --label tiny=Tiny-Qwen")
        labels[name] = label
    extra = [load_reference(at(path)) for path in args.reference]
    references = extra if args.no_model_card else [*load_published(), load_long_context(), *extra]
    reference_models = [m.strip() for m in args.reference_models.split(",")] if args.reference_models else None
    tables = build_tables(runs, references=references, reference_models=reference_models,
                          reference_row=args.reference_row, stderr=args.stderr, labels=labels)
    out = []
    for kind, table in tables.items():
        flagged = [c for c in table.attrs["conflicts"] if c["differs"]]
        for conflict in flagged:
            sources = "; ".join(f"{r['source']} ({r['created']})" for r in conflict["runs"])
            print(f"qwen-eval-table: conflict: {conflict['row']} / {conflict['column']}: runs differ in "
                  f"{', '.join(conflict['differs'])}; showing {conflict['shown']} [{sources}]", file=sys.stderr)
        stem = None
        if args.out:
            stem = at(args.out) if kind == "benchmarks" else f"{at(args.out)}-long_context"
            for path in write_table(table, stem, formats, report_dir=report_dir):
                print(f"qwen-eval-table: wrote {path}", file=sys.stderr)
        conflicts_file = f"{Path(stem).name}.conflicts.json" if stem and table.attrs["conflicts"] else None
        out.append(to_markdown(table, conflicts_file))
    return "\n".join(out)


def build_tables(results: Results, **options: Any) -> dict[str, pd.DataFrame]:
    """Every table the runs call for: "benchmarks" and/or "long_context"."""
    runs = as_runs(results)
    long_runs = [run for run in runs if is_long_context(run.results)]
    tables: dict[str, pd.DataFrame] = {}
    if len(long_runs) < len(runs) or not runs:
        bench_options = dict(options)
        refs = options.get("references")
        bench_refs = [r for r in (refs if refs is not None else load_published()) if r.kind == "benchmarks"]
        known = {m for ref in bench_refs for m in ref.values.index}
        bench_options["reference_models"] = _known(options.get("reference_models"), known)
        if bench_options.get("reference_row") not in known:
            bench_options["reference_row"] = None
        tables["benchmarks"] = build_table(runs, **bench_options)
    if long_runs:
        long_options = dict(options)
        refs = options.get("references")
        long_refs = [r for r in (refs if refs is not None else [load_long_context()]) if r.kind == "long_context"]
        known = {split_variant(label)[0] for ref in long_refs for label in ref.values.index}
        long_options["reference_models"] = _known(options.get("reference_models"), known)
        if long_options.get("reference_row") not in known:
            long_options["reference_row"] = None  # a benchmark-table row (e.g. LLaMA2-7B) the long-context table lacks
        tables["long_context"] = build_long_context_table(long_runs, **long_options)
    return tables


def _known(names: Sequence[str] | None, known: set[str]) -> list[str] | None:
    """The names of `names` one kind of table has (`--reference-models` serves both tables)."""
    if names is None:
        return None
    unknown = [n for n in names if not any(n == k for k in known)]
    return [n for n in names if n not in unknown] if len(unknown) < len(names) else list(names)


def run_table_markdown(results: Mapping[str, Any]) -> str:
    """This run beside the published numbers of the same model and protocol (the model card's,
    when the run is of a model it reports): the columns the run fills, and the rows that report them."""
    parts = [f"# {results['task']} ({results['shots']}-shot) — {checkpoint_of(results)['name']}\n"]
    for table in build_tables([dict(results)], stderr=True).values():
        measured = [row for row, kind in table.attrs.get("row_kinds", {}).items() if kind == "measured"]
        columns = [c for c in table.columns if table.loc[measured, c].notna().any()] if measured else list(table.columns)
        rows = [r for r in table.index if table.loc[r, columns].notna().any()]
        part = table.loc[rows, columns]
        part.attrs = table.attrs
        parts.append(to_markdown(part))
    return "\n\n".join(parts) + "\n"


def runs_table(runs: Sequence[Run], base: Path | None = None) -> str:
    """One Markdown line per run, everything read from its results.json."""
    lines = ["| run | checkpoint | dtype | protocol | metric | value | documents | answers from the cache | wall (s) | "
             "tokens/s | peak RSS | commit | machine | created |", "|" + "---|" * 14]
    for run in runs:
        r = run.results
        metric, value, se = headline(r)
        scale = 100.0 if is_fraction_metric(metric) else 1.0
        shown = f"{value * scale:.1f}" + (f" ± {se * scale:.1f}" if se is not None else "")
        scored, of = documents_scored(r)
        documents = f"{scored:,}" + (f" of {of:,}" if of and of != scored else "") if scored is not None else "-"
        timing = r.get("timing") or {}
        wall = timing.get("wall_seconds")
        speed = timing.get("tokens_per_second")
        rss = timing.get("peak_rss_bytes")
        code = r.get("code") or {}
        commit = code.get("commit") or r.get("git_commit") or "unknown"
        commit = commit[:7] + ("-dirty" if code.get("dirty") else "") if commit != "unknown" else commit
        machine = (r.get("machine") or {}).get("cpu") or "unknown"
        name = run.path.parent.name if run.path is not None else r["task"]
        cells = [name, checkpoint_of(r)["name"], (r.get("model") or {}).get("dtype") or "-", protocol_of(r),
                 metric, shown, documents, _cached(r), f"{wall:,.0f}" if isinstance(wall, (int, float)) else "-",
                 f"{speed:,.0f}" if isinstance(speed, (int, float)) and speed else "-",
                 f"{rss / 2**30:.2f} GiB" if isinstance(rss, (int, float)) else "-", commit, machine,
                 str(r.get("created") or "-")[:10]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cached(results: Mapping[str, Any]) -> str:
    """How many answers a run read from the answer cache (its wall time and tokens/s cover only
    the ones it computed)."""
    requests = results.get("requests") or {}
    total, cached = requests.get("total"), requests.get("cached")
    return f"{cached:,} of {total:,}" if isinstance(total, int) and isinstance(cached, int) else "-"


def update_readme(readme: Path, *, write: bool) -> list[str]:
    """Rebuild each generated block of `readme`; write them (write=True) or list the stale ones."""
    try:
        text = readme.read_text(encoding="utf-8")
    except OSError as exc:
        raise UserError(f"{readme}: cannot read ({exc.strerror})") from None
    blocks = list(BLOCK.finditer(text))
    if not blocks:
        raise UserError(f"{readme}: no generated block (<!-- qwen-eval-table ARGS --> ... <!-- /qwen-eval-table -->)")
    problems, pieces, last = [], [], 0
    for number, block in enumerate(blocks, 1):
        try:
            args = _parser().parse_args(shlex.split(block["args"]))
        except SystemExit:
            raise UserError(f"{readme}: block {number}: bad arguments {block['args']!r}") from None
        with tempfile.TemporaryDirectory(prefix="qwen-eval-table-") as tmp, redirect_stderr(io.StringIO()):
            committed_stem = readme.parent / args.out if args.out else None
            if not write and args.out:  # a check writes beside nothing committed: into tmp, then compares
                args.out = str(Path(tmp) / Path(args.out).name)
            body = render(args, base=readme.parent, report_dir=committed_stem.parent if committed_stem else None)
            if not write and committed_stem is not None:
                problems += _stale_files(Path(args.out), committed_stem, readme, number)
        if body != block["body"]:
            diff = "".join(difflib.unified_diff(block["body"].splitlines(True), body.splitlines(True), "committed",
                                                "from the runs", n=0))
            problems.append(f"{readme}: block {number} ({block['args']}) differs from what its runs give; run "
                            f"`qwen-eval-table --update-readme {readme}`\n{diff}")
        pieces += [text[last:block.start("body")], body]
        last = block.end("body")
    pieces.append(text[last:])
    if write:
        readme.write_text("".join(pieces), encoding="utf-8")
    return problems


def _stale_files(fresh_stem: Path, committed_stem: Path, readme: Path, number: int) -> list[str]:
    """The text files a block's -o writes that differ from the committed ones (the PNG is only
    required to exist: its bytes depend on matplotlib's version and fonts)."""
    problems = []
    for fresh in sorted(fresh_stem.parent.glob(f"{fresh_stem.name}*")):
        committed = committed_stem.parent / fresh.name
        if not committed.is_file():
            problems.append(f"{readme}: block {number}: {committed} is missing; run `qwen-eval-table --update-readme {readme}`")
        elif fresh.suffix != ".png" and fresh.read_bytes() != committed.read_bytes():
            problems.append(f"{readme}: block {number}: {committed} differs from what its runs give; run "
                            f"`qwen-eval-table --update-readme {readme}`")
    return problems


if __name__ == "__main__":
    sys.exit(main())
