"""Redis-side cost of the admission script (src/quota/shared/admit.lua), apart from any client.

Loads the script into a Redis server, empties it, and calls it CALLS times with a batch of B
admissions of three rolling limits each (a second, a minute and a day, 64 sub-buckets each,
far from full), as the proxy's coalescer sends them; prints Redis's own time per call
(`INFO commandstats`, usec_per_call of EVALSHA) and per admission. The server is emptied
(FLUSHALL): point it at a Redis of its own.

    redis-server --port 16398 --save '' --appendonly no &
    taskset -c 0 python3 benches/redis_script.py 16398 11 3000 [SCRIPT [RATE]]

With RATE (calls per second), each call starts on a fixed schedule instead of as soon as the
last was answered: Redis then sleeps between calls, as it does at the comparison's 2k req/s
latency rounds, and each call pays a cold start (on the AMD guest of 2026-12-05 a lone
admission cost 38 us back to back and 61-66 us at 2,000 calls/s).
"""
import socket
import struct
import sys
import time

port, batch, calls = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
path = sys.argv[4] if len(sys.argv) > 4 else "src/quota/shared/admit.lua"
rate = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
sock = socket.create_connection(("127.0.0.1", port))
rd = sock.makefile("rb")


def read():
    line = rd.readline()
    kind, rest = line[:1], line[1:-2]
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind in (b"+", b":"):
        return rest
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else rd.read(n + 2)[:-2]
    if kind == b"*":
        return [read() for _ in range(int(rest))]
    raise RuntimeError(f"unexpected reply {line!r}")


def cmd(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    sock.sendall(b"".join(out))
    return read()


sha = cmd("SCRIPT", "LOAD", open(path, "rb").read()).decode()
SECOND = 1_000_000
limits = [(SECOND, 64), (60 * SECOND, 64), (86400 * SECOND, 64)]
keys, records = [], b""
for _ in range(batch):
    records += struct.pack("<d", len(limits))
    for j, (length, n) in enumerate(limits):
        keys.append("{bench:script}:l%d" % j)
        # kind, cost, cap, sub-bucket width (us), sub-buckets, string fields
        records += b"r" + struct.pack("<ddddd", 1.0, 1e12, -(-length // n), n, 0)
cmd("FLUSHALL")
cmd("CONFIG", "RESETSTAT")
start = time.perf_counter()
busy = 0.0
for i in range(calls):
    if rate > 0:
        wait = start + i / rate - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
    sent = time.perf_counter()
    reply = cmd("EVALSHA", sha, len(keys), *keys, records)
    busy += time.perf_counter() - sent
elapsed = busy
if not reply.startswith(b"1 "):
    raise RuntimeError(f"not admitted: {reply[:80]!r}")
stats = [l for l in cmd("INFO", "commandstats").decode().split("\r\n") if l.startswith("cmdstat_evalsha:")]
usec = float(stats[0].split("usec_per_call=")[1].split(",")[0])
print(f"batch={batch} rate={rate:g} usec_per_call={usec:.2f} usec_per_admission={usec / batch:.2f} "
      f"round_trip_us={elapsed / calls * 1e6:.0f}")
