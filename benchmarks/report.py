"""report.md: the tables and ratios from results.json, with the machine and method stated next to them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Row = dict[str, Any]


def _name(row: Row) -> str:
    return f"{row['system']}/{row['variant']}"


def _rows(results: dict[str, Any], figure: str) -> list[Row]:
    return [row for row in results["rows"] if row["figure"] == figure]


def _table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    if not lines:
        return "_no data_\n"
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out) + "\n"


def _num(value: Any, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}{suffix}"


def _ratio(row: Row) -> str:
    ratio = row.get("speedup_vs_baseline")
    if not ratio:
        return "–"
    return f"**{ratio['median']:.2f}x** ({ratio['p10']:.2f}–{ratio['p90']:.2f}, n={ratio['pairs']})"


def _skipped(row: Row) -> str:
    return f"skipped: {row.get('reason', '')}"


def _per_system(rows: list[Row], ok: Callable[[Row], list[str]], width: int) -> list[list[str]]:
    lines = []
    for row in rows:
        if row["status"] == "ok":
            lines.append([_name(row), *ok(row)])
        else:
            lines.append([_name(row), _skipped(row), *([""] * (width - 1))])
    return lines


def headline(results: dict[str, Any]) -> str:
    def lookup(figure: str, **match: Any) -> dict[str, Row]:
        return {_name(r): r for r in _rows(results, figure) if r["status"] == "ok"
                and all(r.get(k) == v for k, v in match.items())}

    cores = results["machine"]["physical_cores"]
    e2e, model = lookup("latency_e2e"), lookup("latency_model")
    cold, size, fid = lookup("coldstart"), lookup("footprint"), lookup("fidelity")
    through = {}
    for r in _rows(results, "throughput"):
        best = through.get(_name(r))
        if r["status"] == "ok" and r["threads"] == cores and (best is None or r["images_per_s"] > best["images_per_s"]):
            through[_name(r)] = r
    lines = []
    for system in results["systems"]:
        name = f"{system['system']}/{system['variant']}"
        if system["status"] != "ok":
            lines.append([name, f"skipped: {system['reason']}"] + [""] * 7)
            continue
        lines.append([
            name,
            f"{_num(e2e[name]['p50_ms'])} ms" if name in e2e else "–",
            _ratio(e2e[name]) if name in e2e else "–",
            f"{_num(model[name]['p50_ms'])} ms" if name in model else "–",
            (f"{_num(through[name]['images_per_s'], 2)} (b={through[name]['batch_size']})" if name in through else "–"),
            f"{_num(cold[name]['first_label_s'], 2)} s" if name in cold else "–",
            f"{_num(cold[name]['peak_rss_mib'], 0)} MiB" if name in cold else "–",
            f"{_num(size[name]['total_mb'], 0)} MB" if name in size else "–",
            (f"{fid[name]['top1_agreement']:.3f} / {fid[name]['max_abs_probability_diff']:.2g}"
             if name in fid else "–"),
        ])
    return _table(["system", "e2e p50", "e2e speed-up vs PyTorch", "model p50", f"best img/s ({cores} thr)",
                   "cold start", "peak RSS", "install", "top-1 agree / max \\|Δp\\|"], lines)


FIGURE_NAMES = {"latency_e2e": "end to end", "latency_model": "model only", "throughput": "throughput"}


def versus(results: dict[str, Any]) -> str:
    """Our fastest variant against the fastest other system on this machine, figure by figure, with the
    PyTorch ratio next to it: the comparison that says whether "faster than the alternatives" holds here."""
    comparisons = [c for c in results.get("versus_best_alternative") or []
                   if c["figure"] != "throughput" or c["threads"] == results["machine"]["physical_cores"]]
    if not comparisons:
        return ""
    rows = {(_name(r), r["figure"], r.get("batch_size"), r.get("threads")): r for r in results["rows"]
            if r["status"] == "ok"}
    fidelity = {_name(r): r for r in _rows(results, "fidelity") if r["status"] == "ok"}

    def amount(figure: str, batch_size: int, ms: float) -> str:
        return f"{batch_size / ms * 1000:.2f} img/s" if figure == "throughput" else f"{ms:.1f} ms"

    lines, losses = [], []
    for c in comparisons:
        mine = rows.get((c["ours"], c["figure"], c["batch_size"], c["threads"]), {})
        agree = fidelity.get(c["alternative"])
        speedup = c["speedup"]
        lines.append([
            f"{FIGURE_NAMES[c['figure']]}, batch {c['batch_size']}, {c['threads']} thr",
            f"{c['ours']}: {amount(c['figure'], c['batch_size'], c['ours_ms'])}",
            _ratio(mine),
            f"{c['alternative']}: {amount(c['figure'], c['batch_size'], c['alternative_ms'])}"
            + (f" (top-1 agree {agree['top1_agreement']:.3f}, max \\|Δp\\| {agree['max_abs_probability_diff']:.2g})"
               if agree else ""),
            f"**{speedup['median']:.2f}x** ({speedup['p10']:.2f}–{speedup['p90']:.2f}, n={speedup['pairs']})",
        ])
        if speedup["median"] < 1:
            losses.append(f"{FIGURE_NAMES[c['figure']]} batch {c['batch_size']} ({c['alternative']}, "
                          f"{speedup['median']:.2f}x)")
    machine = results["machine"]
    # The flags that decide which int8/bf16 kernels the alternatives get.
    matrix = [flag for flag in machine["flags"] if any(part in flag for part in ("vnni", "bf16", "amx"))]
    where = (f"{machine['cpu_model']}, {machine['physical_cores']} cores, {', '.join(matrix) or 'no VNNI/BF16'}"
             + ("" if any(flag.startswith("amx") for flag in matrix) else ", no AMX"))
    verdict = (f"**On this machine ({where}) an alternative is faster than fastvit-detect** in {len(losses)} of "
               f"{len(lines)} figures: {'; '.join(losses)}." if losses else
               f"On this machine ({where}) fastvit-detect is faster than every alternative measured, in every figure.")
    return (verdict + " Speed-ups below are medians of per-trial ratios measured in turns in the same phase; "
            "> 1 means fastvit-detect is faster.\n\n"
            + _table(["figure", "fastvit-detect (fastest variant)", "vs PyTorch fp32", "fastest alternative",
                      "fastvit-detect vs it"], lines))


def auto_targets(results: dict[str, Any]) -> str:
    """fastvit-detect's auto choice against raw OpenVINO int8 (our preprocessing) and onnxruntime int8."""
    comparisons = results.get("auto_against_targets") or []
    if not comparisons:
        return ""
    lines = []
    for c in sorted(comparisons, key=lambda c: (c["target"], c["figure"], c["threads"], c["batch_size"])):
        speedup = c["speedup"]

        def amount(ms: float, c: dict[str, Any] = c) -> str:
            return f"{c['batch_size'] / ms * 1000:.2f} img/s" if c["figure"] == "throughput" else f"{ms:.1f} ms"

        spread = f"({speedup['p10']:.2f}–{speedup['p90']:.2f}, n={speedup['pairs']})"
        lines.append([f"{FIGURE_NAMES[c['figure']]}, batch {c['batch_size']}, {c['threads']} thr", c["target"],
                      amount(c["auto_ms"]), amount(c["target_ms"]), f"**{speedup['median']:.2f}x** {spread}"])
    return ("fastvit-detect/auto (the variant `auto` picked on this machine) against raw OpenVINO int8 with "
            "fastvit-detect's preprocessing and against fastvit-detect's onnxruntime int8; > 1 means auto is "
            "faster.\n\n" + _table(["figure", "against", "auto", "it", "auto vs it"], lines))


def faces(results: dict[str, Any]) -> str:
    """Issue 23's faces row: detection on the group photos against the int8 model call, and images/s with faces."""
    detection, throughput = _rows(results, "faces_detection"), _rows(results, "faces_throughput")
    if not detection:
        return ""
    skipped = [row for row in detection if row["status"] != "ok"]
    if skipped:
        return f"_{_skipped(skipped[0])}_\n"

    def ratio(value: dict[str, Any] | None) -> str:
        return f"**{value['median']:.2f}x** ({value['p10']:.2f}–{value['p90']:.2f}, n={value['pairs']})" if value \
            else "–"

    lines = [[f"{r['photo']} ({r['megapixels']} MP)", f"{r['faces_found']} (recall {r['recall_iou50']:.2f})",
              f"{_num(r['detection']['p50_ms'])} ms",
              f"{_num(r['detection_cpu_ms'])} ms", f"{_num(r['model_call']['p50_ms'])} ms",
              f"{_num(r['model_call_cpu_ms'])} ms", ratio(r["ratio_to_model_call"]),
              ratio(r["cpu_ratio_to_model_call"])] for r in detection]
    first = detection[0]
    text = (f"Face detection (MTCNN on {first['runtime']}, smallest face {first['min_face_size']} px of the detection "
            f"copy, whose long side is at most {first['max_side']} px; {first['threads']} threads) on group photos "
            f"composed of the tests' faces, in turns with {_name(first)}'s model call on one preprocessed image. The "
            "ratio is the median of per-turn ratios detection / model call; issue 23's target is at most 0.5 on "
            "the 1 MP photo.\n\n"
            + _table(["photo", "faces found (recall at IoU 0.5)", "detection p50", "detection CPU",
                      "model call p50", "model call CPU", "detection / model call", "CPU ratio"], lines))
    for row in throughput:
        if row["status"] == "ok":
            text += (f"\n`predict_faces` on {row['photo']} (decode, detect, crop and classify its "
                     f"{row['faces_per_image']} faces in one batch): **{row['images_per_s']:.2f} images/s** "
                     f"({_num(row['latency']['p50_ms'])} ms p50, {_num(row['cpu_ms_per_image'])} ms CPU per "
                     f"image, {row['threads']} threads).\n")
    return text


def conditions(results: dict[str, Any]) -> str:
    """How busy other processes kept the CPU in each phase, with a warning where it distorts the figures."""
    loads = results.get("foreign_load_cores") or {}
    if not loads:
        return ""
    threshold = results.get("foreign_load_warning_cores", 0.25)
    text = "**Foreign CPU load** (cores kept busy by other processes): " + ", ".join(
        f"{phase} {_num(value, 2)}" for phase, value in loads.items()) + ".\n"
    busy = [phase for phase, value in loads.items() if value is not None and value > threshold]
    if busy:
        text += (f"\n> **Warning**: other processes competed for the CPU during {', '.join(busy)}. On "
                 f"{results['machine']['physical_cores']} cores this is not just noise: PyTorch's OpenMP threads "
                 "slow down several-fold when they outnumber the free cores, onnxruntime much less, so speed-ups "
                 "against PyTorch are inflated. Re-run on an idle machine for publishable ratios.\n")
    return text


def render(results: dict[str, Any], figures: Sequence[str]) -> str:
    machine, model, plan, peak = results["machine"], results["model"], results["plan"], results["peak"]
    libraries = ", ".join(f"{k} {v}" for k, v in machine["libraries"].items() if v)
    sections = [
        "# fastvit-detect benchmark\n",
        (f"Mode **{plan['mode']}**, {results['created']}, {results['wall_s']} s wall. "
         f"Command: `{results['command']}`\n"),
        (f"**Model**: {model['source']} — {model['model_type']}, labels {model['labels']}, "
         f"{model['macs']['gmacs']:.2f} GMAC/image ({model['macs']['tokens']} tokens). "
         "All systems load these weights.\n"),
        f"**Machine**: {machine['cpu_model']} ({machine['vendor']}, family/model/stepping "
        f"{machine['family_model_stepping']}"
        f"{', ' + machine['hypervisor'] + ' guest' if machine['hypervisor'] else ''}), "
        f"{machine['physical_cores']} physical cores / {machine['logical_cpus']} logical, {machine['clock_mhz']} MHz "
        f"({machine['clock_source']}), {machine['memory_gib']} GiB RAM; flags: {', '.join(machine['flags'])}; "
        f"load average at start {machine['load_average_at_start']}"
        + (f"; scheduling: {machine['scheduling']}" if machine.get("scheduling") else "") + f". {machine['os']}.\n",
        f"**Libraries**: {libraries}.\n",
        conditions(results),
        "## Headline\n",
        ("Speed-ups are medians of per-trial ratios measured in turns with the PyTorch fp32 baseline "
         "(p10–p90 in brackets); > 1 means faster than PyTorch.\n"),
        headline(results),
        "\n### Against the fastest alternative\n",
        versus(results),
        "\n### The auto choice against its targets\n",
        auto_targets(results),
    ]

    sections += ["\n## End-to-end latency, batch 1 (encoded file on disk -> label)\n",
                 f"{len(results['images'])} images, {plan['latency_rounds']} round(s): "
                 + ", ".join(f"{i['file']} {i['width']}x{i['height']} {i['mode']}" for i in results["images"]) + ".\n",
                 _table(["system", "p50 ms", "p90 ms", "p99 ms", "mean ms", "n", "threads", "speed-up vs PyTorch"],
                        _per_system(_rows(results, "latency_e2e"), lambda r: [
                            _num(r["p50_ms"]), _num(r["p90_ms"]), _num(r["p99_ms"]), _num(r["mean_ms"]),
                            str(r["n"]), str(r["threads"]), _ratio(r)], 7))]

    sections += ["\n## Model-only latency, batch 1 (preprocessed tensor -> logits)\n",
                 _table(["system", "p50 ms", "p90 ms", "p99 ms", "n", "threads", "speed-up vs PyTorch"],
                        _per_system(_rows(results, "latency_model"), lambda r: [
                            _num(r["p50_ms"]), _num(r["p90_ms"]), _num(r["p99_ms"]), str(r["n"]),
                            str(r["threads"]), _ratio(r)], 6))]

    throughput_rows = _rows(results, "throughput")
    cells = sorted({(r["threads"], r["batch_size"]) for r in throughput_rows})
    lines = []
    for name in dict.fromkeys(_name(r) for r in throughput_rows):
        line = [name]
        for threads, batch in cells:
            row = next((r for r in throughput_rows if _name(r) == name and r["threads"] == threads
                        and r["batch_size"] == batch), None)
            if row is None or row["status"] != "ok":
                line.append("skipped")
            else:
                ratio = row.get("speedup_vs_baseline")
                line.append(f"{row['images_per_s']:.2f}" + (f" ({ratio['median']:.2f}x)" if ratio else ""))
        lines.append(line)
    sections += ["\n## Throughput, end to end (images/s; speed-up vs PyTorch in brackets)\n",
                 f"Batches of the sample photos (cycled), {plan['throughput_rounds']} timed batch(es) per cell after "
                 f"one warm-up batch. Thread counts: {plan['threads_resolved']}"
                 + (" (quick mode: all cores only, batch 1 and 8)" if plan["mode"] == "quick" else "") + ".\n",
                 _table(["system"] + [f"b={b}, {t} thr" for t, b in cells], lines)]

    faces_text = faces(results)
    if faces_text:
        sections += ["\n## Faces first: detection cost and images/s with faces (issue 23)\n", faces_text]

    sections += ["\n## Cold start (fresh process -> first printed label) and its peak memory\n",
                 ("Each system's own minimal script (in results.json), on grace_hopper.jpg, page cache warm; "
                  "peak RSS is the process's VmHWM (its own high-water mark; see coldstart.py for why not "
                  "ru_maxrss).\n"),
                 _table(["system", "first label s (median)", "max s", "exit s", "peak RSS MiB", "runs"],
                        _per_system(_rows(results, "coldstart"), lambda r: [
                            _num(r["first_label_s"], 2), _num(r["first_label_s_max"], 2), _num(r["total_s"], 2),
                            _num(r["peak_rss_mib"], 0), str(r["repeats"])], 5))]

    size_lines = []
    for r in _rows(results, "footprint"):
        if r["status"] != "ok":
            size_lines.append([_name(r), _skipped(r), "", ""])
            continue
        top = ", ".join(f"{k} {v / 1e6:.0f}" for k, v in list(r["by_distribution"].items())[:5])
        size_lines.append([_name(r), _num(r["total_mb"], 0), str(r["distributions"]), top])
    sections += ["\n## Install footprint (runtime dependency closure, from RECORD files)\n",
                 _table(["system", "MB on disk", "distributions", "largest (MB)"], size_lines)]

    sections += ["\n## Fidelity against PyTorch fp32 (same images as the latency table)\n",
                 _table(["system", "top-1 agreement", "max \\|Δ probability\\|", "mean \\|Δ probability\\|", "images"],
                        _per_system(_rows(results, "fidelity"), lambda r: [
                            f"{r['top1_agreement']:.3f}", f"{r['max_abs_probability_diff']:.3g}",
                            f"{r['mean_abs_probability_diff']:.3g}", str(r["images"])], 4))]

    if _rows(results, "accuracy"):
        sections += ["\n## Accuracy on the labelled folder\n",
                     "Agreement and |Δp| are against PyTorch fp32 on the same images.\n",
                     _table(["system", "accuracy", "top-1 agreement", "max \\|Δ probability\\|", "images"],
                            _per_system(_rows(results, "accuracy"), lambda r: [
                                f"{r['accuracy']:.4f}", _num(r.get("top1_agreement"), 3),
                                _num(r.get("max_abs_probability_diff"), 3), str(r["images"])], 4))]

    sections += ["\n## Compute efficiency\n",
                 (f"{model['macs']['gmacs']:.2f} GMAC = {2 * model['macs']['gmacs']:.1f} GFLOP per image "
                  f"({100 * model['macs']['linear_share']:.0f}% in the linear layers int8 quantizes). Peak: "
                  f"{_num(peak['fp32_gflops'], 0)} fp32 GFLOP/s, {_num(peak.get('bf16_gflops'), 0)} bf16 GFLOP/s, "
                  f"{_num(peak['int8_gops'], 0)} int8 GOP/s with the "
                  f"widest instruction set present; {_num(peak.get('int8_gops_avx2'), 0)} int8 GOP/s on the AVX2 "
                  "u8×s8 yardstick (no VNNI; above 100 % means the machine has more than AVX2). "
                  f"Assumptions: {'; '.join(peak['assumptions'])}.\n"),
                 _table(["system", "peak", "model-only G/s", "% of peak", "% of AVX2 u8×s8", "best e2e G/s",
                         "% of peak"],
                        _per_system(_rows(results, "compute"), lambda r: [
                            f"{_num(r['peak_g_per_s'], 0)} {r['peak_kind']}", _num(r.get("model_g_per_s")),
                            _num(100 * r["model_efficiency"], 1, "%") if r.get("model_efficiency") else "–",
                            _num(100 * r["model_efficiency_avx2"], 1, "%") if r.get("model_efficiency_avx2") else "–",
                            _num(r.get("e2e_g_per_s")),
                            _num(100 * r["e2e_efficiency"], 1, "%") if r.get("e2e_efficiency") else "–"], 6))]

    notes = [f"- `{s['system']}/{s['variant']}`: " + "; ".join(f"{k}: {v}" for k, v in s["notes"].items())
             for s in results["systems"] if s["notes"]]
    sections += ["\n## Systems\n", "\n".join(notes) + "\n" if notes else "",
                 "\n## Method\n",
                 ("- Every figure is measured interleaved: systems take turns in short blocks of trials (images or "
                  "batches) in a rotating order, so drift on this shared machine hits all systems alike; a speed-up "
                  "is the median of per-trial time ratios.\n"
                  "- Each turn opens with an untimed settling call: systems sharing a process disturb the next one "
                  "(spinning thread pools, weights evicted from cache), and a deployment runs one model over and "
                  "over. One untimed warm-up call per system precedes each phase; p99 over few samples is close to "
                  "the maximum.\n"
                  "- onnxruntime and PyTorch keep their default spin-waiting thread pools, as users get them.\n")]
    sections += [f"\n![{name}]({name})\n" for name in figures]
    return "\n".join(section for section in sections if section)
