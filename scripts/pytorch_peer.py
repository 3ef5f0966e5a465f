#!/usr/bin/env python3
"""PyTorch peer of the engine's training-throughput benchmark (build/ttq_throughput).

Trains a torchvision-style ResNet-18 (or the paper's BN AlexNet) on synthetic data with a TTQ
autograd Function per quantized layer (shared/TTQ-SPEC.md, max mode), and prints, after free-form
lines, exactly one result line in the engine's format:

  THROUGHPUT impl=pytorch model=<name> precision=<fp32|bf16> ttq=<0|1> batch=<N> images_per_s=<float> step_ms=<float>
             memory_format=<contiguous|channels_last> cudnn_benchmark=<0|1>

TTQ per quantized layer: latent weights W (the conv/linear weight the optimizer updates), trainable
scalars Wp, Wn (initialised to 1.0), D = t * max|W| (t = 0.05) recomputed every step,
w_t = +Wp where W > D, -Wn where W < -D, 0 otherwise. Backward with g = dL/dw_t: dL/dW = Wp*g on
I_p, g in the zero band, Wn*g on I_n; dL/dWp = sum of g over I_p; dL/dWn = -sum of g over I_n.
ResNet-18: every conv except the stem (conv1) is ternary (the 1x1 downsamples included: 19
layers); fc stays full precision. AlexNet: conv1..conv4, fc0, fc1 are ternary; conv0 and fct stay
full precision.

Training: SGD momentum 0.9, weight decay 1e-4, lr 0.1 (constant), cross-entropy; inputs are random
normal images and random labels generated once on the device (no data loading is timed). bf16 runs
under torch.autocast (weights and optimizer in fp32); fp32 runs with TF32 off unless --tf32 (the
engine's cuDNN/cuBLAS calls keep fp32 in fp32). Timing: --warmup steps, then --steps steps between
two CUDA events (wall clock on the CPU).

Nothing is downloaded. Examples:
  python3 scripts/pytorch_peer.py --precision bf16
  python3 scripts/pytorch_peer.py --precision fp32 --batch 256
  python3 scripts/pytorch_peer.py --device cpu --steps 2 --warmup 1 --batch 2 --image-size 64   # smoke check
Without a GPU and --device cuda (the default) it prints why, "SKIPPED: no GPU" and exits 0.
"""

import argparse
import math
import platform
import sys
import time


def parse_args(argv):
    p = argparse.ArgumentParser(description="PyTorch training-throughput peer (TTQ ResNet-18 / AlexNet)")
    p.add_argument("--model", choices=["resnet18", "alexnet"], default="resnet18")
    p.add_argument("--batch", type=int, default=256, help="images per step (default 256)")
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC activations and weights (default: on for bf16, off for fp32)")
    p.add_argument("--compile", action="store_true", help="wrap the model in torch.compile (default off)")
    p.add_argument("--ttq", action=argparse.BooleanOptionalAction, default=True,
                   help="ternarize the quantized layers (default on); --no-ttq trains full precision")
    p.add_argument("--t", type=float, default=0.05, help="TTQ threshold factor: D = t * max|W| (default 0.05)")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (default 10)")
    p.add_argument("--steps", type=int, default=30, help="timed steps (default 30)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    p.add_argument("--tf32", action="store_true", help="fp32 only: allow TF32 tensor cores (default off)")
    p.add_argument("--cudnn-benchmark", action=argparse.BooleanOptionalAction, default=True,
                   help="let cuDNN time its algorithms during warm-up (default on)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.batch < 1 or a.steps < 1 or a.warmup < 0:
        p.error("--batch and --steps must be >= 1, --warmup >= 0")
    if a.image_size < (44 if a.model == "alexnet" else 32):
        p.error("--image-size too small for %s" % a.model)
    if a.num_classes < 1:
        p.error("--num-classes must be >= 1")
    if a.channels_last is None:
        a.channels_last = a.precision == "bf16"
    return a


def main(argv):
    args = parse_args(argv)
    try:
        import torch
        import torch.nn as nn
        import torch.nn.functional as F
    except ImportError as e:
        print("pytorch_peer: error: PyTorch is not installed (%s)" % e, file=sys.stderr)
        return 1

    # ---- device -------------------------------------------------------------------------------
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print("pytorch_peer: no GPU: torch %s reports torch.cuda.is_available() == False (CUDA build: %s)"
                  % (torch.__version__, torch.version.cuda))
            print("SKIPPED: no GPU")
            return 0
        if device.index is not None and device.index >= torch.cuda.device_count():
            print("pytorch_peer: error: %s requested, %d CUDA device(s) found"
                  % (args.device, torch.cuda.device_count()), file=sys.stderr)
            return 1
        if device.index is not None:
            torch.cuda.set_device(device.index)
        device = torch.device("cuda", torch.cuda.current_device())
        torch.backends.cudnn.benchmark = args.cudnn_benchmark
        allow_tf32 = args.precision == "fp32" and args.tf32
        torch.backends.cuda.matmul.allow_tf32 = allow_tf32
        torch.backends.cudnn.allow_tf32 = allow_tf32
        device_desc = "%s (%s)" % (device, torch.cuda.get_device_name(device))
    elif device.type == "cpu":
        allow_tf32 = False
        device_desc = "cpu (%s, %d threads)" % (platform.processor() or platform.machine(), torch.get_num_threads())
    else:
        print("pytorch_peer: error: unsupported --device %s (use cuda, cuda:N or cpu)" % args.device, file=sys.stderr)
        return 1
    torch.manual_seed(args.seed)

    # ---- TTQ ----------------------------------------------------------------------------------
    class TTQFunction(torch.autograd.Function):
        """w_t = +Wp / 0 / -Wn by D = t * max|W|; the TTQ gradients of TTQ-SPEC.md (max mode)."""

        @staticmethod
        def forward(ctx, w, wp, wn, t):
            d = t * w.detach().abs().amax()           # stays on the device: no host sync
            pos = w > d
            neg = (w < -d) & ~pos                     # I_p wins if both could hold (D < 0 never here)
            zero = w.new_zeros(())
            w_t = torch.where(pos, wp.to(w.dtype), torch.where(neg, -wn.to(w.dtype), zero))
            ctx.save_for_backward(pos, neg, wp, wn)
            return w_t

        @staticmethod
        def backward(ctx, g):
            pos, neg, wp, wn = ctx.saved_tensors
            zero = g.new_zeros(())
            one = g.new_ones(())
            scale = torch.where(pos, wp.to(g.dtype), torch.where(neg, wn.to(g.dtype), one))
            grad_w = scale * g
            grad_wp = torch.where(pos, g, zero).sum().to(wp.dtype)
            grad_wn = (-torch.where(neg, g, zero).sum()).to(wn.dtype)
            return grad_w, grad_wp, grad_wn, None

    class TernaryConv2d(nn.Module):
        """A conv whose weight is ternarized every forward; keeps the conv's parameters."""

        def __init__(self, conv, t):
            super().__init__()
            self.conv = conv
            self.t = t
            self.wp = nn.Parameter(torch.ones((), device=conv.weight.device))
            self.wn = nn.Parameter(torch.ones((), device=conv.weight.device))

        def forward(self, x):
            c = self.conv
            w_t = TTQFunction.apply(c.weight, self.wp, self.wn, self.t)
            return F.conv2d(x, w_t, c.bias, c.stride, c.padding, c.dilation, c.groups)

    class TernaryLinear(nn.Module):
        def __init__(self, linear, t):
            super().__init__()
            self.linear = linear
            self.t = t
            self.wp = nn.Parameter(torch.ones((), device=linear.weight.device))
            self.wn = nn.Parameter(torch.ones((), device=linear.weight.device))

        def forward(self, x):
            w_t = TTQFunction.apply(self.linear.weight, self.wp, self.wn, self.t)
            return F.linear(x, w_t, self.linear.bias)

    def ternarize(model, keep_full_precision):
        """Replaces every Conv2d/Linear whose qualified name is not in keep_full_precision."""
        replaced = []
        for name, module in list(model.named_modules()):
            for child_name, child in list(module.named_children()):
                full = "%s.%s" % (name, child_name) if name else child_name
                if full in keep_full_precision:
                    continue
                if type(child) is nn.Conv2d:
                    setattr(module, child_name, TernaryConv2d(child, args.t))
                    replaced.append((full, child.weight.numel()))
                elif type(child) is nn.Linear:
                    setattr(module, child_name, TernaryLinear(child, args.t))
                    replaced.append((full, child.weight.numel()))
        return replaced

    # ---- models -------------------------------------------------------------------------------
    def builtin_resnet18(num_classes):
        """torchvision.models.resnet18's architecture, names and initialisation (used only when
        torchvision is not installed)."""

        class BasicBlock(nn.Module):
            def __init__(self, cin, cout, stride):
                super().__init__()
                self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
                self.bn1 = nn.BatchNorm2d(cout)
                self.relu = nn.ReLU(inplace=True)
                self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
                self.bn2 = nn.BatchNorm2d(cout)
                self.downsample = None
                if stride != 1 or cin != cout:
                    self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

            def forward(self, x):
                identity = x if self.downsample is None else self.downsample(x)
                out = self.relu(self.bn1(self.conv1(x)))
                out = self.bn2(self.conv2(out))
                return self.relu(out + identity)

        class ResNet18(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
                self.bn1 = nn.BatchNorm2d(64)
                self.relu = nn.ReLU(inplace=True)
                self.maxpool = nn.MaxPool2d(3, 2, 1)
                cin, stages = 64, []
                for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
                    stages.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
                    cin = cout
                self.layer1, self.layer2, self.layer3, self.layer4 = stages
                self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
                self.fc = nn.Linear(512, num_classes)
                for m in self.modules():
                    if isinstance(m, nn.Conv2d):
                        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    elif isinstance(m, nn.BatchNorm2d):
                        nn.init.constant_(m.weight, 1)
                        nn.init.constant_(m.bias, 0)

            def forward(self, x):
                x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
                x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
                return self.fc(torch.flatten(self.avgpool(x), 1))

        return ResNet18()

    def resnet18(num_classes):
        try:
            import torchvision
        except Exception as e:  # absent, or built for another torch (RuntimeError, OSError)
            return builtin_resnet18(num_classes), \
                "built-in copy of torchvision's resnet18 (torchvision not usable: %s)" % type(e).__name__
        return torchvision.models.resnet18(weights=None, num_classes=num_classes), \
            "torchvision %s resnet18" % torchvision.__version__

    def alexnet(num_classes, image_size):
        """The paper's BN AlexNet (TTQ-SPEC.md): DoReFa-style, no biases except fct, no dropout.
        TF "same" 3/2 max pooling is MaxPool2d(3, 2, padding=1) (same output size)."""
        x = (image_size - 12) // 4 + 1          # conv0 12x12 stride 4 valid
        x = (x + 1) // 2                        # pool after conv1 (same)
        x = (x + 1) // 2                        # pool after conv2 (same)
        x = (x - 3) // 2 + 1                    # pool after conv4 (valid); 224 -> 6, 9216 features
        features = 256 * x * x

        def bn2d(c):
            return nn.BatchNorm2d(c, eps=1e-4, momentum=0.1)

        def bn1d(c):
            return nn.BatchNorm1d(c, eps=1e-4, momentum=0.1)

        net = nn.Sequential()
        net.add_module("conv0", nn.Conv2d(3, 96, 12, 4, 0, bias=False))
        net.add_module("relu0", nn.ReLU(inplace=True))
        net.add_module("conv1", nn.Conv2d(96, 256, 5, 1, 2, groups=2, bias=False))
        net.add_module("bn1", bn2d(256))
        net.add_module("pool1", nn.MaxPool2d(3, 2, 1))
        net.add_module("relu1", nn.ReLU(inplace=True))
        net.add_module("conv2", nn.Conv2d(256, 384, 3, 1, 1, bias=False))
        net.add_module("bn2", bn2d(384))
        net.add_module("pool2", nn.MaxPool2d(3, 2, 1))
        net.add_module("relu2", nn.ReLU(inplace=True))
        net.add_module("conv3", nn.Conv2d(384, 384, 3, 1, 1, groups=2, bias=False))
        net.add_module("bn3", bn2d(384))
        net.add_module("relu3", nn.ReLU(inplace=True))
        net.add_module("conv4", nn.Conv2d(384, 256, 3, 1, 1, groups=2, bias=False))
        net.add_module("bn4", bn2d(256))
        net.add_module("pool4", nn.MaxPool2d(3, 2, 0))
        net.add_module("relu4", nn.ReLU(inplace=True))
        net.add_module("flatten", nn.Flatten())
        net.add_module("fc0", nn.Linear(features, 4096, bias=False))
        net.add_module("bnfc0", bn1d(4096))
        net.add_module("relufc0", nn.ReLU(inplace=True))
        net.add_module("fc1", nn.Linear(4096, 4096, bias=False))
        net.add_module("bnfc1", bn1d(4096))
        net.add_module("relufc1", nn.ReLU(inplace=True))
        net.add_module("fct", nn.Linear(4096, num_classes, bias=True))
        return net, "the paper's BN AlexNet (%d features into fc0)" % features

    if args.model == "resnet18":
        model, model_desc = resnet18(args.num_classes)
        full_precision = {"conv1", "fc"}
    else:
        model, model_desc = alexnet(args.num_classes, args.image_size)
        full_precision = {"conv0", "fct"}
    ternary = ternarize(model, full_precision) if args.ttq else []
    if args.ttq and args.model == "resnet18" and len(ternary) != 19:
        print("pytorch_peer: error: expected 19 ternary layers in resnet18, got %d" % len(ternary), file=sys.stderr)
        return 1
    model = model.to(device)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    model.train()
    params = sum(p.numel() for p in model.parameters())

    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    step_model = torch.compile(model) if args.compile else model

    gen = torch.Generator(device=device).manual_seed(args.seed)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device, generator=gen)
    x = x.contiguous(memory_format=memory_format)
    y = torch.randint(0, args.num_classes, (args.batch,), device=device, generator=gen)
    bf16 = args.precision == "bf16"

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(step_model(x), y)
        loss.backward()
        optimizer.step()
        return loss.detach()

    print("pytorch_peer: torch %s (CUDA %s), python %s" % (torch.__version__, torch.version.cuda,
                                                        platform.python_version()))
    print("pytorch_peer: device %s" % device_desc)
    print("pytorch_peer: model %s: %s, %d parameters" % (args.model, model_desc, params))
    if args.ttq:
        print("pytorch_peer: TTQ (max mode, t = %g) on %d layers, %d weights: %s"
              % (args.t, len(ternary), sum(n for _, n in ternary), " ".join(name for name, _ in ternary)))
    else:
        print("pytorch_peer: TTQ off (full-precision training)")
    print("pytorch_peer: precision %s%s, channels_last %s, compile %s, TF32 %s, cudnn.benchmark %s"
          % (args.precision, " (autocast)" if bf16 else "", "on" if args.channels_last else "off",
             "on" if args.compile else "off", "on" if allow_tf32 else "off",
             "on" if (device.type == "cuda" and args.cudnn_benchmark) else "off"))
    print("pytorch_peer: batch %d, image %dx%d, SGD lr %g momentum %g wd %g, %d warm-up + %d timed steps"
          % (args.batch, args.image_size, args.image_size, args.lr, args.momentum, args.weight_decay,
             args.warmup, args.steps))
    sys.stdout.flush()

    cuda = device.type == "cuda"
    try:
        t_warm = time.perf_counter()
        first_loss = None
        for _ in range(args.warmup):
            loss = step()
            if first_loss is None:
                first_loss = loss
        if cuda:
            torch.cuda.synchronize(device)
        warm_s = time.perf_counter() - t_warm
        if cuda:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            loss = step()
            if first_loss is None:
                first_loss = loss
        if cuda:
            end.record()
            torch.cuda.synchronize(device)
            elapsed_ms = start.elapsed_time(end)
        else:
            elapsed_ms = 1e3 * (time.perf_counter() - t0)
    except torch.cuda.OutOfMemoryError as e:
        print("pytorch_peer: error: out of GPU memory at batch %d (%s)" % (args.batch, str(e).splitlines()[0]),
              file=sys.stderr)
        return 1

    step_ms = elapsed_ms / args.steps
    images_per_s = 1e3 * args.batch / step_ms
    first, last = float(first_loss), float(loss)
    print("pytorch_peer: warm-up %.1f s; loss %.4f (first step) -> %.4f (last step)%s"
          % (warm_s, first, last, "" if math.isfinite(last) else "  [non-finite loss: timing still valid]"))
    if cuda:
        print("pytorch_peer: peak GPU memory %.1f GiB" % (torch.cuda.max_memory_allocated(device) / 2**30))
    print("THROUGHPUT impl=pytorch model=%s precision=%s ttq=%d batch=%d images_per_s=%.1f step_ms=%.3f "
          "memory_format=%s cudnn_benchmark=%d"
          % (args.model, args.precision, 1 if args.ttq else 0, args.batch, images_per_s, step_ms,
             "channels_last" if args.channels_last else "contiguous", 1 if (cuda and args.cudnn_benchmark) else 0))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
