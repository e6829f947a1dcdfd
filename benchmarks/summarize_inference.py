"""Markdown summary of `convnext benchmark` result files (as pasted into the README's "Fast inference").

    .venv/bin/python benchmarks/summarize_inference.py benchmarks/results/cpu_fp32_*.json

One table per batch size: img/s and p50 latency per model in each run, and the ratio against timm
convnext_tiny's faster eager setting in each run (the ratio is what interleaved measurement keeps fair on a
shared machine; absolute numbers move with the load, which each run records).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def summarize(paths: list[Path]) -> str:
    runs = [json.loads(p.read_text()) for p in paths]
    out = []
    for i, (p, r) in enumerate(zip(paths, runs), 1):
        load = "/".join(f"{v:.1f}" for v in r["loadavg_before"][:1] + r["loadavg_after"][:1])
        out.append(f"- run {i}: `{p.name}`, {r['date_utc']}, {r['iters']} interleaved repetitions, "
                   f"load average before/after {load}: `{r['command']}`")
    batches = sorted({row["batch"] for r in runs for row in r["results"]})
    for batch in batches:
        models = list(dict.fromkeys(row["model"] for r in runs for row in r["results"] if row["batch"] == batch))
        out += ["", f"batch {batch}, {runs[0]['resolution']}x{runs[0]['resolution']}, {runs[0]['precision']}:", "",
                "| model | img/s (per run) | p50 ms (per run) | peak MiB | vs timm (per run) | vs timm (median) |",
                "|---|---|---|---|---|---|"]
        for m in models:
            rows = [next((x for x in r["results"] if x["model"] == m and x["batch"] == batch), None) for r in runs]
            got = [x for x in rows if x is not None]
            ratios = [x["vs_timm_throughput"] for x in got if "vs_timm_throughput" in x]
            mem = statistics.median(x["peak_mem_mib"] for x in got) if all("peak_mem_mib" in x for x in got) else None
            fmt = lambda key, spec: " / ".join(format(x[key], spec) if x else "-" for x in rows)  # noqa: E731
            out.append(f"| {m} | {fmt('throughput_img_s', '.1f')} | {fmt('p50_ms', '.0f')} | "
                       f"{'-' if mem is None else f'{mem:.0f}'} | "
                       f"{' / '.join(f'{v:.2f}x' for v in ratios) or '-'} | "
                       f"{f'{statistics.median(ratios):.2f}x' if ratios else '-'} |")
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: summarize_inference.py RESULT.json [RESULT.json ...]")
    print(summarize([Path(a) for a in sys.argv[1:]]))
