#!/usr/bin/env python3
"""Weak-scaling model of data-parallel TTQ training (docs/SCALING.md prints its tables).

    step(n)    = T_c + exposed(n)                   efficiency E(n) = T_c / step(n)
    T_comm(n)  = 2 (n - 1) / n * S / busbw(n) + buckets * alpha(n)
    exposed(n) = (1 - f) * T_comm(n) + max(0, f * T_comm(n) - w * T_c)     (overlap)
    exposed(n) = T_comm(n)                                                  (no overlap)

S: gradient bytes all-reduced per step; busbw: all-reduce bus bandwidth (nccl-tests' definition);
alpha: per-bucket latency; f: the share of the gradient bytes that can be all-reduced while the
backward pass goes on (all buckets but the last); w: the part of T_c left in the backward pass
once those buckets are ready (the window they must fit in); T_c: the step's compute time on one
GPU (per-GPU batch fixed: weak scaling).

Replace the assumptions with measurements: busbw from `bench_allreduce --backend=nccl` at the
rank count, T_c from a one-GPU run's images/s, f from bench_dp_step's exposed_comm_ms.
Usage: python3 scripts/scaling_model.py   (prints markdown tables)
"""
import math

GPUS_PER_NODE = 8
NVLINK_BUSBW = 475e9        # H200 NVLink, all-reduce busbw inside one node (B/s)
NIC_BW = 48e9               # one 400 Gb/s InfiniBand NIC, usable (B/s)
NICS_PER_NODE = 8

MODELS = {
    # name: (gradient bytes per step, buckets (1 MiB first, then 25 MiB: the engine's plan),
    #        assumed compute time per step on one H200 at the per-GPU batch (fp32, FMA math), f, w)
    # ResNet-18B: the last bucket (15.1 of 44.6 MiB: layer4.0.conv1 down to conv1) starts when the
    #   backward pass ends; the others are ready once layer4 is done, a quarter of the backward
    #   pass (2/3 of T_c), leaving w = 0.75 * 2/3 = 0.5.
    # AlexNet-BN: the FC layers (96 % of the bytes) are done after ~5 % of the backward pass,
    #   leaving w = 0.95 * 2/3 = 0.63; the last bucket (8.9 MiB of convolutions) is exposed.
    "ResNet-18B (11.69 M params, batch 256/GPU)": (11_689_512 * 4, 3, [0.050, 0.100, 0.200], 0.66, 0.50),
    "AlexNet-BN (60.98 M params, batch 128/GPU)": (60_981_224 * 4, 4, [0.015, 0.055, 0.110], 0.96, 0.63),
}


def busbw(n, scenario):
    """All-reduce bus bandwidth for n GPUs (B/s)."""
    if n <= GPUS_PER_NODE:
        return NVLINK_BUSBW
    if scenario == "rail":          # one ring per NIC: every NIC of a node carries 1/8 of the data
        return min(NVLINK_BUSBW, NICS_PER_NODE * NIC_BW)
    if scenario == "rail85":        # the same at 85 % efficiency
        return 0.85 * min(NVLINK_BUSBW, NICS_PER_NODE * NIC_BW)
    if scenario == "one_nic":       # all inter-node traffic through one NIC per node
        return NIC_BW
    raise ValueError(scenario)


def alpha(n):
    """Per-bucket latency (s): ~20 us inside a node, growing with log2 of the node count."""
    nodes = max(1, math.ceil(n / GPUS_PER_NODE))
    return 20e-6 + 15e-6 * math.log2(nodes) * 2


def t_comm(n, nbytes, buckets, scenario):
    return 2 * (n - 1) / n * nbytes / busbw(n, scenario) + buckets * alpha(n)


def efficiency(tc, tcomm, f, w):
    exposed = (1 - f) * tcomm + max(0.0, f * tcomm - w * tc)
    return tc / (tc + exposed)


def main():
    scen = [("rail85", "8 NICs at 85 %"), ("one_nic", "1 NIC")]
    for name, (nbytes, buckets, tcs, f_model, w_model) in MODELS.items():
        print(f"\n### {name}: {nbytes / 1e6:.1f} MB of gradients, {buckets} buckets, f = {f_model}, w = {w_model}\n")
        print("| GPUs | busbw (GB/s) | T_comm (ms) | " +
              " | ".join(f"T_c {tc * 1e3:.0f} ms, {m}" for tc in tcs for m in ("no overlap", "overlap")) + " |")
        print("|" + "---|" * (3 + 2 * len(tcs)))
        for n in (8, 64, 256):
            for s, label in (scen if n > GPUS_PER_NODE else scen[:1]):
                tcm = t_comm(n, nbytes, buckets, s)
                cells = [f"{100 * efficiency(tc, tcm, f, w):.1f} %" for tc in tcs
                         for f, w in ((0.0, 0.0), (f_model, w_model))]
                where = "NVLink" if n <= GPUS_PER_NODE else label
                print(f"| {n} ({where}) | {busbw(n, s) / 1e9:.0f} | {tcm * 1e3:.2f} | " + " | ".join(cells) + " |")
    print()


if __name__ == "__main__":
    main()
