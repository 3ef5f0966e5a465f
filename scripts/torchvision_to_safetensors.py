#!/usr/bin/env python3
"""Converts torchvision ResNet-18/34 weights into a safetensors state dict the engine loads with
"init_from" (model "resnet18" / "resnet34"; the engine's parameter names are torchvision's).

usage:
  python3 scripts/torchvision_to_safetensors.py SOURCE OUT.safetensors [--arch resnet18|resnet34]

SOURCE is either
  - a torchvision weights name such as IMAGENET1K_V1 or DEFAULT (of ResNet18_Weights /
    ResNet34_Weights). The file is read from torchvision's download cache
    ($TORCH_HOME/hub/checkpoints, by default ~/.cache/torch/hub/checkpoints); this script never
    downloads anything. When the file is not cached, the error names the URL and the cache path:
    fetch it there yourself (or once with torchvision on a machine that may download), then rerun.
  - a path to a .pth / .pt file holding a state dict of the same architecture (a plain dict of
    tensors, or a training checkpoint with the dict under "state_dict" or "model"; a "module."
    prefix from DataParallel is removed).

The weights are checked against torchvision's model of that architecture (strict
load_state_dict; the number of classes is taken from fc.weight), converted to contiguous float32,
and saved with safetensors.torch.save_file with metadata {"format": "pt"}. BatchNorm's
num_batches_tracked counters are dropped (the engine does not use them; it would also ignore them).

Needs torch, torchvision and safetensors (pip install torch torchvision safetensors).
"""
import argparse
import os
import sys
from urllib.parse import urlparse


def cached_weights_path(torch, weights):
    filename = os.path.basename(urlparse(weights.url).path)
    return os.path.join(torch.hub.get_dir(), "checkpoints", filename)


def torch_load(torch, path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except TypeError:  # torch < 1.13 has no weights_only
        return torch.load(path, map_location="cpu")


def load_state_dict(torch, torchvision, arch, source):
    if os.path.exists(source):
        sd = torch_load(torch, source)
        if isinstance(sd, dict):
            for key in ("state_dict", "model"):
                if key in sd and isinstance(sd[key], dict):
                    sd = sd[key]
                    break
        if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
            sys.exit(f"{source}: not a state dict (a dict of tensors)")
        if sd and all(k.startswith("module.") for k in sd):
            sd = {k[len("module."):]: v for k, v in sd.items()}
        return sd
    enum_name = {"resnet18": "ResNet18_Weights", "resnet34": "ResNet34_Weights"}[arch]
    enum = getattr(torchvision.models, enum_name, None)
    if enum is None:
        sys.exit(f"torchvision {torchvision.__version__} has no {enum_name} (needs torchvision >= 0.13); "
                 f"pass a .pth file instead")
    try:
        weights = enum[source]
    except KeyError:
        names = ", ".join(enum.__members__)
        sys.exit(f"'{source}' is neither a file nor a weights name of {enum_name} ({names})")
    path = cached_weights_path(torch, weights)
    if not os.path.exists(path):
        sys.exit(f"{enum_name}.{source} is not in torchvision's cache: expected {path}\n"
                 f"This script does not download. Fetch {weights.url} to that path, then rerun "
                 f"(or pass the file's path as SOURCE).")
    return torch_load(torch, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", help="torchvision weights name (IMAGENET1K_V1, DEFAULT) or a .pth state dict")
    ap.add_argument("out", help="output .safetensors file")
    ap.add_argument("--arch", default="resnet18", choices=["resnet18", "resnet34"])
    args = ap.parse_args()

    try:
        import torch
        import torchvision
        from safetensors.torch import save_file
    except ImportError as e:
        sys.exit(f"needs torch, torchvision and safetensors: {e}")

    sd = load_state_dict(torch, torchvision, args.arch, args.source)
    if "fc.weight" not in sd:
        sys.exit(f"{args.source}: no 'fc.weight'; not a torchvision {args.arch} state dict")
    classes = sd["fc.weight"].shape[0]
    model = getattr(torchvision.models, args.arch)(num_classes=classes)  # no weights: nothing is fetched
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        sys.exit(f"{args.source} does not fit torchvision's {args.arch}:\n{e}")

    out = {name: t.detach().to(torch.float32).contiguous().clone()
           for name, t in model.state_dict().items() if not name.endswith("num_batches_tracked")}
    save_file(out, args.out, metadata={"format": "pt"})
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {args.out}: {len(out)} tensors, {params:,} parameters, {classes} classes ({args.arch})")


if __name__ == "__main__":
    main()
