"""Benchmark results as JSON, a markdown table and a PNG chart; the README's Benchmarks section."""

from __future__ import annotations

import json
import math
import os

PHASES = ("generate", "reward", "logprobs", "advantages", "update", "sync")
README_START = "<!-- bench:start -->"
README_END = "<!-- bench:end -->"


def _f(value, digits: int = 2, suffix: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}{suffix}"


def _g(value) -> str:
    return "-" if value is None else f"{value:.1e}"


def _header(results: dict) -> list[str]:
    m, v = results["machine"], results["versions"]
    device = m["gpu"] or f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, no GPU"
    versions = ", ".join(f"{k} {val}" for k, val in v.items())
    return [
        f"Measured {m['date']} on {device}; {versions}.",
        f"Threads per compute phase: {results['threads']}; matmul peak measured here: "
        f"{results['peak']['gflops']:.0f} GFLOP/s ({results['peak']['dtype']}). "
        f"Load average before/after: {results.get('load_before')} / {results.get('load_after')}. "
        f"{results['warmup']} warm-up + {results['steps']} measured steps per system, taken in turns.",
    ]


def main_table(results: dict) -> list[str]:
    lines = [
        "| workload | rayppo s/step | TRL s/step | rayppo/TRL | floor s | rayppo / floor | TRL / floor "
        "| rayppo tokens/s | TRL tokens/s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results["workloads"]:
        w, runs = r["workload"], r["runners"]
        ray, trl = runs["rayppo"], runs.get("trl")
        tokens = w["prompts"] * w["group"] * w["completion_tokens"]
        lines.append(
            f"| {w['name']} | {_f(ray['median_s'])} | {_f(trl['median_s']) if trl else 'not run'} "
            f"| {_f(r.get('ratio'))} | {_f(r['floor_s'])} | {_f(r['rayppo_floor_multiple'])} "
            f"| {_f(r.get('trl_floor_multiple'))} | {_f(tokens / ray['median_s'], 0)} "
            f"| {_f(tokens / trl['median_s'], 0) if trl else '-'} |"
        )
    return lines


def phase_table(results: dict) -> list[str]:
    lines = [
        "| workload | runner | step s | " + " | ".join(PHASES) + " |",
        "| --- | --- | --- | " + " | ".join("---" for _ in PHASES) + " |",
    ]
    for r in results["workloads"]:
        for name, s in r["runners"].items():
            phases = s.get("phases_median_s")
            if not phases:
                continue
            cells = " | ".join(_f(phases.get(p), 3) for p in PHASES)
            lines.append(f"| {r['workload']['name']} | {name} | {_f(s['median_s'])} | {cells} |")
    return lines


def variants_table(results: dict) -> list[str]:
    rows = []
    for r in results["workloads"]:
        base = r["runners"]["rayppo"]["median_s"]
        for name, s in r["runners"].items():
            if name.startswith("rayppo["):
                overrides = ", ".join(r["overrides"].get(name, []))
                rows.append(f"| {r['workload']['name']} | {name} | `{overrides}` | {_f(s['median_s'])} "
                            f"| {_f(base)} | {_f(s['median_s'] / base)} |")
    if not rows:
        return []
    return ["| workload | variant | overrides | variant s/step | rayppo default s/step | variant / default |",
            "| --- | --- | --- | --- | --- | --- |", *rows]


def micro_tables(results: dict) -> list[str]:
    lines = ["**Learner** (update phase; MFU = model FLOPs / measured matmul peak)", "",
             "| workload | train tokens/s | update GFLOP/s | MFU | reference tokens/s |",
             "| --- | --- | --- | --- | --- |"]
    for r in results["workloads"]:
        l = r["learner"]
        lines.append(f"| {r['workload']['name']} | {_f(l['train_tokens_per_s'], 0)} | {_f(l['update_gflops'], 1)} "
                     f"| {_f(100 * l['mfu'], 1, '%')} | {_f(l['reference_tokens_per_s'], 0)} |")
    lines += ["", "**Weight sync**, verified every step. *sync*: gather + transfer + in-place load. The check: "
              "the engines score the probe inside the next generate (*probe in generate*: generate with "
              "minus without it, medians of 5 in turns) and the driver waits for the learner's probe "
              "scores (*check wait*). *Share of step*: sync phase + probe in generate + check wait.", "",
              "| preset | params (M) | size GB | sync s | GB/s | sync phase s | probe in generate s | check wait s "
              "| share of step | probe diff |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results["workloads"]:
        s = r["weight_sync"]
        if "sync_phase_s" not in s:  # results written before the check moved into generate
            s = {**s, "sync_phase_s": s.get("sync_with_check_s"), "probe_in_generate_s": None, "check_s": None}
        lines.append(f"| {s['preset']} | {_f(s['params'] / 1e6, 1)} | {_f(s['size_gb'], 3)} | {_f(s['sync_s'], 3)} "
                     f"| {_f(s['gb_per_s'], 2)} | {_f(s['sync_phase_s'], 3)} | {_f(s['probe_in_generate_s'], 3)} "
                     f"| {_f(s['check_s'], 3)} "
                     f"| {_f(100 * s['fraction_of_step'] if s['fraction_of_step'] is not None else None, 1, '%')} "
                     f"| {_g(s['probe_diff'])} |")
    engine_rows = [(r["workload"]["name"], e) for r in results["workloads"] for e in r.get("engines", [])]
    if engine_rows:
        lines += ["", "**Rollout engines** (same prompts, 8 samples each, forced length)", "",
                  "| workload | engine | s per batch | tokens/s |", "| --- | --- | --- | --- |"]
        lines += [f"| {name} | {e['engine']} | {_f(e['seconds'])} | {_f(e['tokens_per_s'], 0)} |"
                  for name, e in engine_rows]
    scaling = [(r["workload"]["name"], s) for r in results["workloads"] for s in r.get("scaling_tokens", [])]
    if scaling:
        lines += ["", "**Step time vs tokens per step** (rayppo)", "",
                  "| workload | prompts x 8 x tokens | tokens/step | s/step | tokens/s | generate s | update s |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        lines += [f"| {name} | {s['prompts']} x 8 x {s['completion_tokens']} | {s['tokens_per_step']} "
                  f"| {_f(s['median_s'])} | {_f(s['tokens_per_s'], 0)} "
                  f"| {_f(s['phases_median_s'].get('generate'))} | {_f(s['phases_median_s'].get('update'))} |"
                  for name, s in scaling]
    workers = results.get("scaling_workers")
    if workers:
        lines += ["", f"**Step time vs rollout workers** ({workers['preset']}; engines share the threads)", "",
                  "| workers | s/step | generate s | tokens/s |", "| --- | --- | --- | --- |"]
        lines += [f"| {x['workers']} | {_f(x['median_s'])} | {_f(x['generate_s'])} | {_f(x['tokens_per_s'], 0)} |"
                  for x in workers["runs"]]
    return lines


def markdown(results: dict, short: bool = False) -> str:
    parts = _header(results) + [""] + main_table(results) + [""]
    if short:
        return "\n".join(parts + phase_table(results)) + "\n"
    parts += ["Per-phase medians (seconds):", ""] + phase_table(results) + [""]
    variants = variants_table(results)
    if variants:
        parts += ["Settings measured before/after in the same run:", ""] + variants + [""]
    parts += micro_tables(results)
    return "\n".join(parts) + "\n"


def chart(results: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names, bottoms = [], []
    fig, ax = plt.subplots(figsize=(7, 3.6))
    x = 0
    ticks, labels = [], []
    colors = dict(zip(PHASES, ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860")))
    for r in results["workloads"]:
        runs = r["runners"]
        ray = runs["rayppo"]
        phases = ray.get("phases_median_s", {})
        bottom = 0.0
        for p in PHASES:
            value = phases.get(p, 0.0)
            ax.bar(x, value, bottom=bottom, color=colors[p], label=p if not names else None)
            bottom += value
        names.append("rayppo")
        ticks.append(x)
        labels.append(f"rayppo\n{r['workload']['name']}")
        if "trl" in runs:
            ax.bar(x + 1, runs["trl"]["median_s"], color="#999999", label="TRL (whole step)" if len(names) == 1 else None)
            ticks.append(x + 1)
            labels.append(f"TRL\n{r['workload']['name']}")
        ax.hlines(r["floor_s"], x - 0.4, x + 1.4, colors="black", linestyles="dashed",
                  label="arithmetic floor" if len(names) == 1 else None)
        bottoms.append(bottom)
        x += 3
    ax.set_xticks(ticks)
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("median seconds per step")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("W1: rayppo (per phase) vs TRL GRPOTrainer", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def write(results: dict, out_dir: str) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "results.json")
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, default=float)
    md_path = os.path.join(out_dir, "results.md")
    with open(md_path, "w", encoding="utf-8") as f:
        f.write("# W1 benchmark results\n\n" + markdown(results))
    png_path = chart(results, os.path.join(out_dir, "results.png"))
    return [json_path, md_path, png_path]


def update_readme(path: str, table: str) -> None:
    """Replace the text between the bench markers of ``path``'s Benchmarks section."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{path}: no '{README_START}' ... '{README_END}' markers to replace")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"{head}{README_START}\n{table}{README_END}{tail}")


if __name__ == "__main__":
    # Rewrite results.md / results.png from a results.json (e.g. after changing this module).
    import sys

    source = sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/results.json"
    with open(source, encoding="utf-8") as f:
        loaded = json.load(f)
    print("\n".join(write(loaded, os.path.dirname(source))))
