#!/usr/bin/env bash
# `normkit bench` and `normkit bench --serve` end to end on tiny shapes: every op, pass and
# layout runs and prints its report; every bad option is refused with exit status 2, one line
# on stderr and nothing on stdout; the serve protocol answers each command, including the bad
# ones, with one line and keeps going. (Speed is not tested: the benchmark is not a test.)
set -u
NK=${1:?usage: test_bench_cli.sh path/to/normkit}
fails=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

fail() { echo "FAIL: $*"; fails=$((fails + 1)); }

runs() { # args...: must exit 0 and print the op and baseline lines
    if ! "$NK" bench --reps 2 "$@" >"$tmp/out" 2>"$tmp/err"; then
        fail "bench $* exited non-zero: $(cat "$tmp/err")"
        return
    fi
    grep -q "^  op .*median .* us .*GB/s" "$tmp/out" || fail "bench $*: no op line"
    grep -Eq "^  (copy|add) .*median" "$tmp/out" || fail "bench $*: no baseline line"
    grep -q "ratio op / " "$tmp/out" || fail "bench $*: no ratio line"
}

refused() { # args...: must exit 2 with one line on stderr and an empty stdout
    "$NK" bench --reps 2 "$@" >"$tmp/out" 2>"$tmp/err"
    local rc=$?
    [ "$rc" -eq 2 ] || fail "bench $*: exit $rc, expected 2"
    [ "$(wc -l <"$tmp/err")" -eq 1 ] || fail "bench $*: stderr is not one line: $(cat "$tmp/err")"
    [ -s "$tmp/out" ] && fail "bench $*: wrote to stdout"
    grep -q "^bench: " "$tmp/err" || fail "bench $*: message does not start with 'bench: '"
}

for op in bn gn in; do
    for layout in nchw nhwc; do
        for pass in fwd-train fwd-infer bwd; do
            runs --op "$op" --pass "$pass" --shape 2x6x3x5 --layout "$layout" --groups 3
        done
    done
done
for op in ln rms; do
    for pass in fwd-train bwd; do runs --op "$op" --pass "$pass" --shape 7x13; done
done
runs --op bn --pass bwd --shape 3x5x7 --dtype f64 --threads 2
runs --op bn --shape 2x3x4x4 --ref

refused --op foo
refused --pass sideways
refused --shape 0x3x3
refused --shape abc
refused --shape 2x3x-4
refused --op ln --layout nhwc
refused --layout nwhc
refused --threads 0
refused --reps 0
refused --dtype f16
refused --op gn --shape 2x5x3 --groups 3
refused --bogus
refused --shape

# the worker protocol: one answer line per command, errors included, then a clean exit
printf '%s\n' \
    "setup 0 bn fwd-train 2x5x3x3 nchw" \
    "time 0 3" \
    "base 0 2" \
    "setup 1 ln bwd 7x13 rows" \
    "time 1 2" \
    "free 1" \
    "time 1 2" \
    "setup 9 bn bwd 2x2 nchw" \
    "setup 2 foo bwd 2x2 nchw" \
    "setup 2 bn bwd 2x0 nchw" \
    "nonsense" \
    "setup 3 gn bwd 2x6x3x3 nhwc" \
    "time 3 2" \
    "free 0" \
    "quit" | "$NK" bench --serve >"$tmp/serve" 2>"$tmp/serve_err"
rc=$?
[ "$rc" -eq 0 ] || fail "bench --serve exited $rc"
expect=(
    "^ok 0 [0-9.]+ "
    "^t [0-9.]+ [0-9.]+ [0-9.]+$"
    "^t [0-9.]+ [0-9.]+$"
    "^ok 1 [0-9.]+ "
    "^t [0-9.]+ [0-9.]+$"
    "^ok$"
    "^err slot 1 is not set up$"
    "^err "
    "^err "
    "^err "
    "^err "
    "^ok 3 [0-9.]+ "
    "^t [0-9.]+ [0-9.]+$"
    "^ok$"
)
n=$(wc -l <"$tmp/serve")
[ "$n" -eq "${#expect[@]}" ] || fail "bench --serve: $n answer lines, expected ${#expect[@]}"
i=0
while IFS= read -r line; do
    [ "$i" -lt "${#expect[@]}" ] || break
    echo "$line" | grep -Eq "${expect[$i]}" || fail "bench --serve answer $((i + 1)) '$line' !~ ${expect[$i]}"
    i=$((i + 1))
done <"$tmp/serve"

if [ "$fails" -ne 0 ]; then
    echo "$fails failure(s)"
    exit 1
fi
echo "bench CLI: all checks passed"
