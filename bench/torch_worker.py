#!/usr/bin/python3
"""PyTorch (Debian's python3-torch) benchmark worker for bench/compare.py.

Speaks the line protocol of `normkit bench --serve` (tools/bench_serve.c):

    setup ID OP PASS SHAPE LAYOUT  -> "ok ID <us of one warm call> <what is timed>" | "na ..." | "err ..."
    time ID REPS                   -> "t <us> <us> ..."
    free ID                        -> "ok"
    quit

What is timed (float32, eps 1e-5, the same thread count as the other workers via
torch.set_num_threads):
  forward   torch.nn.functional.batch_norm / group_norm / instance_norm / layer_norm under
            torch.no_grad() (the kernels still save mean and invstd, as a training step would);
  backward  only the op's backward: torch.ops.aten.native_{batch,group,layer}_norm_backward on
            the saved statistics of one forward; instance_norm has no native backward of its
            own (it is batch_norm on a (1, N*C, H, W) view), so its backward is
            torch.autograd.grad over a retained graph;
  rms       torch 1.13 has no RMSNorm op: the composed expression
            x * rsqrt(mean(x^2, -1) + eps) * w, its backward via autograd, labelled "composed".
NHWC is torch.channels_last. Each timed call includes Python's call overhead (a few us), which
is what a PyTorch user pays too. Outputs are allocated by PyTorch on every call; compare.py
raises glibc's mmap threshold so that they are reused rather than returned to the OS.
"""
import argparse
import sys
import time

import torch
import torch.nn.functional as F

EPS = 1e-5
MOMENTUM = 0.1
GN_GROUPS = 32  # bench's default for C >= 32
WARMUP = 3
ALL3 = [True, True, True]


def rand(shape, seed, scale, shift, layout):
    g = torch.Generator().manual_seed(seed)
    t = (torch.rand(*shape, generator=g) - 0.5) * scale + shift
    if layout == "nhwc":
        t = t.contiguous(memory_format=torch.channels_last)
    return t


def build(op, pas, dims, layout):
    """Returns (callable, label) or raises LookupError("why") for n/a."""
    rowwise = op in ("ln", "rms")
    if rowwise and layout != "rows":
        raise ValueError("ln and rms use layout rows")
    if not rowwise and layout not in ("nchw", "nhwc"):
        raise LookupError("PyTorch has no %s layout" % layout)
    if pas == "fwd-infer" and op != "bn":
        raise LookupError("only bn is timed in inference mode")
    x = rand(dims, 1, 4.0, 1.0, layout)
    dy = rand(dims, 2, 2.0, 0.0, layout) if pas == "bwd" else None
    C = dims[-1] if rowwise else dims[1]
    w = rand([C], 3, 0.5, 1.0, "rows")
    b = rand([C], 4, 0.5, 0.0, "rows")
    aten = torch.ops.aten
    if op == "bn":
        rm = rand([C], 5, 0.2, 1.0, "rows")
        rv = rand([C], 6, 0.5, 1.5, "rows")
        if pas == "fwd-train":
            return (lambda: F.batch_norm(x, rm, rv, w, b, True, MOMENTUM, EPS)), "F.batch_norm"
        if pas == "fwd-infer":
            return (lambda: F.batch_norm(x, rm, rv, w, b, False, MOMENTUM, EPS)), "F.batch_norm"
        _, sm, si = aten.native_batch_norm(x, w, b, rm, rv, True, MOMENTUM, EPS)
        return (lambda: aten.native_batch_norm_backward(dy, x, w, rm, rv, sm, si, True, EPS, ALL3),
                "aten.native_batch_norm_backward")
    if op == "gn":
        G = GN_GROUPS if C >= GN_GROUPS else C
        if pas == "fwd-train":
            return (lambda: F.group_norm(x, G, w, b, EPS)), "F.group_norm"
        N, HW = dims[0], x.numel() // (dims[0] * C)
        _, mean, rstd = aten.native_group_norm(x, w, b, N, C, HW, G, EPS)
        return (lambda: aten.native_group_norm_backward(dy, x, mean, rstd, w, N, C, HW, G, ALL3),
                "aten.native_group_norm_backward")
    if op == "in":
        if pas == "fwd-train":
            return (lambda: F.instance_norm(x, None, None, w, b, True, MOMENTUM, EPS)), "F.instance_norm"
        with torch.enable_grad():
            xr, wr, br = (t.detach().requires_grad_() for t in (x, w, b))
            y = F.instance_norm(xr, None, None, wr, br, True, MOMENTUM, EPS)
        return (lambda: torch.autograd.grad(y, (xr, wr, br), dy, retain_graph=True),
                "autograd(F.instance_norm)")
    if op == "ln":
        K = [C]
        if pas == "fwd-train":
            return (lambda: F.layer_norm(x, K, w, b, EPS)), "F.layer_norm"
        _, mean, rstd = aten.native_layer_norm(x, K, w, b, EPS)
        return (lambda: aten.native_layer_norm_backward(dy, x, K, mean, rstd, w, b, ALL3),
                "aten.native_layer_norm_backward")
    if op == "rms":
        def rms(t, g):
            return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + EPS) * g
        if pas == "fwd-train":
            return (lambda: rms(x, w)), "composed(x*rsqrt(mean(x^2)+eps)*w)"
        with torch.enable_grad():
            xr, wr = (t.detach().requires_grad_() for t in (x, w))
            y = rms(xr, wr)
        return (lambda: torch.autograd.grad(y, (xr, wr), dy, retain_graph=True)), "autograd(composed)"
    raise ValueError("unknown op " + op)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    slots = {}
    out = sys.stdout
    for line in sys.stdin:
        f = line.split()
        if not f:
            continue
        if f[0] == "quit":
            break
        try:
            sid = int(f[1])
            if f[0] == "setup":
                slots.pop(sid, None)
                op, pas, shape, layout = f[2:6]
                dims = [int(v) for v in shape.lower().split("x")]
                try:
                    with torch.no_grad():
                        fn, label = build(op, pas, dims, layout)
                except LookupError as e:
                    out.write("na %s\n" % e)
                    out.flush()
                    continue
                with torch.no_grad():
                    for _ in range(WARMUP):
                        t0 = time.perf_counter()
                        r = fn()
                        warm = time.perf_counter() - t0
                        del r
                slots[sid] = fn
                out.write("ok %d %.3f %s\n" % (sid, 1e6 * warm, label.replace(" ", "")))
            elif f[0] == "time":
                fn, reps = slots[sid], int(f[2])
                ts = [0.0] * reps
                pc = time.perf_counter
                with torch.no_grad():
                    for i in range(reps):
                        t0 = pc()
                        r = fn()
                        ts[i] = pc() - t0
                        del r  # the output is freed before the next call, as in a layer loop
                out.write("t " + " ".join("%.3f" % (1e6 * t) for t in ts) + "\n")
            elif f[0] == "free":
                slots.pop(sid, None)
                out.write("ok\n")
            else:
                out.write("err unknown command %s\n" % f[0])
        except Exception as e:  # report and keep serving: one bad case must not end the run
            out.write("err %s: %s\n" % (type(e).__name__, str(e).replace("\n", " ")[:200]))
        out.flush()


if __name__ == "__main__":
    main()
