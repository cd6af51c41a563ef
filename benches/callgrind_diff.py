#!/usr/bin/env python3
"""Self cost per request, function by function, of two callgrind profiles kept by
benches/callgrind.sh (CALLGRIND_KEEP=DIR), largest differences first.

Usage: callgrind_diff.py A.out B.out [REQUESTS] [ROWS]

REQUESTS is the N2 the profiles were kept at (CALLGRIND_N2, default 5000); ROWS how many
functions to print (40). Example, quota-proxy forward against the bare hyper proxy:

  CALLGRIND_KEEP=/tmp/cg CALLGRIND_N1=1000 CALLGRIND_N2=5000 bash benches/callgrind.sh forward bare
  python3 benches/callgrind_diff.py /tmp/cg/callgrind.out.forward /tmp/cg/callgrind.out.bare

Each figure is instructions per request over the whole kept run, start-up included (small
beside 5,000 requests). Inlined code counts in the function it was inlined into, so one
crate's code may appear under another's name in one build and its own in the other.
"""

import collections
import re
import subprocess
import sys

# `callgrind_annotate` lists self costs as `IR (PCT%)  FILE:FUNCTION [OBJECT]`; its default
# threshold (99%) stops after the process's root, which holds the whole run inclusively.
LINE = re.compile(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*?):(.*?)(?: \[(.*)\])?$")


def self_costs(path, requests):
    out = subprocess.run(
        ["callgrind_annotate", "--auto=no", "--threshold=100", "--inclusive=no", path],
        check=True, capture_output=True, text=True).stdout
    costs = collections.Counter()
    total = None
    for line in out.splitlines():
        if line.endswith("PROGRAM TOTALS"):
            total = int(line.split()[0].replace(",", ""))
            continue
        m = LINE.match(line)
        if not m:
            continue
        ir = int(m.group(1).replace(",", ""))
        if total is None or ir < total / 2:
            # The process's roots (`main`, `(below main)`, ...) are listed with the whole
            # run's cost: not a function's own.
            costs[m.group(3)] += ir / requests
    return costs


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    requests = float(sys.argv[3]) if len(sys.argv) > 3 else 5000.0
    rows = int(sys.argv[4]) if len(sys.argv) > 4 else 40
    a, b = self_costs(sys.argv[1], requests), self_costs(sys.argv[2], requests)
    print(f"{'A - B':>8} {'A':>8} {'B':>8}  function (self instructions per request)")
    diff = {k: a.get(k, 0) - b.get(k, 0) for k in set(a) | set(b)}
    for k, d in sorted(diff.items(), key=lambda kv: -abs(kv[1]))[:rows]:
        print(f"{d:8.0f} {a.get(k, 0):8.0f} {b.get(k, 0):8.0f}  {k[:150]}")


if __name__ == "__main__":
    main()
