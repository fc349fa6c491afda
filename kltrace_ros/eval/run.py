"""`kltrace eval`: every method on every pair of a flow-gt folder, side by side.

Writes ``results.json`` (per pair and overall), ``summary.png`` (bar chart) and
``pairs.png`` (per pair: queries, truth and predictions) into the output folder.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .baselines import BASELINES
from .datasets import load_pairs, make_queries
from .metrics import by_motion, scaled_errors, tapvid_metrics

METRICS = ("delta_avg", "AJ", "OA", "EPE")


def evaluate(root: Path, methods=("kl", "rgb", "zero", "lk", "dis"), engines: dict | None = None,
             n_queries: int = 128, seed: int = 0, out: Path | None = None, pair_ids=None) -> dict:
    """Run ``methods`` (baseline names or keys of ``engines``: name -> tracing Engine)."""
    pairs = load_pairs(root)
    if pair_ids:
        pairs = [p for p in pairs if p.id in set(pair_ids)]
    engines = engines or {}
    for m in methods:
        if m not in BASELINES and m not in engines:
            raise ValueError(f"unknown method {m!r}: use one of {sorted(set(BASELINES) | set(engines))}")
    results = {"pairs": {}, "overall": {}, "by_motion": {}, "timing_s_per_point": {}, "n_queries": n_queries}
    preds = {}
    pooled = {m: ([], []) for m in methods}      # per method: errors and ground-truth motions of visible points
    spent = {m: 0.0 for m in methods}
    npts = 0
    for pair in tqdm(pairs, desc="eval", unit="pair"):
        q, t, vis = make_queries(pair, n_queries, seed)
        npts += len(q)
        results["pairs"][pair.id] = {}
        preds[pair.id] = {"queries": q, "truth": t, "visible": vis}
        for m in methods:
            t0 = time.perf_counter()
            if m in BASELINES:
                p, pv = BASELINES[m](pair.frame1, pair.frame2, q)
            else:
                r = engines[m].track(pair.frame1, pair.frame2, q)
                p, pv = r.points, r.visible
            spent[m] += time.perf_counter() - t0
            results["pairs"][pair.id][m] = tapvid_metrics(p, pv, t, vis, pair.frame1.shape[:2])
            preds[pair.id][m] = p
            for acc, arr in zip(pooled[m], scaled_errors(p, t, q, vis, pair.frame1.shape[:2])):
                acc.append(arr)
    for m in methods:
        rows = [results["pairs"][pid][m] for pid in results["pairs"]]
        results["overall"][m] = {k: float(np.nanmean([r[k] for r in rows])) for k in METRICS}
        results["timing_s_per_point"][m] = spent[m] / max(npts, 1)
        results["by_motion"][m] = by_motion(*(np.concatenate(a) if a else np.zeros(0) for a in pooled[m]))
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=1))
        plot_summary(results, out / "summary.png")
        plot_pairs(pairs, preds, methods, out / "pairs.png")
    return results


def format_table(results: dict) -> str:
    """The totals (mean over pairs), then delta_avg / EPE per bin of ground-truth motion (visible points pooled)."""
    lines = ["| method | delta_avg | AJ | OA | EPE (px@256) | s/point |", "|---|---|---|---|---|---|"]
    for m, r in results["overall"].items():
        lines.append(f"| {m} | {r['delta_avg']:.1f} | {r['AJ']:.1f} | {r['OA']:.1f} | {r['EPE']:.2f} | "
                     f"{results['timing_s_per_point'][m]:.4f} |")
    bins = next(iter(results["by_motion"].values()), {})
    if bins:
        lines += ["", "| method | " + " | ".join(f"motion {b} px: delta_avg / EPE (n)" for b in bins) + " |",
                  "|---|" + "---|" * len(bins)]
        for m, per in results["by_motion"].items():
            cells = [f"{v['delta_avg']:.1f} / {v['EPE']:.2f} ({v['n']})" if v["n"] else "- (0)" for v in per.values()]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_summary(results: dict, path: Path) -> None:
    from matplotlib.figure import Figure  # optional heavy dependency: only the plots need it

    methods = list(results["overall"])
    fig = Figure(figsize=(4 * len(METRICS), 3.2))
    axes = fig.subplots(1, len(METRICS))
    for ax, k in zip(axes, METRICS):
        ax.bar(methods, [results["overall"][m][k] for m in methods], color="tab:blue")
        ax.set_title(k + (" (lower is better)" if k == "EPE" else ""))
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def plot_pairs(pairs, preds, methods, path: Path, max_arrows: int = 40) -> None:
    from matplotlib.figure import Figure  # optional heavy dependency: only the plots need it

    n = len(pairs)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(6 * cols, 3.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    colours = {"kl": "red", "rgb": "orange", "lk": "cyan", "dis": "magenta", "zero": "white"}
    for ax, pair in zip(axes.flat, pairs):
        p = preds[pair.id]
        ax.imshow(pair.frame1)
        q = p["queries"][:max_arrows]
        t = p["truth"][:max_arrows]
        ax.quiver(q[:, 0], q[:, 1], t[:, 0] - q[:, 0], t[:, 1] - q[:, 1], color="lime", angles="xy",
                  scale_units="xy", scale=1, width=0.004, label="truth")
        for m in methods:
            if m in ("zero",) or m not in p:
                continue
            e = p[m][:max_arrows]
            ax.quiver(q[:, 0], q[:, 1], e[:, 0] - q[:, 0], e[:, 1] - q[:, 1], color=colours.get(m, "yellow"),
                      angles="xy", scale_units="xy", scale=1, width=0.003, label=m)
        ax.set_title(pair.id, fontsize=9)
        ax.axis("off")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
