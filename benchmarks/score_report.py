"""score_throughput.py's figures summarised (median, min and max of every column; ratios of medians and their
targets) and written out as markdown."""
from __future__ import annotations

import statistics
from functools import partial

from common import fmt_met, md_row, md_table_head, verdict

RATIOS = {  # name -> (numerator column, denominator column); those in the targets get a verdict
    "postgres_vs_tfdata": ("postgres", "tfdata"),
    "embedded_vs_tfdata": ("embedded", "tfdata"),
    "postgres_vs_naive": ("postgres", "naive"),
    "embedded_vs_naive": ("embedded", "naive"),
    "postgres_vs_celery": ("postgres", "celery"),
    "tfdata_vs_naive": ("tfdata", "naive"),
}


# The same comparisons on each column's fastest run: TensorFlow on 2 cores runs in a fast or a slow spell (the
# tf.data script has swung from 188 to 298 images/s between two runs of one process), so a median can set a fast
# imgq run against a slow yardstick or the reverse; the best runs compare fast against fast.
BEST_RATIOS = {"postgres_best_vs_tfdata_best": ("postgres", "tfdata"),
               "embedded_best_vs_tfdata_best": ("embedded", "tfdata")}


def _spread(runs: list[dict]) -> dict:
    rates = [r["images_per_s"] for r in runs if r.get("images_per_s")]
    bg = [r["cpu"]["background_cpu_pct"] for r in runs if "cpu" in r]
    if not rates:
        return {"images": runs[0]["images"] if runs else None, "median": None, "runs": runs}
    return {"images": runs[0]["images"], "median": round(statistics.median(rates), 2), "min": min(rates),
            "max": max(rates), "all": rates, "background_cpu_pct_max": max(bg) if bg else None, "runs": runs}


def summarise_columns(report: dict, runs: dict, goals: dict) -> None:
    """report["models"][key]["columns"|"ratios"], report["targets"] (model-prefixed names for the ratios)."""
    targets = {}
    for key, columns in runs.items():
        entry = report.setdefault("models", {}).setdefault(key, {})
        entry["columns"] = {col: _spread(col_runs) for col, col_runs in columns.items()}
        medians = {col: c["median"] for col, c in entry["columns"].items()}
        entry["ratios"] = {}
        for name, (num, den) in RATIOS.items():
            if medians.get(num) and medians.get(den):
                value = round(medians[num] / medians[den], 3 if "tfdata" in den else 2)
                entry["ratios"][name] = value
                if name in goals:
                    targets[f"{key}.{name}"] = verdict(goals, name, value)
        best = {col: c.get("max") for col, c in entry["columns"].items()}
        for name, (num, den) in BEST_RATIOS.items():
            if best.get(num) and best.get(den):
                entry["ratios"][name] = round(best[num] / best[den], 3)
                if name in goals:
                    targets[f"{key}.{name}"] = verdict(goals, name, entry["ratios"][name])
    memory, latency = report.get("memory", {}), report.get("latency", {})
    if memory.get("rss_growth_pct") is not None:
        targets["worker_rss_growth_pct"] = verdict(goals, "worker_rss_growth_pct", memory["rss_growth_pct"])
    if latency.get("while_running", {}).get("p95_ms") is not None:
        targets["job_get_p95_ms"] = verdict(goals, "job_get_p95_ms", latency["while_running"]["p95_ms"])
    report["targets"] = targets


def _cell(c: dict | None) -> str:
    if not c or c.get("median") is None:
        return "–"
    if c["min"] == c["max"]:
        return f"{c['median']:.1f}"
    return f"{c['median']:.1f} ({c['min']:.1f}–{c['max']:.1f})"


def _target_cell(targets: dict, name: str, value) -> str:
    v = targets.get(name)
    if value is None:
        return "–"
    return f"{value} ({v['target']}: {fmt_met(v)})" if v else f"{value}"


def _model_tables(report: dict, columns: tuple, titles: dict) -> list[str]:
    models, t = report.get("models", {}), report.get("targets", {})
    runs = report["run"].get("repeats", "?")
    stat = "one run" if runs == 1 else f"median of {runs} runs (min–max)"
    lines = ["", f"Images/s, {stat}; image counts per column in the last column.", "",
             "| model | GFLOP/img | " + " | ".join(titles[c] for c in columns) + " | images | others' CPU, max |",
             "|---|---:|" + "---:|" * len(columns) + "---|---:|"]
    for key, m in models.items():
        cols = m.get("columns", {})
        counts = " / ".join(f"{c} {cols[c]['images']}" for c in columns if c in cols)
        bg = [c.get("background_cpu_pct_max") for c in cols.values() if c.get("background_cpu_pct_max") is not None]
        lines.append(f"| {m.get('label', key)}, {m.get('input')}² | {m.get('gflop_per_image')} | "
                     + " | ".join(_cell(cols.get(c)) for c in columns)
                     + f" | {counts} | {f'{max(bg):.0f} %' if bg else ''} |")
    lines += ["", "Ratios of the medians:", "",
              "| model | imgq PostgreSQL / tf.data | imgq embedded / tf.data | imgq PostgreSQL / naive loop | "
              "imgq embedded / naive loop | imgq PostgreSQL / naive Celery | tf.data / naive loop |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for key, m in models.items():
        r = m.get("ratios", {})
        lines.append(f"| {m.get('label', key)} | "
                     + " | ".join(_target_cell(t, f"{key}.{name}", r.get(name)) for name in RATIOS) + " |")
    lines += ["", "Ratios of the best runs (each column's fastest: TensorFlow's fast spell against its fast spell):",
              "", "| model | imgq PostgreSQL / tf.data | imgq embedded / tf.data |", "|---|---:|---:|"]
    for key, m in models.items():
        r = m.get("ratios", {})
        lines.append(f"| {m.get('label', key)} | "
                     + " | ".join(_target_cell(t, f"{key}.{name}", r.get(name)) for name in BEST_RATIOS) + " |")
    lines += ["", "Parts, one run each (images/s): the model alone on pre-decoded batches (LoadedModel.predict), "
              "decoding alone (load_for_model), worker.scoring.score_items in-process (no database, no queue):", "",
              "| model | model alone | decode alone | score_items in-process |", "|---|---:|---:|---:|"]
    for key, m in models.items():
        p = m.get("parts")
        if p:
            si = p["score_items"]
            lines.append(f"| {m.get('label', key)} | {p['model_alone']['images_per_s']} (batch "
                         f"{p['model_alone']['batch_size']}) | {p['decode_alone']['images_per_s']} "
                         f"({p['decode_alone']['threads']} threads) | {si.get('images_per_s', si.get('error'))} |")
    return lines


def _stack_table(report: dict) -> list[str]:
    e, f, t = report.get("memory", {}), report.get("latency", {}), report.get("targets", {})
    if not (e or f):
        return []
    row = partial(md_row, t)
    where = (e or f).get("stack"), (e or f).get("model")
    lines = ["", f"Worker memory and GET latency ({where[0]} stack, model {where[1]}):"]
    lines += md_table_head({})
    if e:
        lines.append(row(f"(e) pool RSS after job 1 / job {e['jobs']} of {e['images_per_job']} images "
                         f"(peak after 1 / all)",
                         f"{e['rss_after_first_mib']} / {e['rss_after_last_mib']} MiB "
                         f"({e['peak_hwm_first_mib']} / {e['peak_hwm_mib']})", e))
        lines.append(row("(e) RSS growth, %", e["rss_growth_pct"], None, "worker_rss_growth_pct"))
    if f:
        w = f["while_running"]
        lines.append(row(f"(f) GET job while running, p95 ms ({w.get('requests')} req)", w.get("p95_ms"), f,
                         "job_get_p95_ms"))
        idle = f["idle"]
        lines.append(row("(f) p50 / max ms; idle p50 / p95 ms",
                         f"{w.get('p50_ms')} / {w.get('max_ms')}; {idle.get('p50_ms')} / {idle.get('p95_ms')}"))
    return lines


def markdown(report: dict, columns: tuple, titles: dict) -> str:
    run = report["run"]
    mach, s, cat = run.get("machine", {}), run.get("settings", {}), run.get("catalog", {})
    lines = [
        f"# score_throughput — {run['timestamp']}",
        "",
        f"commit {run.get('git_commit', '?')}{' (quick)' if run['quick'] else ''}, "
        f"backends {run['backend']}{' + embedded' if run.get('embedded_database') else ''}, "
        f"{mach.get('cpus', run.get('cpus'))} CPUs ({mach.get('cpu_model', '?')}), {mach.get('mem_gib', '?')} GiB, "
        f"Python {run.get('python', '?')}, TensorFlow {run.get('tensorflow', '?')}; batch {s.get('batch_size')}, "
        f"decode threads {s.get('decode_threads')}, chunk {s.get('chunk_size')}; "
        f"total {run.get('seconds_total', '?')} s",
    ]
    if run.get("git_dirty"):
        lines.append(f"working tree differs from the commit in: {', '.join(run['git_dirty'])}")
    if cat:
        lines.append(f"photo-like JPEGs (benchmarks/photo_catalog.py): {cat.get('mean_kb')} KB on average, "
                     f"{cat.get('bits_per_pixel')} bits/pixel, sides {cat.get('min_side')}–{cat.get('max_side')} px, "
                     f"{cat.get('progressive')} of {cat.get('images')} progressive")
    lines += _model_tables(report, columns, titles)
    lines += _stack_table(report)
    if report.get("errors"):
        lines += ["", "Errors:", *[f"- {x}" for x in report["errors"]]]
    return "\n".join(lines) + "\n"
