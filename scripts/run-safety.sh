#!/usr/bin/env bash
# Measures, from outside, what issue 12's `run` items cost with the `locksmith` binary
# given, on one store: item 4 (a SIGKILLed `run` whose command's subshell ticks on into
# the next holder's section), item 5 (a hold broken under a running command: how long
# the command runs on after the next holder got the lock) and item 9 (a waiter ended
# by SIGTERM: how long after the release the next waiter gets the lock).
#
#   scripts/run-safety.sh BINARY STORE
#   e.g. scripts/run-safety.sh target/debug/locksmith sqlite:/tmp/x.db
#        scripts/run-safety.sh target/debug/locksmith shm:measure
#        scripts/run-safety.sh target/debug/locksmith 'redis://127.0.0.1:6379/0?prefix=m:'
#
# Needs bash, bc and GNU date. The sleeps here pace the scenario; they are not
# measurements.
set -u
L=$1
S=$2
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT
n=measure$$

# Item 4.
F=$D/i4
$L --store "$S" run --lock $n-4 -- bash -c "( for i in \$(seq 40); do echo orphan \$(date +%s.%N) >> $F; sleep 0.1; done ); true" 2>/dev/null &
P=$!
while [ ! -s "$F" ]; do sleep 0.02; done
kill -9 $P
wait $P 2>/dev/null
$L --store "$S" run --lock $n-4 --timeout 60s -- bash -c "echo second \$(date +%s.%N) >> $F; sleep 1" 2>/dev/null
st=$(awk '$1=="second"{print $2}' "$F")
echo "item 4: orphan writes inside the next holder's 1 s section: $(awk -v s="$st" '$1=="orphan" && $2>s' "$F" | wc -l)"
sleep 4 # let an orphan of an old build finish before the next item

# Item 5.
F=$D/i5
$L --store "$S" run --lock $n-5 --lease 1s -- bash -c "for i in \$(seq 400); do echo tick \$(date +%s.%N) >> $F; sleep 0.05; done" 2>/dev/null &
P=$!
while [ ! -s "$F" ]; do sleep 0.02; done
$L --store "$S" break $n-5 --force >/dev/null 2>&1
$L --store "$S" run --lock $n-5 --timeout 60s -- bash -c "echo second \$(date +%s.%N) >> $F; sleep 1" 2>/dev/null
wait $P
rc=$?
st=$(awk '$1=="second"{print $2}' "$F")
last=$(awk '$1=="tick"{t=$2} END{print t}' "$F")
echo "item 5: after break --force, the command ran on $(echo "$last - $st" | bc) s after the next holder got the lock; run exited $rc"

# Item 9.
F=$D/i9
$L --store "$S" run --lock $n-9 -- bash -c "sleep 2; echo released \$(date +%s.%N) >> $F" 2>/dev/null &
A=$!
sleep 0.5
$L --store "$S" run --lock $n-9 -- true 2>/dev/null &
B=$!
sleep 0.5
kill -TERM $B
wait $B 2>/dev/null
$L --store "$S" run --lock $n-9 --timeout 60s -- bash -c "echo got \$(date +%s.%N) >> $F" 2>/dev/null
wait $A
echo "item 9: the next waiter got the lock $(echo "$(awk '$1=="got"{print $2}' "$F") - $(awk '$1=="released"{print $2}' "$F")" | bc) s after the release"
