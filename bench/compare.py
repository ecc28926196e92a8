#!/usr/bin/python3
"""normkit vs PyTorch vs oneDNN on the standard shapes, interleaved in one run (a benchmark, not
a test; `make bench-compare` runs it).

Every implementation is a persistent worker process speaking the same line protocol
(tools/bench_serve.c): `normkit bench --serve` (which also times the copy / add baseline),
bench/torch_worker.py and bench/dnnl_worker.c, one of each per thread count. For each case
(op, pass, shape, threads) every worker sets up its layouts first (buffers allocated, touched,
filled with seeded data, warmed up), then R rounds run; in each round every entry (normkit NCHW,
normkit NHWC, the baseline, PyTorch NCHW, ...) runs its calls in turn, the starting entry
rotating from round to round, so slow drift on a shared machine hits all of them alike. Median
and min are over all timed calls of all rounds.

  gbps           bytes the op must move / median: forward x + y, backward x + dy + dx
  ratio_to_copy  median / median of the same-size copy (forward) or add (backward) measured in
                 the same case, same threads; < 1 is faster than the memory pass

Writes OUT.csv (op, pass, shape, layout, threads, impl, median_us, min_us, gbps,
ratio_to_copy, then calls and detail), OUT.md (machine, tables, target checks) and, unless
--quick or a partial run (--ops, --threads, --shapes or --passes narrower than the standard
set: written to bench/results/partial.*), the marked
section of docs/performance.md. Progress goes to stderr.

    python3 bench/compare.py --normkit build/normkit --dnnl build/dnnl_worker
    python3 bench/compare.py ... --quick                 # smoke run: small shapes, 2 rounds
    python3 bench/compare.py ... --ops bn,ln --threads 1
    python3 bench/compare.py ... --ops gn --shapes 64x512x7x7 --passes bwd   # partial run
"""
import argparse
import csv
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

PASSES = {"bn": ["fwd-train", "fwd-infer", "bwd"], "ln": ["fwd-train", "bwd"],
          "gn": ["fwd-train", "bwd"], "in": ["fwd-train", "bwd"], "rms": ["fwd-train", "bwd"]}
OP_TITLES = {"bn": "BatchNorm", "ln": "LayerNorm", "gn": "GroupNorm (32 groups)",
             "in": "InstanceNorm", "rms": "RMSNorm"}
CHANNEL_SHAPES = ["32x64x56x56", "16x256x56x56", "64x512x7x7", "8x64x28x28"]
ROW_SHAPES = ["8192x1024", "512x768"]
# Per-call overhead: the target is stated at this shape, BN only.
OVERHEAD_SHAPE = "8x64x1x1"
# Shapes whose x + y exceed this machine class's L3 (32 MiB): the memory-bound targets.
LARGE_SHAPES = ["32x64x56x56", "16x256x56x56"]
# BN speed as a fraction of the memory pass (copy for forwards, add for the backward).
SPEED_TARGETS = {"fwd-train": 0.80, "fwd-infer": 1.00, "bwd": 0.90}
GN_IN_NHWC_SPEEDUP = 5.0
OVERHEAD_US = 5.0
# Peers allocate their outputs on every call; with glibc's default, outputs above the dynamic
# mmap threshold are returned to the OS and faulted back in each time (3-5x slower for the
# large shapes). normkit's callers supply buffers, so for a fair comparison the peers keep
# theirs in the heap.
PEER_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 32), "MALLOC_TRIM_THRESHOLD_": str(1 << 34)}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Worker:
    """One implementation at one thread count, over stdin/stdout."""

    def __init__(self, impl, argv, threads):
        self.impl = impl
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), **PEER_ENV)
        self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True, bufsize=1, env=env)

    def ask(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()
        ans = self.p.stdout.readline()
        if not ans:
            raise RuntimeError("%s worker ended (exit %s) on '%s'" % (self.impl, self.p.poll(), line))
        return ans.split()

    def close(self):
        try:
            self.p.stdin.write("quit\n")
            self.p.stdin.close()
            self.p.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            self.p.kill()


class Entry:
    """One timed line of a case: an implementation on one layout (or the baseline)."""

    def __init__(self, impl, layout, worker, slot, cmd="time"):
        self.impl, self.layout, self.worker, self.slot, self.cmd = impl, layout, worker, slot, cmd
        self.times, self.detail, self.na, self.reps = [], "", None, 1


def layouts_for(op):
    return ["rows"] if op in ("ln", "rms") else ["nchw", "nhwc", "blocked"]


def numel(shape):
    n = 1
    for v in shape.split("x"):
        n *= int(v)
    return n


def run_case(workers, op, pas, shape, threads, rounds, target_s, min_reps, max_reps, settle_s):
    entries = []
    for impl in ("normkit", "pytorch", "onednn"):
        w = workers.get(impl)
        if w is None or w.p.poll() is not None:
            continue
        for slot, layout in enumerate(layouts_for(op)):
            if layout == "blocked" and impl != "onednn":
                continue  # oneDNN's own layout, timed as the reference point only
            e = Entry(impl, layout, w, slot)
            ans = w.ask("setup %d %s %s %s %s" % (slot, op, pas, shape, layout))
            if ans[0] == "ok":
                warm_s = float(ans[2]) * 1e-6
                e.detail = " ".join(ans[3:])
                e.reps = max(min_reps, min(max_reps, int(target_s / max(warm_s, 1e-7))))
            else:
                e.na = " ".join(ans[1:]) or ans[0]
                if ans[0] == "err":
                    log("  %s %s: error: %s" % (impl, layout, e.na))
            entries.append(e)
            if impl == "normkit" and slot == 0 and e.na is None:
                base = Entry("add" if pas == "bwd" else "copy", "any", w, 0, "base")
                base.reps = e.reps
                entries.append(base)
    live = [e for e in entries if e.na is None]
    for r in range(rounds):
        k = r % len(live) if live else 0
        for e in live[k:] + live[:k]:
            ans = e.worker.ask("%s %d %d" % (e.cmd, e.slot, e.reps))
            if ans[0] != "t":
                e.na = "error: " + " ".join(ans[1:])
                log("  %s %s: %s" % (e.impl, e.layout, e.na))
                live = [x for x in live if x is not e]
                break
            batch = [float(v) for v in ans[1:]]
            e.times.extend(batch)
            # Calls per round came from one warm call; on a loaded machine a call can take a
            # scheduler time slice instead, so fewer calls keep the run's length bounded.
            spent = sum(batch) * 1e-6
            if spent > 2 * target_s:
                e.reps = max(min_reps, int(e.reps * target_s / spent))
            # Every worker's OpenMP threads spin a while (libgomp's GOMP_SPINCOUNT) after its
            # last parallel region before they sleep; left alone they would steal a core from
            # the next entry. A pause lets them settle, so each entry runs on a quiet machine.
            if threads > 1:
                time.sleep(settle_s)
    for w in workers.values():
        if w.p.poll() is None:
            for slot in range(len(layouts_for(op))):
                w.ask("free %d" % slot)
    base = next((e for e in entries if e.cmd == "base" and e.times), None)
    base_med = statistics.median(base.times) if base else None
    moved = numel(shape) * 4 * (3 if pas == "bwd" else 2)
    rows = []
    for e in entries:
        row = {"op": op, "pass": pas, "shape": shape, "layout": e.layout, "threads": threads,
               "impl": e.impl, "median_us": "n/a", "min_us": "n/a", "gbps": "n/a",
               "ratio_to_copy": "n/a", "calls": 0, "detail": e.na or e.detail}
        if e.na is None and e.times:
            med = statistics.median(e.times)
            row.update(median_us="%.2f" % med, min_us="%.2f" % min(e.times),
                       gbps="%.2f" % (moved / (med * 1e-6) * 1e-9), calls=len(e.times),
                       ratio_to_copy="%.3f" % (med / base_med) if base_med else "n/a")
        rows.append(row)
    return rows


# ---- report --------------------------------------------------------------------------------

def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine():
    lscpu = {}
    for line in sh("LC_ALL=C lscpu").splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            lscpu[k.strip()] = v.strip()
    mem = sh("awk '/MemTotal/ {printf \"%.1f GiB\", $2 / 1048576}' /proc/meminfo")
    gcc = sh("gcc --version | head -1")
    torch_v = sh("dpkg-query -W -f='${Version}' python3-torch")
    dnnl_v = sh("dpkg-query -W -f='${Version}' libdnnl-dev")
    return [
        ("CPU", "%s, %s CPUs (%s cores x %s threads/core), %s" % (
            lscpu.get("Model name", "?"), lscpu.get("CPU(s)", "?"),
            lscpu.get("Core(s) per socket", "?"), lscpu.get("Thread(s) per core", "?"),
            lscpu.get("Hypervisor vendor", "bare metal") + (" guest" if "Hypervisor vendor" in lscpu else ""))),
        ("Caches", "L1d %s, L2 %s, L3 %s" % (lscpu.get("L1d cache", "?"), lscpu.get("L2 cache", "?"),
                                             lscpu.get("L3 cache", "?"))),
        ("Memory", mem or "?"),
        ("Kernel", platform.system() + " " + platform.release()),
        ("Compiler", gcc or "?"),
        ("PyTorch", "python3-torch %s" % (torch_v or "?")),
        ("oneDNN", "libdnnl-dev %s" % (dnnl_v or "?")),
    ]


def num(row):
    try:
        return float(row["median_us"])
    except ValueError:
        return None


def cell(row):
    if row is None:
        return "-"
    v = num(row)
    if v is None:
        return "n/a"
    r = row["ratio_to_copy"]
    return "%s (%s)" % (fmt_us(v), r if r == "n/a" else "%.2f" % float(r))


def fmt_us(v):
    return "%.1f" % v if v < 1000 else "%.0f" % v


def index(rows):
    return {(r["op"], r["pass"], r["shape"], r["threads"], r["impl"], r["layout"]): r for r in rows}


def tables(rows, ops, cases):
    ix = index(rows)
    out = []
    for op in ops:
        rowwise = op in ("ln", "rms")
        lays = ["rows"] if rowwise else ["nchw", "nhwc"]
        out.append("### %s\n" % OP_TITLES[op])
        head = ["pass", "shape", "T", "copy/add"]
        for impl in ("normkit", "pytorch", "onednn"):
            for lay in lays:
                head.append(impl if rowwise else "%s %s" % (impl, lay.upper()))
        if not rowwise:
            head.append("onednn nChw16c")
        head += ["normkit vs best peer" + ("" if rowwise else " " + lay.upper()) for lay in lays]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for (cop, pas, shape, t) in cases:
            if cop != op:
                continue
            base = ix.get((op, pas, shape, t, "add" if pas == "bwd" else "copy", "any"))
            line = [pas, shape, str(t), fmt_us(num(base)) if base and num(base) else "n/a"]
            for impl in ("normkit", "pytorch", "onednn"):
                for lay in lays:
                    line.append(cell(ix.get((op, pas, shape, t, impl, lay))))
            if not rowwise:
                line.append(cell(ix.get((op, pas, shape, t, "onednn", "blocked"))))
            for lay in lays:
                nk = ix.get((op, pas, shape, t, "normkit", lay))
                peers = [num(ix[k]) for k in ((op, pas, shape, t, p, lay) for p in ("pytorch", "onednn"))
                         if k in ix and num(ix[k]) is not None]
                if nk is None or num(nk) is None or not peers:
                    line.append("n/a")
                else:
                    line.append("%.2fx" % (min(peers) / num(nk)))
            out.append("| " + " | ".join(line) + " |")
        out.append("")
    return out


def checks(rows, cases):
    """The issue's targets, each as (title, [(ok, text)])."""
    ix = index(rows)
    res = []

    def med(op, pas, shape, t, impl, lay):
        r = ix.get((op, pas, shape, t, impl, lay))
        return num(r) if r else None

    std = [c for c in cases if c[2] != OVERHEAD_SHAPE]
    items = []
    for (op, pas, shape, t) in std:
        for lay in (["rows"] if op in ("ln", "rms") else ["nchw", "nhwc"]):
            nk = med(op, pas, shape, t, "normkit", lay)
            for peer in ("pytorch", "onednn"):
                p = med(op, pas, shape, t, peer, lay)
                if nk is None or p is None:
                    continue
                items.append((nk < p, "%s %s %s %s T%d: normkit %s us vs %s %s us (%.2fx)" % (
                    op, pas, shape, lay, t, fmt_us(nk), peer, fmt_us(p), p / nk)))
    res.append(("normkit faster than PyTorch and oneDNN on the same layout (NCHW, NHWC, rows), "
                "every standard shape and thread count", items))
    items = []
    for (op, pas, shape, t) in std:
        b = med(op, pas, shape, t, "onednn", "blocked")
        if b is None:
            continue
        for lay in ("nchw", "nhwc"):
            nk = med(op, pas, shape, t, "normkit", lay)
            if nk is not None:
                items.append((nk <= b, "%s %s %s %s T%d: normkit %s us vs oneDNN nChw16c %s us (%.2fx)" % (
                    op, pas, shape, lay, t, fmt_us(nk), fmt_us(b), b / nk)))
    res.append(("normkit (NCHW and NHWC) at least as fast as oneDNN on its blocked layout", items))
    items = []
    for (op, pas, shape, t) in std:
        if op != "bn" or shape not in LARGE_SHAPES:
            continue
        base = med(op, pas, shape, t, "add" if pas == "bwd" else "copy", "any")
        for lay in ("nchw", "nhwc"):
            nk = med(op, pas, shape, t, "normkit", lay)
            if nk is None or base is None:
                continue
            speed = base / nk
            items.append((speed >= SPEED_TARGETS[pas], "bn %s %s %s T%d: %.0f%% of %s speed (target %.0f%%)" % (
                pas, shape, lay, t, 100 * speed, "add" if pas == "bwd" else "copy",
                100 * SPEED_TARGETS[pas])))
    res.append(("large shapes (%s): BN fwd training >= 80%% of copy speed, inference >= 100%%, "
                "backward >= 90%% of add" % ", ".join(LARGE_SHAPES), items))
    items = []
    for (op, pas, shape, t) in std:
        if op not in ("gn", "in"):
            continue
        nk, p = med(op, pas, shape, t, "normkit", "nhwc"), med(op, pas, shape, t, "pytorch", "nhwc")
        if nk is not None and p is not None:
            items.append((p / nk >= GN_IN_NHWC_SPEEDUP, "%s %s %s nhwc T%d: %.1fx PyTorch" % (
                op, pas, shape, t, p / nk)))
    res.append(("GN and IN on NHWC at least %gx PyTorch" % GN_IN_NHWC_SPEEDUP, items))
    items = []
    for (op, pas, shape, t) in std:
        if op != "ln":
            continue
        nk, d = med(op, pas, shape, t, "normkit", "rows"), med(op, pas, shape, t, "onednn", "rows")
        if nk is not None and d is not None:
            items.append((nk <= d, "ln %s %s T%d: normkit %s us vs oneDNN %s us (%.2fx)" % (
                pas, shape, t, fmt_us(nk), fmt_us(d), d / nk)))
    res.append(("LayerNorm at least as fast as oneDNN", items))
    items = []
    for (op, pas, shape, t) in cases:
        if shape != OVERHEAD_SHAPE:
            continue
        for lay in ("nchw", "nhwc"):
            nk = med(op, pas, shape, t, "normkit", lay)
            if nk is not None:
                items.append((nk < OVERHEAD_US, "%s %s %s %s T%d: %.2f us" % (op, pas, shape, lay, t, nk)))
    res.append(("per-call overhead under %g us at %s" % (OVERHEAD_US, OVERHEAD_SHAPE), items))
    return res


def report(rows, ops, cases, meta):
    out = ["_Generated by `bench/compare.py` (`make bench-compare`) on %s; %s._\n" % (
        meta["date"], meta["command"])]
    out.append("**Machine.**\n")
    out += ["- %s: %s" % kv for kv in meta["machine"]]
    out.append("- normkit kernels: %s; load average before / after the run: %s / %s; "
               "run time %.0f s" % (meta["kernels"], meta["load0"], meta["load1"], meta["elapsed"]))
    out.append("")
    out.append("Each cell: median us over every timed call (ratio to the same-size copy for "
               "forwards, add for the backward, timed alternately in the same run). `n/a`: the "
               "implementation has no such op or layout (reasons in latest.csv's detail column). "
               "\"normkit vs best peer\": best peer median / normkit median on that layout (> 1: "
               "normkit faster).\n")
    out += tables(rows, ops, cases)
    out.append("### Targets\n")
    for title, items in checks(rows, cases):
        if not items:
            out.append("- **%s**: not measured in this run" % title)
            continue
        bad = [t for ok, t in items if not ok]
        out.append("- **%s**: %s (%d of %d met)" % (title, "met" if not bad else "NOT met",
                                                    len(items) - len(bad), len(items)))
        for t in bad[:12]:
            out.append("  - not met: " + t)
        if len(bad) > 12:
            out.append("  - ... and %d more (see latest.csv)" % (len(bad) - 12))
    out.append("")
    return "\n".join(out)


BEGIN, END = "<!-- bench-compare:begin -->", "<!-- bench-compare:end -->"


def update_docs(path, md):
    text = open(path).read() if os.path.exists(path) else ""
    block = BEGIN + "\n" + md.rstrip() + "\n" + END
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    with open(path, "w") as f:
        f.write(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--normkit", default=os.path.join(ROOT, "build", "normkit"))
    ap.add_argument("--dnnl", default=os.path.join(ROOT, "build", "dnnl_worker"),
                    help="the oneDNN worker binary (skipped, with a warning, if missing)")
    ap.add_argument("--python", default="/usr/bin/python3", help="the Python with Debian's torch")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts [1,2]")
    ap.add_argument("--ops", default="bn,ln,gn,in,rms")
    ap.add_argument("--shapes", default=None,
                    help="comma-separated subset of the standard shapes (a partial run, as any narrower "
                    "--ops/--threads/--passes: writes bench/results/partial.* unless --out and "
                    "leaves docs/performance.md alone)")
    ap.add_argument("--passes", default=None,
                    help="comma-separated subset of fwd-train,fwd-infer,bwd (a partial run, as --shapes)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per case [5; 2 with --quick]")
    ap.add_argument("--target-ms", type=float, default=None,
                    help="time per entry per round, from which the calls per round follow [30; 5 with --quick]")
    ap.add_argument("--settle-ms", type=float, default=30.0,
                    help="pause after each entry's calls when threads > 1, so the previous "
                    "worker's spinning OpenMP threads are asleep before the next one runs [30]")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: the small shapes only, 2 rounds; writes bench/results/quick.* "
                    "and leaves docs/performance.md alone")
    ap.add_argument("--out", default=None, help="output prefix [bench/results/latest or .../quick]")
    ap.add_argument("--docs", default=os.path.join(ROOT, "docs", "performance.md"))
    ap.add_argument("--no-docs", action="store_true", help="do not update docs/performance.md")
    a = ap.parse_args()
    rounds = a.rounds or (2 if a.quick else 5)
    target_s = (a.target_ms or (5.0 if a.quick else 30.0)) * 1e-3
    ops = [o for o in a.ops.split(",") if o]
    for o in ops:
        if o not in PASSES:
            ap.error("unknown op %s" % o)
    threads_list = [int(t) for t in a.threads.split(",")]
    partial = (a.shapes is not None or a.passes is not None
               or set(ops) != set(PASSES) or sorted(threads_list) != [1, 2])
    out = a.out or os.path.join(ROOT, "bench", "results",
                                "quick" if a.quick else "partial" if partial else "latest")
    if partial:
        a.no_docs = True
    want_shapes = set(a.shapes.split(",")) if a.shapes else None
    want_passes = set(a.passes.split(",")) if a.passes else None
    ch = ["8x64x28x28"] if a.quick else CHANNEL_SHAPES
    rs = ["512x768"] if a.quick else ROW_SHAPES
    cases = []
    for t in threads_list:
        for op in ops:
            shapes = rs if op in ("ln", "rms") else ch + ([OVERHEAD_SHAPE] if op == "bn" else [])
            for shape in shapes:
                if want_shapes is not None and shape not in want_shapes:
                    continue
                for pas in PASSES[op]:
                    if want_passes is None or pas in want_passes:
                        cases.append((op, pas, shape, t))
    if not cases:
        ap.error("no case matches --ops/--shapes/--passes")
    if not os.access(a.normkit, os.X_OK):
        sys.exit("compare: %s not found (make build first)" % a.normkit)
    have_dnnl = os.access(a.dnnl, os.X_OK)
    if not have_dnnl:
        log("compare: %s not found: oneDNN rows will be missing (make bench-compare builds it)" % a.dnnl)
    load0 = os.getloadavg()[0]
    t0 = time.time()
    rows, kernels = [], "?"
    for t in threads_list:
        workers = {"normkit": Worker("normkit", [a.normkit, "bench", "--serve", "--threads", str(t)], t),
                   "pytorch": Worker("pytorch", [a.python, os.path.join(HERE, "torch_worker.py"),
                                                 "--threads", str(t)], t)}
        if have_dnnl:
            workers["onednn"] = Worker("onednn", [a.dnnl, "--threads", str(t)], t)
        try:
            mine = [c for c in cases if c[3] == t]
            for i, (op, pas, shape, _) in enumerate(mine):
                c0 = time.time()
                try:
                    r = run_case(workers, op, pas, shape, t, rounds, target_s,
                                 3, 2000, a.settle_ms * 1e-3)
                except (RuntimeError, OSError) as e:
                    # a worker died (out of memory, a crash): skip the case, the rest of the
                    # run goes on without that worker
                    log("compare: %s %s %s T%d skipped: %s" % (op, pas, shape, t, e))
                    continue
                rows += r
                for x in r:
                    if x["impl"] == "normkit" and x["detail"] and x["median_us"] != "n/a":
                        kernels = x["detail"]
                nk = [x for x in r if x["impl"] == "normkit" and x["median_us"] != "n/a"]
                log("[%3.0fs] T%d %2d/%d %-3s %-9s %-13s %.1fs  normkit %s" % (
                    time.time() - t0, t, i + 1, len(mine), op, pas, shape, time.time() - c0,
                    ", ".join("%s %s us" % (x["layout"], x["median_us"]) for x in nk)))
        finally:
            for w in workers.values():
                if w.p.poll() is not None:
                    log("compare: the %s worker (T%d) ended early, exit %s: its rows are missing"
                        % (w.impl, t, w.p.returncode))
                w.close()
    meta = {"date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
            "command": "`python3 bench/compare.py %s`" % " ".join(sys.argv[1:]).replace(ROOT + "/", ""),
            "machine": machine(), "kernels": kernels, "load0": "%.2f" % load0,
            "load1": "%.2f" % os.getloadavg()[0], "elapsed": time.time() - t0}
    os.makedirs(os.path.dirname(out), exist_ok=True)
    cols = ["op", "pass", "shape", "layout", "threads", "impl", "median_us", "min_us", "gbps",
            "ratio_to_copy", "calls", "detail"]
    with open(out + ".csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    md = report(rows, ops, cases, meta)
    with open(out + ".md", "w") as f:
        f.write(md)
    log("compare: wrote %s.csv and %s.md (%.0f s)" % (out, out, meta["elapsed"]))
    if not a.quick and not a.no_docs:
        update_docs(a.docs, md)
        log("compare: updated %s" % a.docs)


if __name__ == "__main__":
    main()
