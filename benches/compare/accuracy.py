#!/usr/bin/env python3
"""SPEC §13 accuracy for benches/compare.sh: quota-proxy driven at twice a limit, measured
where it matters, at an upstream that enforces the same limit.

Usage: accuracy.py QP_BIN [--proxy-cpu N] [--limit N] [--window-s S] [--seconds S]

The upstream runs in a process of its own (see `Upstream`): HTTP/1.1 keep-alive, every request
head's arrival time recorded as the kernel stamped its first bytes (SO_TIMESTAMPNS), and the
limit enforced as the config states it (never more than
LIMIT arrivals in any interval of WINDOW seconds): a request past it gets the upstream's own
429. The clients (threads with keep-alive connections, open loop: request i is sent at
start + i / rate whatever the answers) offer 2 x LIMIT per WINDOW through quota-proxy for
SECONDS. Scenarios:

  1 proxy, reject       local (memory) backend, on_limit = reject
  1 proxy, delay        local (memory) backend, on_limit = delay (max_delay 2 s)
  2 replicas via Redis, reject   two proxies on one redis-server (started here on a free
                                 port), requests alternating between them
  2 replicas via Redis, delay

For each: the most upstream arrivals in any WINDOW-long interval (overshoot = that minus
LIMIT, the SPEC wants 0), the share of the permitted throughput used (arrivals in the whole
windows from the first arrival, over LIMIT per window; SPEC >= 97%), the upstream's 429s
(SPEC 0), the proxy's own 429s, other failures. Prints one JSON object.
"""

import argparse
import http.client
import json
import multiprocessing
import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Upstream:
    """A keep-alive HTTP/1.1 server that records arrivals and enforces a rolling limit.

    It runs in a process of its own: in this one its loop would wait for the GIL behind
    hundreds of client threads (up to the 5 ms switch interval and more when a burst of
    answers wakes them). Even so it shares a core with those threads, so an arrival is the
    kernel's receive stamp, not the time the loop read it (see `_upstream_process`)."""

    def __init__(self, limit, window_s):
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(target=_upstream_process, args=(limit, window_s, child),
                                 daemon=True)
        self._proc.start()
        if not self._conn.poll(10):
            raise RuntimeError("the accuracy upstream did not start")
        self.port = self._conn.recv()

    def _ask(self, what):
        self._conn.send(what)
        return self._conn.recv()

    def reset(self):
        self._ask("reset")

    def snapshot(self):
        """(every arrival's time, how many were answered 429, each head's lag from its
        arrival to the upstream's loop reading it)."""
        return self._ask("get")


def _upstream_process(limit, window_s, conn):
    """The upstream's process: the server on a selector loop, commands from the pipe.

    A request's arrival is the time the kernel received its first bytes (`SO_TIMESTAMPNS`),
    not the time this loop got to it: on the core it shares with the clients' threads the
    loop can run milliseconds late, and a late stamp moves an arrival towards the next
    window. Both are kept; the loop's lag is reported beside the result."""
    import bisect
    import selectors
    import struct

    state = {"arrivals": [], "accepted": [], "refused": 0, "lags": []}
    lock = threading.Lock()

    def decide(at):
        with lock:
            state["arrivals"].append(at)
            acc = state["accepted"]
            # Refused if some window-long interval holding `at` already holds `limit`
            # accepted arrivals (the stamps of two connections may be handled out of order).
            lo = bisect.bisect_right(acc, at - window_s)
            hi = bisect.bisect_left(acc, at + window_s)
            near = acc[lo:hi]
            refuse = False
            for i, s in enumerate(near):
                if s > at:
                    break
                # arrivals in [s, s + window): those from i on, below s + window
                if bisect.bisect_left(near, s + window_s) - i >= limit:
                    refuse = True
                    break
            if not refuse:
                # intervals starting at `at`: accepted arrivals in [at, at + window)
                k = bisect.bisect_left(near, at)
                refuse = bisect.bisect_left(near, at + window_s) - k >= limit
            if refuse:
                state["refused"] += 1
                return False
            bisect.insort(acc, at)
            return True

    def commands():
        while True:
            try:
                what = conn.recv()
            except EOFError:
                os._exit(0)
            with lock:
                if what == "reset":
                    state.update(arrivals=[], accepted=[], refused=0, lags=[])
                    conn.send(None)
                else:
                    conn.send((list(state["arrivals"]), state["refused"], list(state["lags"])))

    ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    body = b'{"error":{"message":"upstream rate limit"}}'
    refused = (b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 1\r\ncontent-length: %d\r\n\r\n"
               % len(body) + body)
    anc_space = socket.CMSG_SPACE(struct.calcsize("qq"))
    # Linux's value (asm-generic), which Python 3.11's socket module does not name.
    so_timestampns = getattr(socket, "SO_TIMESTAMPNS", 35)

    def stamp(anc):
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == so_timestampns:
                sec, nsec = struct.unpack("qq", data[:16])
                return sec + nsec / 1e9
        return None

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Inherited by every accepted socket.
    listener.setsockopt(socket.SOL_SOCKET, so_timestampns, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    listener.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ)
    conn.send(listener.getsockname()[1])
    threading.Thread(target=commands, daemon=True).start()
    # Per connection: bytes of a head not yet complete, and its first bytes' stamp.
    pending = {}
    while True:
        for key, _ in sel.select():
            sock = key.fileobj
            if sock is listener:
                try:
                    c, _ = listener.accept()
                except BlockingIOError:
                    continue
                c.setblocking(False)
                sel.register(c, selectors.EVENT_READ)
                pending[c] = (b"", None)
                continue
            try:
                data, anc, _, _ = sock.recvmsg(65536, anc_space)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                sel.unregister(sock)
                pending.pop(sock, None)
                sock.close()
                continue
            now = time.time()
            buf, at = pending[sock]
            if at is None:
                at = stamp(anc)
                if at is None:
                    at = now
            buf += data
            out = b""
            while b"\r\n\r\n" in buf:
                _, buf = buf.split(b"\r\n\r\n", 1)
                with lock:
                    state["lags"].append(now - at)
                out += ok if decide(at) else refused
                at = now if buf else None
            pending[sock] = (buf, at)
            if out:
                # Small answers to a kept-alive client: the socket's buffer takes them.
                sock.setblocking(True)
                sock.sendall(out)
                sock.setblocking(False)


def start_proxy(qp_bin, conf_text, workdir, name, pin):
    conf = os.path.join(workdir, f"{name}.toml")
    with open(conf, "w") as f:
        f.write(conf_text)
    out = open(os.path.join(workdir, f"{name}.out"), "w+")
    err = open(os.path.join(workdir, f"{name}.err"), "w")
    cmd = ([] if pin is None else ["taskset", "-c", str(pin)]) + [qp_bin, "run", "-c", conf]
    env = dict(os.environ, TOKIO_WORKER_THREADS="1")
    proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        out.seek(0)
        for line in out.read().splitlines():
            if line.startswith("quota-proxy listening proxy="):
                return proc, line.split("proxy=")[1].split()[0]
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    with open(err.name) as e:
        raise RuntimeError(f"{name} did not start: {e.read()[-500:]}")


def proxy_config(up_port, limit, window_s, action, redis_port):
    state = ('backend = "redis"\nredis_url = "redis://127.0.0.1:%d"\nredis_prefix = "accuracy"\n'
             % redis_port) if redis_port else 'backend = "memory"\n'
    return f"""[proxy]
listen = "127.0.0.1:0"
allow_private_destinations = true

[admin]
listen = "127.0.0.1:0"

[state]
{state}
[providers.acc]
hosts = ["127.0.0.1:{up_port}"]
upstream = "http://127.0.0.1:{up_port}"

[providers.acc.retry]
on = []

[[providers.acc.limits]]
name = "acc"
unit = "requests"
amount = {limit}
window = "{int(window_s * 1000)}ms"

[providers.acc.on_limit]
action = "{action}"
max_delay = "2s"
max_queue = 10000
"""


def drive(proxies, up_port, rate, seconds):
    """Open-loop load: request i at start + i / rate, on proxies[i % len]. Counts answers."""
    n = int(rate * seconds)
    jobs = queue.Queue()
    counts = {"ok": 0, "proxy_429": 0, "upstream_429": 0, "other": 0}
    late = [0.0]
    lock = threading.Lock()
    url = f"http://127.0.0.1:{up_port}/v1/accuracy"

    def worker():
        conns = {}
        while True:
            job = jobs.get()
            if job is None:
                return
            proxy = job
            host, port = proxy.rsplit(":", 1)
            kind = "other"
            for _ in range(2):  # once more on a fresh connection if a kept one was closed
                conn = conns.get(proxy) or http.client.HTTPConnection(host, int(port), timeout=10)
                conns[proxy] = conn
                try:
                    conn.request("GET", url, headers={"Host": f"127.0.0.1:{up_port}"})
                    resp = conn.getresponse()
                    resp.read()
                except (OSError, http.client.HTTPException):
                    conn.close()
                    conns.pop(proxy, None)
                    continue
                if resp.status == 200:
                    kind = "ok"
                elif resp.status == 429:
                    by_proxy = resp.getheader("x-quota-proxy") == "rejected"
                    kind = "proxy_429" if by_proxy else "upstream_429"
                break
            with lock:
                counts[kind] += 1

    # Delay mode holds up to 2 s of requests: enough threads that none waits for a thread.
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(int(rate * 3) + 16)]
    for t in threads:
        t.start()
    start = time.monotonic()
    for i in range(n):
        due = start + i / rate
        wait = due - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        else:
            late[0] = max(late[0], -wait)
        jobs.put(proxies[i % len(proxies)])
    for _ in threads:
        jobs.put(None)
    for t in threads:
        t.join(30)
    counts["offered"] = n
    counts["max_send_lag_ms"] = round(late[0] * 1000, 1)
    return counts


def judge(arrivals, limit, window_s):
    """The most arrivals in any window, and the share of the permitted throughput used."""
    arr = sorted(arrivals)
    most, j = 0, 0
    for i, t in enumerate(arr):
        # arrivals in [t, t + window): the interval the SPEC bounds
        while j < len(arr) and arr[j] < t + window_s:
            j += 1
        most = max(most, j - i)
    if not arr:
        return most, None, 0
    whole = int((arr[-1] - arr[0]) // window_s)
    if whole == 0:
        return most, None, 0
    end = arr[0] + whole * window_s
    within = sum(1 for t in arr if t < end)
    return most, within / (whole * limit), whole


def tightest(arrivals, limit):
    """The shortest span, in ms, from an arrival to the limit-th arrival after it."""
    arr = sorted(arrivals)
    spans = [b - a for a, b in zip(arr, arr[limit:])]
    return round(1000 * min(spans), 2) if spans else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("qp_bin")
    ap.add_argument("--proxy-cpu", type=int, default=None, help="pin the proxies to this core")
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--window-s", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, default=8.0)
    args = ap.parse_args()

    workdir = tempfile.mkdtemp(prefix="qp-accuracy.")
    procs = []
    try:
        up = Upstream(args.limit, args.window_s)
        redis_port = free_port()
        redis = subprocess.Popen(
            ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(redis)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", redis_port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        rate = 2 * args.limit / args.window_s
        results = []
        for name, replicas, action in [
            ("1 proxy, reject", 1, "reject"),
            ("1 proxy, delay", 1, "delay"),
            ("2 replicas via Redis, reject", 2, "reject"),
            ("2 replicas via Redis, delay", 2, "delay"),
        ]:
            # A fresh prefix's worth of state: each scenario starts from an empty limit.
            subprocess.run(["redis-cli", "-p", str(redis_port), "FLUSHALL"],
                           stdout=subprocess.DEVNULL, check=True)
            conf = proxy_config(up.port, args.limit, args.window_s, action,
                                redis_port if replicas > 1 else None)
            started = [start_proxy(args.qp_bin, conf, workdir, f"acc{len(procs)}-{i}",
                                   args.proxy_cpu) for i in range(replicas)]
            procs.extend(p for p, _ in started)
            up.reset()
            counts = drive([a for _, a in started], up.port, rate, args.seconds)
            arrivals, refused, lags = up.snapshot()
            lags.sort()
            most, used, whole = judge(arrivals, args.limit, args.window_s)
            for p, _ in started:
                p.terminate()
                p.wait(10)
            results.append({
                "scenario": name, "limit": args.limit, "window_s": args.window_s,
                "offered_rate": rate, **counts,
                "upstream_arrivals": len(arrivals), "upstream_refused": refused,
                "max_in_window": most, "overshoot": max(0, most - args.limit),
                "used_share": used, "whole_windows": whole,
                # The shortest time over which the upstream saw limit + 1 arrivals: above
                # the window, what the proxy left to spare; below it, an overshoot.
                "tightest_ms": tightest(arrivals, args.limit),
                # How late the upstream's loop read a head after the kernel received it:
                # an arrival stamped by the loop would have been this much later.
                "loop_lag_ms_p99": round(1000 * lags[int(0.99 * (len(lags) - 1))], 2) if lags else None,
                "loop_lag_ms_max": round(1000 * lags[-1], 2) if lags else None,
            })
        print(json.dumps({"scenarios": results}, indent=1))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
