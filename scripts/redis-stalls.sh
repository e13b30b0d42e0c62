#!/usr/bin/env bash
# Measures what issue 12's Redis stalls cost (items 9, 10, 11), from outside, with the
# `locksmith` binary given: a queued waiter SIGKILLed (on this host, and in namespaces of
# its own posing as another host), a server that accepts connections and never answers,
# and a server with an append-only file restarted while a lock is held and waited for.
#
#   scripts/redis-stalls.sh BINARY PORT     # a redis-server listening on 127.0.0.1:PORT
#
# It also uses PORT+1 (a silent listener) and PORT+2 (a private AOF redis-server). Needs
# root (unshare), redis-server, redis-cli, python3 and bc. ONLY=9|10|11 runs one item.
set -u
B=$1
PORT=$2
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
S="redis://127.0.0.1:$PORT/0?prefix=stalls$RANDOM:"
now() { date +%s.%N; }
since() { echo "$(cat "$1") - $(cat "$2")" | bc; }

if [ -z "${ONLY:-}" ] || [ "$ONLY" = 9 ]; then
    echo "== item 9: a queued waiter SIGKILLed, then the holder releases"
    for where in here elsewhere; do
        $B --store "$S" run --lock k9$where -- sh -c "sleep 2; date +%s.%N > $T/released" &
        holder=$!
        sleep 0.5
        if [ $where = here ]; then
            $B --store "$S" run --lock k9$where -- true &
        else
            unshare --uts --pid --fork --mount-proc --kill-child \
                sh -c "hostname other-host; exec $B --store '$S' run --lock k9$where -- true" &
        fi
        first=$!
        sleep 0.5
        $B --store "$S" run --lock k9$where -- sh -c "date +%s.%N > $T/got" &
        second=$!
        sleep 0.5
        kill -9 $first
        wait $holder
        wait $second
        echo "  killed waiter $where: the next waiter got the lock $(since $T/got $T/released) s after the release"
    done 2>/dev/null
fi

if [ -z "${ONLY:-}" ] || [ "$ONLY" = 11 ]; then
    echo "== item 11: a server that accepts connections and never answers"
    SP=$((PORT + 1))
    python3 -c "
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', $SP)); s.listen(64); kept = []
while True: kept.append(s.accept())" &
    silent=$!
    sleep 0.5
    for url in "redis://127.0.0.1:$SP/0" "redis://127.0.0.1:$SP/0?timeout=300ms"; do
        t0=$(now)
        $B --store "$url" run --lock x --timeout 200ms -- true
        rc=$?
        t1=$(now)
        echo "  $url, run --timeout 200ms: exit $rc after $(echo "$t1 - $t0" | bc) s"
    done
    kill $silent
fi

if [ -z "${ONLY:-}" ] || [ "$ONLY" = 10 ]; then
    echo "== item 10: an AOF server (appendfsync always) SIGKILLed and restarted while a lock is held and 2 wait"
    AP=$((PORT + 2))
    mkdir "$T/aof"
    server() {
        redis-server --port $AP --bind 127.0.0.1 --appendonly yes --appendfsync always \
            --dir "$T/aof" --save '' --daemonize yes --pidfile "$T/aof/pid" >/dev/null
        for _ in $(seq 200); do
            redis-cli -p $AP ping >/dev/null 2>&1 && return
            sleep 0.05
        done
    }
    server
    A="redis://127.0.0.1:$AP/0"
    ($B --store "$A" run --lock x -- sh -c "sleep 4; date +%s.%N > $T/released"
     echo "  holder: exit $?") &
    sleep 0.5
    for i in 1 2; do
        ($B --store "$A" run --lock x --timeout 60s -- sh -c "date +%s.%N > $T/got$i"
         echo "  waiter $i: exit $?") &
        sleep 0.3
    done
    sleep 0.5
    kill -9 "$(cat "$T/aof/pid")"
    sleep 0.3
    server
    echo "  server restarted"
    wait
    for i in 1 2; do
        [ -f "$T/got$i" ] && echo "  waiter $i got the lock $(since "$T/got$i" "$T/released") s after the holder's command ended"
    done
    redis-cli -p $AP shutdown nosave >/dev/null 2>&1
fi
