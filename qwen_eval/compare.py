"""The CI regression gate: `qwen-eval-compare BASELINE CANDIDATE`.

For every task both sides ran: per metric the difference (candidate - baseline), the z statistic
of the two-proportion test built from the runs' standard errors, z = diff / sqrt(se_b^2 + se_c^2),
its two-sided p-value, and the documents whose score flipped (from the two samples.jsonl files).

A metric regressed when it got worse by more than the allowed drop. The allowed drop is the larger
of the tolerances given: `points` (percentage points for accuracy-like metrics; the metric's own
units for perplexities) and `se` (multiples of the combined standard error). With no tolerance
given the default is 2 standard errors. Only the headline metric gates by default (`--gate all`
gates every metric with a standard error: with 57 MMLU subjects, some subject moves by 2 standard
errors by chance alone).

Exit status: 0 nothing regressed, 1 something regressed, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml
from tabulate import tabulate

from qwen_eval.errors import UserError
from qwen_eval.run_files import Run, headline, higher_is_better, is_fraction_metric, load_runs, read_samples

# Provenance that must match for a comparison to mean anything; a difference is a warning.
SAME_MEASUREMENT = ("shots", "protocol", "task_version", "n_samples", "data.fingerprint", "prompt_fingerprint",
                    "task_config.options", "config.task")
DEFAULT_MAX_FLIPS = 10


@dataclass(frozen=True)
class Tolerance:
    """How far a metric may drop: the larger of `points` and `se` combined standard errors."""

    points: float | None = None
    se: float | None = None

    def allowed_drop(self, metric: str, combined_se: float | None) -> float:
        """The allowed drop in the metric's raw units (fractions for accuracy-like metrics)."""
        limits = [0.0]
        if self.points is not None:
            limits.append(self.points / (100.0 if is_fraction_metric(metric) else 1.0))
        if self.se is not None and combined_se is not None:
            limits.append(self.se * combined_se)
        return max(limits)

    def describe(self) -> str:
        parts = ([f"{self.points:g} points"] if self.points is not None else []) + \
                ([f"{self.se:g} se"] if self.se is not None else [])
        return "max(" + ", ".join(parts) + ")" if len(parts) > 1 else (parts[0] if parts else "0")


@dataclass
class Tolerances:
    default: Tolerance = field(default_factory=lambda: Tolerance(se=2.0))
    tasks: dict[str, Tolerance] = field(default_factory=dict)

    def for_task(self, task: str) -> Tolerance:
        return self.tasks.get(task, self.default)


# ---------------------------------------------------------------------------------------------
# Comparing


def compare(baseline: Sequence[Run], candidate: Sequence[Run], tolerances: Tolerances | None = None, *,
            gate: str = "headline") -> dict[str, Any]:
    """The comparison report (JSON-ready). `report["regressed"]` is the verdict."""
    tolerances = tolerances or Tolerances()
    base, cand = _by_task(baseline, "baseline"), _by_task(candidate, "candidate")
    common = [task for task in base if task in cand]
    if not common:
        raise UserError(f"no task in common: baseline has {', '.join(base) or 'none'}, "
                        f"candidate has {', '.join(cand) or 'none'}")
    warnings = [f"tolerance given for task {task!r}, which neither side ran"
                for task in tolerances.tasks if task not in base and task not in cand]
    tasks = [_compare_task(base[t], cand[t], tolerances.for_task(t), gate) for t in common]
    regressions = [{"task": t["task"], **m} for t in tasks for m in t["metrics"] if m["regressed"]]
    return {
        "baseline": [str(run.path) for run in baseline],
        "candidate": [str(run.path) for run in candidate],
        "gate": gate,
        "tolerance": {"default": asdict(tolerances.default),
                      "tasks": {k: asdict(v) for k, v in tolerances.tasks.items()}},
        "regressed": bool(regressions),
        "regressions": regressions,
        "only_in_baseline": [t for t in base if t not in cand],
        "only_in_candidate": [t for t in cand if t not in base],
        "warnings": warnings,
        "tasks": tasks,
    }


def _by_task(runs: Sequence[Run], side: str) -> dict[str, Run]:
    by_task: dict[str, Run] = {}
    for run in runs:
        task = run.results["task"]
        if task in by_task:
            raise UserError(f"{side} holds two runs of task {task!r} ({by_task[task].path} and {run.path}); "
                            f"pass the one results.json to compare")
        by_task[task] = run
    return by_task


def _compare_task(base: Run, cand: Run, tolerance: Tolerance, gate: str) -> dict[str, Any]:
    b, c = base.results, cand.results
    head, _, _ = headline(b)
    warnings = [f"{name} differs: baseline {_field(b, name)!r}, candidate {_field(c, name)!r}"
                for name in SAME_MEASUREMENT if _field(b, name) != _field(c, name)]
    metrics = [_compare_metric(name, b, c, tolerance, gated=(name == head or gate == "all"))
               for name in _metrics_to_compare(b, c, head)]
    return {"task": b["task"], "shots": c.get("shots"), "headline": head, "tolerance": asdict(tolerance),
            "warnings": warnings, "metrics": metrics, "flips": flipped_documents(base, cand)}


def _metrics_to_compare(b: Mapping[str, Any], c: Mapping[str, Any], head: str) -> list[str]:
    """The headline, then every metric both runs report with a standard error."""
    bm, cm = b["metrics"], c["metrics"]
    with_se = sorted(name for name in bm if not name.endswith("_stderr") and name != head and name in cm
                     and f"{name}_stderr" in bm and f"{name}_stderr" in cm
                     and _is_number(bm[name]) and _is_number(cm[name]))
    if head not in cm and (c.get("headline") or {}).get("metric") != head:
        raise UserError(f"task {b['task']}: the candidate has no {head!r} metric (the baseline's headline)")
    return [head, *with_se]


def _compare_metric(name: str, b: Mapping[str, Any], c: Mapping[str, Any], tolerance: Tolerance,
                    gated: bool) -> dict[str, Any]:
    vb, seb = _value(b, name)
    vc, sec = _value(c, name)
    diff = vc - vb
    combined = math.sqrt(seb ** 2 + sec ** 2) if seb is not None and sec is not None else None
    z = diff / combined if combined and math.isfinite(diff) else None
    p = math.erfc(abs(z) / math.sqrt(2)) if z is not None else None
    better_up = higher_is_better(name)
    drop = -diff if better_up else diff
    allowed = tolerance.allowed_drop(name, combined)
    # A value that is not a number (every document failed, an empty group) cannot pass the check.
    beyond = not math.isfinite(diff) or drop > allowed + 1e-12
    return {"metric": name, "baseline": _finite(vb), "baseline_stderr": seb, "candidate": _finite(vc),
            "candidate_stderr": sec, "diff": _finite(diff), "combined_stderr": combined, "z": z, "p_value": p, "higher_is_better": better_up,
            "allowed_drop": allowed, "gated": gated, "beyond_tolerance": beyond, "regressed": gated and beyond}


def _value(results: Mapping[str, Any], name: str) -> tuple[float, float | None]:
    metrics = results["metrics"]
    head = results.get("headline") or {}
    if head.get("metric") == name:
        _, value, se = headline(results)
        return value, se
    se = metrics.get(f"{name}_stderr")
    return float(metrics[name]), float(se) if _is_number(se) else None


def flipped_documents(base: Run, cand: Run) -> dict[str, Any]:
    """Documents whose score changed between the two runs (from samples.jsonl).

    lost: the score went down (1 -> 0 for accuracy); gained: it went up. For 0/1 scores the exact
    McNemar test on the flips is the paired counterpart of the z-test above.
    """
    missing = [str(run.samples_path) for run in (base, cand) if run.samples_path is None or not run.samples_path.is_file()]
    if missing:
        return {"available": False, "reason": f"no samples.jsonl at {', '.join(missing)}"}
    before, after = read_samples(base.samples_path), read_samples(cand.samples_path)
    lost, gained = [], []
    for doc_id, old in before.items():
        new = after.get(doc_id)
        if new is None or new == old:
            continue
        (lost if new < old else gained).append({"doc_id": doc_id, "baseline": old, "candidate": new})
    binary = all(s in (0.0, 1.0) for s in [*before.values(), *after.values()])
    return {"available": True, "lost": lost, "gained": gained,
            "only_in_baseline": sum(1 for d in before if d not in after),
            "only_in_candidate": sum(1 for d in after if d not in before),
            "mcnemar_p": mcnemar_exact(len(lost), len(gained)) if binary else None}


def mcnemar_exact(lost: int, gained: int) -> float:
    """Two-sided exact McNemar p-value: the flips split as a fair coin would split them."""
    n = lost + gained
    if n == 0:
        return 1.0
    k = min(lost, gained)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def _field(results: Mapping[str, Any], dotted: str) -> Any:
    value: Any = results
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None  # JSON has no NaN


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ---------------------------------------------------------------------------------------------
# Tolerances from the command line and from a file


def parse_task_tolerance(text: str) -> tuple[str, Tolerance]:
    """`mmlu=1.5` (points), `mmlu=2se` (standard errors) or `mmlu=1.5,2se` (the larger of both)."""
    task, sep, spec = text.partition("=")
    points = se = None
    try:
        if not sep or not task or not spec:
            raise ValueError
        for part in spec.split(","):
            part = part.strip().lower()
            if part.endswith("se"):
                se = float(part[:-2])
            else:
                points = float(part)
    except ValueError:
        raise UserError(f"--task-tolerance {text!r}: expected TASK=POINTS, TASK=Kse or TASK=POINTS,Kse "
                        "(e.g. mmlu=1.5 or humaneval=3se)") from None
    return task.strip(), Tolerance(points=points, se=se)


def load_tolerances(path: str | Path) -> Tolerances:
    """A YAML or JSON file: {default: {points: 1.0, se: 2.0}, tasks: {mmlu: {points: 1.5}}}."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise UserError(f"tolerance file {path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise UserError(f"tolerance file {path}: not valid YAML/JSON ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict) or set(data) - {"default", "tasks"}:
        raise UserError(f"tolerance file {path}: expected the keys 'default' and/or 'tasks'")
    default = _tolerance_from(data.get("default"), f"{path}: default") if "default" in data else Tolerance(se=2.0)
    tasks = data.get("tasks") or {}
    if not isinstance(tasks, dict):
        raise UserError(f"tolerance file {path}: 'tasks' must map task names to {{points, se}}")
    return Tolerances(default, {str(t): _tolerance_from(v, f"{path}: tasks.{t}") for t, v in tasks.items()})


def _tolerance_from(value: Any, where: str) -> Tolerance:
    if not isinstance(value, dict) or not value or set(value) - {"points", "se"} \
            or not all(_is_number(v) for v in value.values()):
        raise UserError(f"tolerance file {where}: expected {{points: NUMBER, se: NUMBER}} (either or both)")
    return Tolerance(points=value.get("points"), se=value.get("se"))


# ---------------------------------------------------------------------------------------------
# Text output


def format_report(report: Mapping[str, Any], max_flips: int = DEFAULT_MAX_FLIPS) -> str:
    lines = [f"baseline:  {', '.join(report['baseline'])}", f"candidate: {', '.join(report['candidate'])}",
             "values in percent for accuracy-like metrics (diff and allowed drop in points), perplexity as is"]
    for task in report["tasks"]:
        tol = Tolerance(**task["tolerance"])
        lines += ["", f"## {task['task']} ({task['shots']}-shot) — allowed drop: {tol.describe()}"]
        lines += [f"warning: {w}" for w in task["warnings"]]
        shown = [m for m in task["metrics"] if _worth_a_line(m)]
        rows = [_metric_row(m) for m in shown]
        lines.append(tabulate(rows, headers=["metric", "baseline", "candidate", "diff", "z", "p", "allowed drop", "status"],
                              disable_numparse=True, colalign=("left",) + ("right",) * 7))
        if len(shown) < len(task["metrics"]):
            lines.append(f"(+{len(task['metrics']) - len(shown)} per-subject metrics within tolerance; --json lists all)")
        lines += _flip_lines(task["flips"], max_flips)
    if report["only_in_baseline"]:
        lines.append(f"\nonly in baseline (not compared): {', '.join(report['only_in_baseline'])}")
    if report["only_in_candidate"]:
        lines.append(f"only in candidate (not compared): {', '.join(report['only_in_candidate'])}")
    lines += [f"warning: {w}" for w in report["warnings"]]
    lines.append("")
    if report["regressed"]:
        worst = "; ".join(f"{r['task']} {r['metric']} {_show(r['diff'], r['metric'], signed=True)}{_unit(r['metric'])} "
                          f"(allowed drop {_show(r['allowed_drop'], r['metric'])}, p = {_p(r['p_value'])})"
                          for r in report["regressions"])
        lines.append(f"REGRESSED: {worst}")
    else:
        lines.append(f"OK: no {'metric' if report['gate'] == 'all' else 'headline metric'} dropped beyond its tolerance")
    return "\n".join(lines)


def _worth_a_line(m: Mapping[str, Any]) -> bool:
    """The text shows the headline, categories (`stem/acc`) and anything beyond tolerance; finer
    groups (`subject/abstract_algebra/acc`) only when they dropped too far."""
    return m["gated"] or m["beyond_tolerance"] or m["metric"].count("/") <= 1


def _metric_row(m: Mapping[str, Any]) -> list[str]:
    name = m["metric"]
    status = "REGRESSED" if m["regressed"] else "dropped (not gated)" if m["beyond_tolerance"] else "ok"
    return [name, _show(m["baseline"], name, m["baseline_stderr"]), _show(m["candidate"], name, m["candidate_stderr"]),
            _show(m["diff"], name, signed=True), "-" if m["z"] is None else f"{m['z']:+.2f}",
            _p(m["p_value"]), _show(m["allowed_drop"], name), status]


def _show(value: float | None, metric: str, stderr: float | None = None, signed: bool = False) -> str:
    """Percent (2 decimals) for accuracy-like metrics, the raw value otherwise."""
    if value is None:
        return "nan"
    scale = 100.0 if is_fraction_metric(metric) else 1.0
    text = f"{value * scale:+.2f}" if signed else f"{value * scale:.2f}"
    return text + (f" ± {stderr * scale:.2f}" if stderr is not None else "")


def _unit(metric: str) -> str:
    return " points" if is_fraction_metric(metric) else ""


def _p(p_value: float | None) -> str:
    return "-" if p_value is None else f"{p_value:.3g}"


def _flip_lines(flips: Mapping[str, Any], max_flips: int) -> list[str]:
    if not flips["available"]:
        return [f"flipped documents: unavailable ({flips['reason']})"]
    lost, gained = flips["lost"], flips["gained"]
    mcnemar = f"; exact McNemar p = {flips['mcnemar_p']:.3g}" if flips["mcnemar_p"] is not None else ""
    lines = [f"flipped documents: {len(lost)} lost, {len(gained)} gained{mcnemar}"]
    for label, docs in (("lost", lost), ("gained", gained)):
        if docs:
            shown = ", ".join(f"{d['doc_id']} ({d['baseline']:g}->{d['candidate']:g})" for d in docs[:max_flips])
            more = f" ... (+{len(docs) - max_flips} more; --json lists all)" if len(docs) > max_flips else ""
            lines.append(f"  {label}: {shown}{more}")
    if flips["only_in_baseline"] or flips["only_in_candidate"]:
        lines.append(f"  documents in one run only: baseline {flips['only_in_baseline']}, "
                     f"candidate {flips['only_in_candidate']}")
    return lines


# ---------------------------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qwen-eval-compare",
        description="Compare a candidate run with a baseline; exit 1 when a score dropped beyond the tolerance "
                    "(0 = no regression, 2 = bad input).")
    parser.add_argument("baseline", metavar="BASELINE", help="results.json or run folder (a suite folder compares every task)")
    parser.add_argument("candidate", metavar="CANDIDATE", help="results.json or run folder")
    parser.add_argument("--tolerance-points", type=float, metavar="P",
                        help="allowed drop in percentage points (perplexity: in its own units)")
    parser.add_argument("--tolerance-se", type=float, metavar="K",
                        help="allowed drop in combined standard errors (default 2 when no tolerance is given)")
    parser.add_argument("--task-tolerance", action="append", default=[], metavar="TASK=TOL",
                        help="per-task tolerance replacing the default: mmlu=1.5 (points), humaneval=3se, mmlu=1.5,2se")
    parser.add_argument("--tolerances", metavar="FILE",
                        help="YAML/JSON file {default: {points, se}, tasks: {TASK: {points, se}}}; flags override it")
    parser.add_argument("--gate", choices=("headline", "all"), default="headline",
                        help="which metrics can fail the check (default: the headline metric of each task)")
    parser.add_argument("--json", action="store_true", help="print the full report as JSON instead of text")
    parser.add_argument("--report", metavar="FILE", help="also write the JSON report to FILE")
    parser.add_argument("--max-flips", type=int, default=DEFAULT_MAX_FLIPS, metavar="N",
                        help=f"flipped documents listed per task in the text output (default {DEFAULT_MAX_FLIPS})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        tolerances = _tolerances_from_args(args)
        report = compare(load_runs([args.baseline]), load_runs([args.candidate]), tolerances, gate=args.gate)
    except UserError as exc:
        print(f"qwen-eval-compare: error: {exc}", file=sys.stderr)
        return 2
    payload = json.dumps(report, indent=2)
    if args.report:
        Path(args.report).write_text(payload + "\n", encoding="utf-8")
    print(payload if args.json else format_report(report, args.max_flips))
    return 1 if report["regressed"] else 0


def _tolerances_from_args(args: argparse.Namespace) -> Tolerances:
    tolerances = load_tolerances(args.tolerances) if args.tolerances else Tolerances()
    if args.tolerance_points is not None or args.tolerance_se is not None:
        tolerances.default = Tolerance(points=args.tolerance_points, se=args.tolerance_se)
    for item in args.task_tolerance:
        task, tolerance = parse_task_tolerance(item)
        tolerances.tasks[task] = tolerance
    for name, value in (("--tolerance-points", args.tolerance_points), ("--tolerance-se", args.tolerance_se)):
        if value is not None and value < 0:
            raise UserError(f"{name} {value:g}: a tolerance cannot be negative")
    return tolerances


if __name__ == "__main__":
    sys.exit(main())
