#!/usr/bin/env python3
"""Turns a run's metrics.jsonl into PNG curves: loss, test error, Wp/Wn and sparsity per layer.

usage: python3 scripts/plot_metrics.py RUN_DIR [--out DIR]

Needs matplotlib (Debian: apt-get install python3-matplotlib).
"""
import argparse
import json
import os
import sys


def load(path):
    steps, epochs = [], []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{n}: not valid JSON: {e}")
            (steps if rec.get("type") == "step" else epochs).append(rec)
    return steps, epochs


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--out", help="folder for the PNG files (default: RUN_DIR/plots)")
    args = ap.parse_args()
    metrics = os.path.join(args.run_dir, "metrics.jsonl")
    if not os.path.exists(metrics):
        sys.exit(f"no {metrics}: is '{args.run_dir}' a run folder?")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("matplotlib is missing: apt-get install python3-matplotlib")
    steps, epochs = load(metrics)
    out = args.out or os.path.join(args.run_dir, "plots")
    os.makedirs(out, exist_ok=True)
    written = []

    def save(fig, name):
        path = os.path.join(out, name)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([s["step"] for s in steps], [s["loss"] for s in steps], lw=0.8, label="train (step)")
    ev = [e for e in epochs if "test_loss" in e]
    ax.plot([e["step"] for e in ev], [e["test_loss"] for e in ev], "o-", label="test (epoch)")
    ax.set_xlabel("step"); ax.set_ylabel("loss"); ax.set_yscale("log"); ax.legend(); ax.grid(alpha=0.3)
    save(fig, "loss.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([e["step"] for e in epochs], [100 * e["train_top1_error"] for e in epochs], "o-", label="train top-1")
    ax.plot([e["step"] for e in ev], [100 * e["test_top1_error"] for e in ev], "o-", label="test top-1")
    ax.plot([e["step"] for e in ev], [100 * e["test_top5_error"] for e in ev], "o--", label="test top-5")
    for stage in sorted({e["stage"] for e in epochs}, key=lambda s: min(e["step"] for e in epochs if e["stage"] == s)):
        first = min(e["step"] for e in epochs if e["stage"] == stage)
        ax.axvline(first, color="grey", lw=0.5)
    ax.set_xlabel("step"); ax.set_ylabel("error (%)"); ax.legend(); ax.grid(alpha=0.3)
    save(fig, "error.png")

    ternary = [e for e in epochs if e.get("layers")]
    if ternary:
        layers = list(ternary[-1]["layers"].keys())
        x = [e["step"] for e in ternary]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
        for name in layers:
            a1.plot(x, [e["layers"].get(name, {}).get("wp", float("nan")) for e in ternary], lw=0.8)
            a1.plot(x, [e["layers"].get(name, {}).get("wn", float("nan")) for e in ternary], lw=0.8, ls="--")
            a2.plot(x, [100 * e["layers"].get(name, {}).get("sparsity", float("nan")) for e in ternary], lw=0.8,
                    label=name)
        a1.set_title("Wp (solid), Wn (dashed) per layer"); a1.set_xlabel("step"); a1.grid(alpha=0.3)
        a2.set_title("sparsity per layer (%)"); a2.set_xlabel("step"); a2.grid(alpha=0.3)
        if len(layers) <= 12:
            a2.legend(fontsize=6)
        save(fig, "ternary.png")
    for p in written:
        print(p)


if __name__ == "__main__":
    main()
