#!/usr/bin/env bash
# test_bench_add_relu.sh - `normkit bench` options end to end, on tiny shapes (a smoke test of the
# command line, not a benchmark): --op bn-add-relu runs every pass on both layouts and reports
# its traffic and baseline, the serve worker accepts it, and bad input exits 2 with a message.
#
# usage: tests/cli/test_bench_add_relu.sh [NORMKIT_BINARY]   (default: build/normkit)
set -u

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
normkit=${1:-$repo/build/normkit}
if [ ! -x "$normkit" ]; then echo "test_bench_add_relu: $normkit not built" >&2; exit 2; fi

fail=0
check() { # description, then the command's status must be 0 and its output must match a regex
    local what=$1 want=$2; shift 2
    local out
    out=$("$@" 2>&1)
    local rc=$?
    if [ $rc -ne 0 ] || ! grep -Eq -- "$want" <<<"$out"; then
        echo "FAIL: $what (exit $rc): $*"; echo "$out" | sed 's/^/    /'; fail=1
    else
        echo "ok: $what"
    fi
}
rejects() { # description, then the command must exit 2 and print a message on stderr
    local what=$1; shift
    local err
    err=$("$@" 2>&1 >/dev/null)
    local rc=$?
    if [ $rc -ne 2 ] || [ -z "$err" ]; then
        echo "FAIL: $what: expected exit 2 and a message, got exit $rc: $*"; fail=1
    else
        echo "ok: $what ($err)"
    fi
}

for layout in nchw nhwc; do
    for threads in 1 2; do
        check "bn-add-relu fwd-train $layout $threads threads" \
            'read x, z, write y.*' \
            "$normkit" bench --op bn-add-relu --pass fwd-train --shape 4x8x5x3 --layout $layout \
            --threads $threads --reps 3
        check "bn-add-relu fwd-infer $layout $threads threads" 'ratio op / add \(medians\)' \
            "$normkit" bench --op bn-add-relu --pass fwd-infer --shape 4x8x5x3 --layout $layout \
            --threads $threads --reps 3
        check "bn-add-relu bwd $layout $threads threads" \
            'read x, y, dy, write dx, dz.*|ratio op / add2' \
            "$normkit" bench --op bn-add-relu --pass bwd --shape 4x8x5x3 --layout $layout \
            --threads $threads --reps 3
    done
done
check "bn-add-relu float64, 2-D input" 'bn-add-relu bwd 6x5 nchw float64' \
    "$normkit" bench --op bn-add-relu --pass bwd --shape 6x5 --dtype f64 --reps 2
check "the other ops still run" 'ratio op / add' \
    "$normkit" bench --op bn --pass bwd --shape 4x8x5x3 --reps 2
# the worker: one answer line per command (setup, time, base, a setup it declines)
serve=$(printf 'setup 0 bn-add-relu bwd 4x8x5x3 nhwc\ntime 0 2\nbase 0 2\nsetup 1 bn-add-relu fwd-train 4x8x5x3 rows\nquit\n' |
        "$normkit" bench --serve --threads 2)
want=('^ok 0 [0-9.]+ ' '^t [0-9.]+ [0-9.]+$' '^t [0-9.]+ [0-9.]+$' '^na normkit has no rows layout')
mapfile -t got <<<"$serve"
ok=1
for k in 0 1 2 3; do [[ "${got[$k]:-}" =~ ${want[$k]} ]] || ok=0; done
if [ $ok -eq 1 ] && [ ${#got[@]} -eq 4 ]; then
    echo "ok: serve: bn-add-relu set up and timed, no rows layout"
else
    echo "FAIL: serve answers:"; echo "$serve" | sed 's/^/    /'; fail=1
fi

rejects "a 1-D shape for bn-add-relu" "$normkit" bench --op bn-add-relu --shape 64
rejects "an unknown op" "$normkit" bench --op bn-add-relu-x
rejects "nhwc for a row op" "$normkit" bench --op ln --layout nhwc --shape 4x8
rejects "a malformed shape" "$normkit" bench --op bn-add-relu --shape 4x0x3
rejects "a bad pass" "$normkit" bench --op bn-add-relu --pass fwd

exit $fail
