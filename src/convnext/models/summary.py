"""The roadmap table: every step measured (params, GMACs) next to the paper's figures."""

from __future__ import annotations

import torch

from .convnext import ConvNeXt
from .flops import count_flops, count_params
from .roadmap import ROADMAP


def roadmap_rows(input_size: tuple[int, int, int] = (3, 224, 224), num_classes: int = 1000) -> list[dict]:
    rows = []
    for step in ROADMAP:
        # Meta tensors: shapes only, so counting even the 26M-parameter steps takes milliseconds.
        with torch.device("meta"):
            model = ConvNeXt(step.config.replace(num_classes=num_classes, in_chans=input_size[0]))
        rows.append(
            {
                "name": step.name,
                "change": step.change,
                "recipe": step.recipe,
                "params": count_params(model),
                "gmacs": round(count_flops(model, input_size), 4),
                "paper_gflops": step.paper_gflops,
                "paper_top1": step.paper_top1,
                "paper_top1_approx": step.paper_top1_approx,
            }
        )
    return rows


def _top1(row: dict) -> str:
    return ("~" if row["paper_top1_approx"] else "") + f"{row['paper_top1']:.1f}"


def format_table(rows: list[dict], markdown: bool = False) -> str:
    header = ["step", "what changed", "params (M)", "GMACs (ours)", "GFLOPs (paper)", "top-1 (paper)"]
    body = [
        [r["name"], r["change"], f"{r['params'] / 1e6:.2f}", f"{r['gmacs']:.2f}", f"{r['paper_gflops']:.1f}", _top1(r)]
        for r in rows
    ]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(x) for x in col) for col in zip(header, *body)]
    fmt = lambda row: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))  # noqa: E731
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(row) for row in body])
