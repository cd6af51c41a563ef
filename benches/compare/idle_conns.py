#!/usr/bin/env python3
"""Holds idle keep-alive client connections through a forward proxy, for the memory row
of benches/compare.sh.

Usage: idle_conns.py PROXY_ADDR UPSTREAM_ADDR COUNT

Opens COUNT connections to the proxy, sends one request on each (absolute-form, to the
upstream), reads the whole response and keeps the connection open. Prints
`holding N` once every connection is idle, then waits until stdin closes and exits
(closing them all). Exits non-zero if a response is not a 200 with its body.
"""

import asyncio
import sys


async def one(proxy, upstream, sem, held, failures):
    host, port = proxy.rsplit(":", 1)
    async with sem:
        try:
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(f"GET http://{upstream}/ HTTP/1.1\r\nHost: {upstream}\r\n\r\n".encode())
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b" ", 2)[1]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            if length:
                await reader.readexactly(length)
            if status != b"200" or not length:
                failures.append(head[:80])
            held.append(writer)
        except Exception as e:  # reported, counted as a failure
            failures.append(repr(e).encode())


async def main():
    proxy, upstream, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    # Few at a time: the proxy's upstream pool grows with the concurrency, not the count.
    sem = asyncio.Semaphore(32)
    held, failures = [], []
    await asyncio.gather(*(one(proxy, upstream, sem, held, failures) for _ in range(count)))
    if failures:
        print(f"failed {len(failures)}: {failures[0]!r}", flush=True)
        sys.exit(1)
    print(f"holding {len(held)}", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    for w in held:
        w.close()


if __name__ == "__main__":
    asyncio.run(main())
