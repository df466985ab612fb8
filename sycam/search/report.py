"""What a synthesis run prints: the hall of fame, the Pareto front of a trade-off, the sanity notes.

Pure formatting of the ``result`` dictionary that :class:`sycam.search.synthesize.Synthesis`
returns (and writes as ``summary.json``), so a finished run can be printed again from its file.
"""
from __future__ import annotations

from sycam.search.folds import format_cross_validation
from sycam.search.hall import fmt, fmt_ci
from sycam.search.sanity import CHECKS

#: column heads: |Spearman| with the head re-initialised (MPRT's first step), Spearman with a random other class
LABELS = {"randomisation_top": "rand", "class_sensitivity": "class"}


def _sanity_cells(r: dict) -> str:
    s = r.get("sanity") or {}
    cells = " ".join(f"{fmt(s.get(c), 2):>5}" for c in CHECKS) if s else " ".join(f"{'':>5}" for _ in CHECKS)
    flags = r.get("failed", []) + [f"worse:{m}" for m in r.get("worse", [])]
    return cells + (f"  FAILS {','.join(flags)}" if flags else "")


def format_front(result: dict, metrics: list[str]) -> str:
    """The Pareto front of a trade-off run, on the test split, beside the references."""
    head = f"{'':<12} {'size':>4} " + " ".join(f"{m:>12}" for m in metrics) + "  " + " ".join(f"{LABELS[c]:>5}" for c in CHECKS) + "  program"
    lines = [f"Pareto front — {', '.join(metrics)} (search on train; test values shown)", "", head, "-" * len(head)]
    for r in result["hall_of_fame"] + [None] + result["references"]:
        if r is None:
            lines.append("-" * len(head))
            continue
        lines.append(f"{r['name']:<12} {r['size']:>4} " + " ".join(f"{fmt(r['test'].get(m)):>12}" for m in metrics)
                     + "  " + _sanity_cells(r) + "  " + r["program"].replace("\n", " "))
    lines += _sanity_notes(result)
    lines.append(f"outputs in {result['out']} (pareto.png: every scored program and the front)")
    return "\n".join(lines)


def _sanity_notes(result: dict) -> list[str]:
    lines = []
    if result.get("sanity", "off") != "off":
        th = ", ".join(f"{c} < {v:g}" for c, v in result.get("thresholds", {}).items())
        rejected = result.get("failing", [])
        lines.append(f"sanity checks ({result['sanity']}; pass: {th}; on validation images): "
                     f"{len(rejected)} of the {result.get('pool', 0)} best programs on train fail"
                     + (" and were left out" if result["sanity"] == "require" else " (marked FAILS)"))
        for r in rejected[:3]:
            lines.append(f"  fails: {r['program'].replace(chr(10), ' ')}   " + ", ".join(
                f"{c}={fmt(r['sanity'].get(c), 2) or 'undefined (a constant map)'}" for c in CHECKS))
    if result.get("no_worse_than"):
        lines += _no_worse_lines(result)
    lines += [f"warning: {w}" for w in result.get("warnings", [])]
    return lines


def _no_worse_lines(result: dict) -> list[str]:
    """``--no-worse-than REF``: how many programs it left out, and the best one against REF on test
    under every metric of the suite (paired differences), the headline question answered."""
    ref = result["no_worse_than"]
    worse = [r for r in result.get("rejected", []) if r.get("worse")]
    nw = result.get("no_worse") or {}
    costly = ", ".join(nw.get("costly", []))
    lines = [f"no worse than {ref} on validation ({', '.join(nw.get('checked', []))}): {len(worse)} programs left out"
             + (f"; {nw.get('checked_costly', 0)} of {nw.get('rows', 0)} checked under {costly} (the Pareto front's rows)"
                if costly else "") + "; " + ("a program was found" if result["hall_of_fame"] else "none was found")]
    table = nw.get("test")
    if table:
        best = result["best"]["name"]
        lines.append(f"  {best} vs {ref} on test (paired difference, 95% CI):")
        for metric, v in table.items():
            arrow = "↑" if v.get("higher_is_better", True) else "↓"
            lines.append(f"    {metric + ' ' + arrow:<16} {fmt(v['best'], 3):>7} vs {fmt(v['reference'], 3):>7}  "
                         f"{v['difference']:+.3f} {fmt_ci(v['ci'])}" + ("" if v["better"] else "  (not better)"))
        verdict = ("better on every one" + (", each interval above 0" if nw.get("surely_better_on_all") else
                                            " (not every interval excludes 0)")
                   if nw.get("better_on_all") else "not better on every one")
        lines.append(f"  {best} against {ref} on all {len(table)}: {verdict}")
    return lines


def format_hall(result: dict) -> str:
    """The hall of fame as a text table (printed at the end of a run)."""
    metric = result["metric"]
    lines = [f"Hall of fame — {metric}: the Pareto front of size against validation score",
             "(searched on train, selected on val, reported on test with 95% bootstrap intervals)", ""]
    head = (f"{'':<12} {'size':>4} {'train':>7} {'val':>7} {'test':>7} {'95% CI':>16}  "
            + " ".join(f"{LABELS[c]:>5}" for c in CHECKS) + "  program")
    lines += [head, "-" * len(head)]
    hall = sorted(result["hall_of_fame"], key=lambda r: r["size"])
    for r in hall + [None] + result["references"]:
        if r is None:
            lines.append("-" * len(head))
            continue
        text = r["program"].replace("\n", " ") + (f"   (= {r['simplified']})" if r.get("simplified") else "")
        lines.append(f"{r['name']:<12} {r['size']:>4} {fmt(r['train'].get(metric), 3):>7} {fmt(r['val'].get(metric), 3):>7} "
                     f"{fmt(r['test'].get(metric), 3):>7} {fmt_ci(r.get('test_ci', {}).get(metric)):>16}  {_sanity_cells(r)}  {text}")
    best = result["best"]
    lines += ["", f"best synthesized ({best['name']}, size {best['size']}): test {metric} = {fmt(best['test'][metric], 3)} "
                  f"{fmt_ci(best.get('test_ci', {}).get(metric))}"]
    labels = {"best_reference": "best reference", "best_sanity_passing_reference": "best sanity-passing reference"}
    for key, cmp in result.get("comparisons", {}).items():
        lines.append(f"  vs the {labels[key]} ({cmp['reference']}): paired difference {cmp['difference']:+.3f} "
                     f"{fmt_ci(cmp['ci'])} over {cmp['images']} test images")
    lines += format_cross_validation(result.get("cross_validation"), metric)
    lines += _sanity_notes(result)
    s = result.get("stats", {})
    e = s.get("enumeration", {})
    if e:
        lines.append(f"enumerator: {int(e.get('generated', 0))} generated, {int(e.get('canonical_duplicates', 0))} canonical and "
                     f"{int(e.get('observational_duplicates', 0)) + int(e.get('program_duplicates', 0))} observational duplicates "
                     f"removed, {int(e.get('programs', 0))} programs to score")
    lines.append(f"search: {s.get('completed', 0)} trials completed, {s.get('scored', 0)} programs scored in this process, "
                 f"{s.get('search_seconds', 0)} s; outputs in {result['out']}")
    return "\n".join(lines)
