#!/usr/bin/env python3
"""SSE delivery latency for benches/compare.sh: per-event time from the mock upstream's
send (its `sent_us` stamp, wall clock) to this client's receipt, for a direct connection
and through each proxy given, interleaved (direct, then each proxy, in every round).

Usage: sse_latency.py UPSTREAM_ADDR ROUNDS EVENTS GAP_MS NAME=ADDR [NAME=rev:ADDR ...]

NAME=ADDR is a forward proxy (absolute-form requests), NAME=rev:ADDR a reverse proxy of
the upstream (origin-form). The first is the proxy under test: its figures are also given
at the top level (added_p50_us, lost_events, proxy_gap_median_ms), the others' under
"peers". Prints one JSON object: per round and target p50/p99 (µs), the gaps between
received events (ms, median and max deviation from GAP_MS), and events lost.
"""

import json
import re
import socket
import statistics
import sys
import time

STAMP = re.compile(rb'"sent_us":(\d+)')


def stream(connect_to, target, host, events, gap_ms):
    """Reads one /sse response; returns (latencies µs, receive times µs)."""
    s = socket.create_connection(connect_to, timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    req = (f"GET {target} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n"
           "Connection: close\r\n\r\n").encode()
    s.sendall(req)
    buf = b""
    lat, recv = [], []
    while len(lat) < events:
        data = s.recv(65536)
        now = time.time_ns() // 1000
        if not data:
            break
        buf += data
        pos = 0
        for m in STAMP.finditer(buf):
            lat.append(now - int(m.group(1)))
            recv.append(now)
            pos = m.end()
        buf = buf[pos:]
    s.close()
    return lat, recv


def pct(values, p):
    values = sorted(values)
    if not values:
        return None
    rank = max(1, -(-len(values) * p // 100))
    return values[rank - 1]


def main():
    up, rounds, events, gap_ms = sys.argv[1:5]
    rounds, events, gap_ms = int(rounds), int(events), int(gap_ms)
    targets = []
    for arg in sys.argv[5:]:
        name, addr = arg.split("=", 1)
        reverse = addr.startswith("rev:")
        host, port = addr.removeprefix("rev:").rsplit(":", 1)
        targets.append((name, (host, int(port)), reverse))
    if not targets:
        sys.exit("usage: sse_latency.py UPSTREAM_ADDR ROUNDS EVENTS GAP_MS NAME=[rev:]ADDR ...")
    uh, up_port = up.rsplit(":", 1)
    path = f"/sse?events={events}&gap_ms={gap_ms}"
    per = {name: [] for name, _, _ in targets}
    for _ in range(rounds):
        d_lat, _ = stream((uh, int(up_port)), path, up, events, gap_ms)
        for name, addr, reverse in targets:
            p_lat, p_recv = stream(addr, path if reverse else f"http://{up}{path}", up, events,
                                   gap_ms)
            gaps = [(b - a) / 1000 for a, b in zip(p_recv, p_recv[1:])]
            per[name].append({
                "direct_p50_us": pct(d_lat, 50), "direct_p99_us": pct(d_lat, 99),
                "proxy_p50_us": pct(p_lat, 50), "proxy_p99_us": pct(p_lat, 99),
                "direct_events": len(d_lat), "proxy_events": len(p_lat),
                "proxy_gap_median_ms": statistics.median(gaps) if gaps else None,
                "proxy_gap_max_dev_ms": max((abs(g - gap_ms) for g in gaps), default=None),
            })
    summaries = {name: summary(r, events) for name, r in per.items()}
    first = targets[0][0]
    out = {"events": events, "gap_ms": gap_ms, "rounds": per[first], **summaries[first],
           "peers": {name: summaries[name] for name, _, _ in targets[1:]}}
    print(json.dumps(out))


def summary(r, events):
    """Medians over the rounds of one target."""
    added = [x["proxy_p50_us"] - x["direct_p50_us"] for x in r
             if x["proxy_p50_us"] is not None and x["direct_p50_us"] is not None]
    gm = [x["proxy_gap_median_ms"] for x in r if x["proxy_gap_median_ms"] is not None]
    return {
        "added_p50_us": statistics.median(added) if added else None,
        "added_p50_per_round_us": added,
        "direct_p50_us": statistics.median(x["direct_p50_us"] for x in r),
        "proxy_p50_us": statistics.median(x["proxy_p50_us"] for x in r),
        "lost_events": sum(events - x["proxy_events"] for x in r),
        "proxy_gap_median_ms": statistics.median(gm) if gm else None,
    }


if __name__ == "__main__":
    main()
