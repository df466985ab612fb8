"""Render the results of a run (``report.json``'s content) as ``report.md``."""
from __future__ import annotations

from typing import Any, Sequence


def _s(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "–"
    if x != x:  # NaN
        return "nan"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.{digits}f}"


def _t(summary: dict[str, Any] | None) -> tuple[str, str]:
    """(median, "min–max") of a timing summary."""
    if not summary:
        return "–", "–"
    return _s(summary["median"]), f"{_s(summary['min'])}–{_s(summary['max'])}"


def _ratio(r: dict[str, Any] | None) -> str:
    if not r:
        return "–"
    return f"**{r['ratio']:.2f}×** ({r['paired_min']:.2f}–{r['paired_max']:.2f}; minima {r.get('min_ratio', float('nan')):.2f})"


def _table(head: Sequence[str], rows: list[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out + [""]


def _passes(p: dict[str, int] | None) -> str:
    if not p:
        return "–"
    return f"{p['forwards']} / {p['images']} / {p['backwards']} / {p['param_grads']}"


def _env(meta: dict[str, Any]) -> list[str]:
    env = meta["environment"]
    la = meta["loadavg"]
    lines = [
        f"- **Run**: `{meta['command']}`, plan `{meta['plan']['name']}`, started {meta['started']}, "
        f"{meta.get('total_seconds', 0):.0f} s in all ("
        + ", ".join(f"{k} {v:.0f} s" for k, v in meta.get("seconds", {}).items()) + ").",
        f"- **Machine**: {env['cpu']}, {env['cpus_visible']} CPU(s) visible, {env['mem_total_gb']} GiB RAM, "
        f"{env['platform']}, Python {env['python']}; device `{env['device']}`"
        + (f" ({env['gpu']})" if env.get("gpu") else "")
        + f"; torch threads {env['torch_threads']} (interop {env['torch_interop_threads']})"
        + ("; glibc's allocator tuned as the sycam commands tune it (sycam/_malloc.py)" if env.get("allocator_tuned") else "")
        + ".",
        "- **Load average** (1/5/15 min): " + "; ".join(f"{k}: {'/'.join(_s(v, 2) for v in vals)}" for k, vals in la.items())
        + ". The machine is shared: absolute times are indicative only, ratios are the result.",
        "- **Versions**: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()) + ".",
    ]
    g = env.get("git")
    if g:
        changes = g.get("sycam_changes") or []
        lines.append(f"- **Code**: commit `{g['commit']}`" + (f", with uncommitted changes to {', '.join(changes)}" if changes
                                                              else ", sycam/ clean") + ".")
    return lines


def _targets(rows: list[dict[str, Any]]) -> list[str]:
    def word(v: bool | None) -> str:
        return "–" if v is None else ("met" if v else "missed")

    body = []
    for r in rows:
        margin = "–" if r["margin"] is None else f"{r['margin']:.2f}×"
        body.append([r["description"], r["where"], _s(r["value"]), f"{r['direction']} {_s(r['threshold'])}",
                     f"**{word(r['met'])}**", margin, _s(r.get("minima")), word(r.get("met_minima"))])
    return _table(["target", "where", "measured (ratio of medians)", "threshold", "verdict",
                   "margin (>1 = better than target)", "ratio of minima", "verdict on minima"], body)


def _explain(results: list[dict[str, Any]], title: str) -> list[str]:
    out = [title, ""]
    for r in results:
        out.append(f"**{r['model']}** `{r['layer']}`, batch {r['batch']}, {r['size']}×{r['size']}, weights {r['weights']}, "
                   f"inputs {r['inputs']}, {r['rounds']} round(s)" + (f", {r['channels']} channels" if r.get("channels") else "")
                   + ".")
        out.append("")
        rows = []
        times = r["times"]
        if "floor" in times:
            med, rng = _t(times["floor"])
            rows.append(["floor (forward + autograd.grad)", "–", med, rng, _s(r["batch"] / times["floor"]["median"], 2), "–", "–",
                         _passes(r["passes"].get("floor"))])
        for key, summary in times.items():
            if key == "floor":
                continue
            method, impl = key.split("/", 1)
            med, rng = _t(summary)
            if impl == "sycam":
                vs = ("sycam/floor " + _ratio(r["overhead"].get(method))) if method in r["overhead"] else "–"
                agree = "–"
            else:
                vs = _ratio(r["speedup"].get(method, {}).get(impl))
                agree = _s(r["agreement"].get(key), 3)
            rows.append([method, impl, med, rng, _s(r["batch"] / summary["median"], 2), vs, agree, _passes(r["passes"].get(key))])
        out += _table(["method", "implementation", "median s", "min–max s", "images/s",
                       "peer/sycam time (paired range)", "agreement r", "fwd calls / images / bwd / param grads"], rows)
        for key, vs in r.get("variant_speedup", {}).items():
            out.append(f"Variant `{key.split('/', 1)[1]}` (sycam with its masked forwards on the model itself "
                       "(SYCAM_FAST_FORWARD=0), not on the folded channels-last copy): " + "; ".join(f"{impl} / it: {_ratio(v)}" for impl, v in vs.items()) + ".")
            out.append("")
        cost = r.get("forward_cost")
        if cost:
            batches = sorted({v["batch"] for v in cost.values()})
            rows = [[fmt] + [f"{cost[f'{fmt}/{b}']['ms_per_image']:.1f}" for b in batches] for fmt in ("nchw", "channels_last")]
            out.append(f"No-grad forward cost of {r['model']} per image (ms, median of interleaved rounds) by batch size "
                       "(= Score-CAM chunk size):")
            out.append("")
            out += _table(["input format"] + [f"batch {b}" for b in batches], rows)
    return out


def _multilayer(m: dict[str, Any]) -> list[str]:
    out = ["## 2. Multi-layer: Winsor-CAM over every conv layer", "",
           f"**{m['model']}**, {m['layers']} conv layers, batch {m['batch']}, {m['size']}×{m['size']}, weights {m['weights']}, "
           f"{m['rounds']} round(s). Peak memory: {m['memory_method']} ('before' = RSS with imports, model and inputs "
           "loaded; peak = high-water mark during the call; delta = what the call added at its peak).", ""]
    rows = []
    for key, summary in m["times"].items():
        med, rng = _t(summary)
        p = m["passes"].get(key, {})
        mem = m["memory"].get(key, {})
        rows.append([key, med, rng, p.get("forwards", "–"), p.get("images", "–"), p.get("backwards", "–"),
                     p.get("reached_first_conv", "–"), p.get("param_grads", "–"), _s(mem.get("rss_before_mb"), 0),
                     _s(mem.get("rss_peak_mb"), 0), _s(mem.get("rss_delta_mb"), 0)])
    out += _table(["contender", "median s", "min–max s", "forward calls", "images forwarded", "backward passes",
                   "backward reached conv1", "param .grad computed", "RSS before MiB", "peak RSS MiB", "delta MiB"], rows)
    out.append(f"pytorch-grad-cam / sycam time: {_ratio(m['speedup']['pytorch-grad-cam'])}; sycam / floor: {_ratio(m['overhead'])}.")
    out.append("")
    return out


def _search(s: dict[str, Any]) -> list[str]:
    out = ["## 3. Search throughput", "",
           f"{s['model']} (weights {s['weights']}), {s['images']} images of {s['data']} at {s['size']}×{s['size']}, "
           f"metric `{s['metric']}`. Candidates: programs of size 5–12 drawn from the search space "
           "(`sycam.search.space.Sampler`, uniform per choice), distinct by text; timed: those valid on the data. "
           "Cached = `Workbench.score` on captures taken once; naive = capture again (forward + `autograd.grad`) "
           "for every candidate, images already decoded.", ""]
    rows = []
    for kind in ("single", "multi"):
        if kind not in s:
            continue
        r = s[kind]
        cps = r["candidates_per_second"]
        nv = r["naive_seconds_per_candidate"]
        rows.append([f"{kind}-layer ({r['selection']})", r["layers_captured"], _s(r["capture_seconds"]),
                     f"{r['valid']}/{r['candidates']}", f"{r['sizes'][0]}–{r['sizes'][1]}",
                     f"**{_s(cps['median'])}** ({_s(cps['min'])}–{_s(cps['max'])})",
                     _s(r["cached_seconds_per_candidate"]["median"] * 1e3, 1),
                     _s(nv["median"]) if nv else "–", f"**{_s(r['speedup_vs_naive'])}×**" if r["speedup_vs_naive"] else "–",
                     _s(r["break_even_candidates"], 1) if r["break_even_candidates"] is not None else "–"])
    out += _table(["candidates", "layers captured", "capture s", "valid/drawn", "sizes", "candidates/s (min–max)",
                   "ms per candidate", "naive s per candidate", "cached vs naive", "break-even (candidates)"], rows)
    raced = [(kind, s[kind]) for kind in ("single", "multi") if kind in s and "raced" in s[kind]]
    if raced:
        out += ["Through the search's own scorer (`sycam.search.loop.Racer.race_list`: racing on the rungs below, "
                "observational twins take their twin's values), same programs and captures:", ""]
        out += _table(["candidates", "rungs", "scored per rung", "twins", "candidates/s (min–max)", "vs cached loop",
                       "vs naive loop"],
                      [[f"{kind}-layer", ", ".join(r["raced"]["rungs"]), " / ".join(map(str, r["raced"]["scored_per_rung"])),
                        r["raced"]["observational_twins"],
                        f"**{_s(r['raced']['candidates_per_second']['median'])}** ({_s(r['raced']['candidates_per_second']['min'])}–"
                        f"{_s(r['raced']['candidates_per_second']['max'])})",
                        f"{_s(r['raced_vs_cached'])}×", f"{_s(r['raced_vs_naive'])}×" if r.get("raced_vs_naive") else "–"]
                       for kind, r in raced])
    for kind in ("single", "multi"):
        if kind in s:
            out.append(f"Examples ({kind}): " + "; ".join(f"`{e}`" for e in s[kind]["examples"]))
            out.append("")
    o = s.get("trial_overhead")
    if o:
        out += [f"Optuna's own cost per trial (`experiments/timing/search.py: trial_overhead`): {o['trials']} trials of "
                "sycam's objective and define-by-run sampler over the default space, TPE with the two sanity "
                "constraints, a scorer that costs nothing (values from each program's hash), by where the study lives:", ""]
        names = {"sqlite": "SQLite (Optuna's RDB storage)", "mirrored": "mirrored: memory, written through to SQLite "
                 "(`sycam.search.mirror`, the search)", "memory": "memory only (nothing durable)"}
        out += _table(["study", "ms per trial", "ms per trial, last quarter"],
                      [[names[k], _s(o[k]["seconds_per_trial"] * 1e3, 1), _s(o[k]["last_quarter_seconds_per_trial"] * 1e3, 1)]
                       for k in ("sqlite", "mirrored", "memory")])
    return out


def _scale(rows_in: list[dict[str, Any]]) -> list[str]:
    out = ["## 4. Scale: streaming a program and a metric over growing sets", "",
           "Winsor-CAM (every conv layer) + Otsu IoU on the built-in benchmark (train split), "
           "`Workbench.iter_batches()` with the metric per batch (`stream`), or `Workbench.load()` then scoring "
           "(`load`, the contrast that keeps every capture). One fresh process per row; RSS trace = current RSS "
           "(MiB) after n images.", ""]
    rows = []
    for r in rows_in:
        trace = ", ".join(f"{n}: {rss:.0f}" for n, rss in r.get("rss_trace", []))
        rows.append([r["n"], r["batch"], r["mode"], _s(r["seconds"]), _s(r["images"] / r["seconds"], 1),
                     _s(r["rss_before_mb"], 0), _s(r["rss_peak_mb"], 0), _s(r["rss_delta_mb"], 0), r.get("weights", ""), trace])
    out += _table(["images", "batch", "mode", "seconds", "images/s", "RSS before MiB", "peak RSS MiB", "delta MiB",
                   "weights", "RSS trace"], rows)
    return out


def _ops(p: dict[str, Any], title: str) -> list[str]:
    rows = [[f"`{r['op']}`", r["self_ms"], r["pct"], r["calls"]] for r in p["top"]]
    return [f"{title} (total {p['total_ms']:.0f} ms of {p['clock']} self time)", ""] + _table(
        ["op", "self ms", "%", "calls"], rows)


def _py(rows: list[dict[str, Any]], title: str, key: str = "function") -> list[str]:
    body = [[f"`{r[key]}`", r["seconds"], r["pct"]] + ([r["calls"]] if "calls" in r else []) for r in rows]
    head = [key, "seconds", "% of profiled time"] + (["calls"] if rows and "calls" in rows[0] else [])
    return [title, ""] + _table(head, body)


def _profile(p: dict[str, Any]) -> list[str]:
    out = ["## 5. Profiles", ""]
    e = p["explain"]
    out += [f"### Grad-CAM explain: {e['model']} `{e['layer']}`, batch {e['batch']}, {e['size']}×{e['size']}", ""]
    out += _ops(e["ops_sycam"], "sycam Explainer, torch.profiler")
    out += _ops(e["ops_floor"], "floor, torch.profiler")
    out += _py(e["python"]["cumulative"][:10], f"sycam Explainer, cProfile: sycam functions by cumulative time "
                                                f"(profiled total {e['python']['total_s']:.2f} s)")
    s = p["search"]
    out += [f"### Search scoring: {s['candidates']} one-layer candidates × {s['images']} images, Otsu IoU", ""]
    out += _ops(s["ops"], "torch.profiler")
    out += _py(s["python"]["by_file"], f"cProfile, time charged per sycam file (own time + torch calls made from it; "
                                       f"profiled total {s['python']['total_s']:.2f} s)", key="file")
    out += _py(s["python"]["by_function"], "cProfile, time charged per sycam function")
    a = p.get("autograd_saved")
    if a:
        out += ["### Autograd memory of a Grad-CAM capture", "",
                f"Tensors saved for the backward pass during one sycam Grad-CAM call ({e['model']} `{e['layer']}`, batch "
                f"{a['batch']}; `torch.autograd.graph.saved_tensors_hooks`, deterministic): **{a['as_is_mib']:.1f} MiB** as "
                f"sycam runs it vs **{a['params_frozen_mib']:.1f} MiB** with `requires_grad` switched off on every "
                "parameter by the caller as well (capture freezes them itself since this session's change, so the two "
                "agree; before it, autograd recorded the whole forward: 1409 MiB).", ""]
    pr = p.get("prototypes")
    if pr:
        k = pr["iou_kernel"]
        out += ["### Prototypes of the suggested search-scoring changes (experiments/timing/prototypes.py)", "",
                f"Otsu IoU on one cached batch ({k['images']} maps of {k['size'][0]}×{k['size'][1]}); the joint-histogram "
                f"kernel's values differ from sycam's by at most {k['max_abs_diff']:.2g}.", ""]
        rows = [[name, *(_t(t)), ] for name, t in k["times"].items()]
        out += _table(["kernel", "median s", "min–max s"], rows)
        out.append(f"sycam (validated) / joint-histogram time: {_ratio(k['speedup'])}.")
        out.append("")
        r = pr["reduced_resolution"]
        out.append(f"Scoring {r['candidates']} candidates on every cached batch at reduced resolution (raw map → "
                   "bilinear to side² → norm → joint-histogram IoU, masks resampled nearest) vs sycam at full resolution:")
        out.append("")
        rows = [[f"{r['full']['side']} (sycam, exact)", _s(r["full"]["seconds_per_candidate"] * 1e3, 1),
                 _s(r["full"]["candidates_per_second"]), "1", "0", "–"]]
        for side, v in r["sides"].items():
            rows.append([side, _s(v["seconds_per_candidate"] * 1e3, 1), _s(v["candidates_per_second"]),
                         _s(v["spearman_vs_full"]), _s(v["max_abs_diff_mean_iou"], 4), v["best_full_rank_of_best_reduced"]])
        out += _table(["side", "ms per candidate", "candidates/s", "Spearman vs full", "max abs Δ of mean IoU",
                       "full-res rank of the reduced-res winner"], rows)
    return out


def render(results: dict[str, Any], notes: str = "") -> str:
    """The Markdown report of one run; ``notes`` (hand-written analysis) is appended verbatim."""
    meta = results["meta"]
    out = ["# sycam performance benchmark", "",
           "Generated by `python -m experiments.timing.run` (see README.md). Every time is the median of interleaved "
           "rounds (min–max beside it); every comparison is a ratio of times taken in the same run "
           "(in brackets: the range of the per-round paired ratios, and the ratio of the minima, which estimates the "
           "ratio on an unloaded machine). Ratios > 1 in 'peer/sycam' mean sycam is faster.", ""]
    out += _env(meta) + [""]
    if results.get("targets"):
        out += ["## Targets", "", "The verdict is on the ratio of medians; the ratio of the minima (each contender's "
                "fastest round; load only ever adds time) is the estimate for an unloaded machine, and where the two "
                "verdicts differ the result is within the machine's noise.", ""] + _targets(results["targets"])
    if results.get("explain"):
        out += _explain(results["explain"], "## 1. Explain throughput (gradient methods)")
        out.append("Columns: *agreement r* = mean Pearson correlation of the peer's maps with sycam's (1 = same method); "
                   "*fwd calls / images / bwd / param grads* = counted with hooks on the first call.")
        out.append("")
    if results.get("scorecam"):
        out += _explain(results["scorecam"], "## 1b. Score-CAM (batch 1)")
    if results.get("multilayer"):
        out += _multilayer(results["multilayer"])
    if results.get("search"):
        out += _search(results["search"])
    if results.get("scale"):
        out += _scale(results["scale"])
    if results.get("profile"):
        out += _profile(results["profile"])
    if notes.strip():
        out += ["## Analysis (hand-written from the committed run: `experiments/timing/notes.md`)", "", notes.strip(), ""]
    return "\n".join(out) + "\n"
