#!/usr/bin/env python3
"""Aggregates the samples of benches/compare.sh into the printed table and the JSON file.

Usage: report.py SAMPLES.jsonl META.json OUT.json [EXTRAS.jsonl]

SAMPLES.jsonl holds one object per line:
  {"kind": "run", "scenario", "round", "target", "requests", "duration_us", "p50_us",
   "p99_us", "errors", "non2xx", "cpu_ticks", "sys_ticks", "clk_tck", "run_us",
   "runq_wait_us"}
  (run_us: the threads' run time from schedstat, the CPU figure; cpu_ticks: utime + stime;
  sys_ticks: stime alone, whose share of cpu_ticks is the kernel's share)
  {"kind": "round", "scenario", "round", "steal_pct"}
Rounds whose steal is above META["max_steal_pct"] are dropped (unless every round is, in
which case all are kept and the report says so). Every ratio is computed within one round,
then the median over the kept rounds is reported.

EXTRAS.jsonl (benches/compare/extra.sh) holds the other SPEC §13 rows, already reduced:
  {"row", "proxy", "peer", "peer_name", "unit", "ratio", "target", "met", "detail"}
"""

import json
import statistics
import sys

TARGETS = ["direct", "qp_forward", "qp_route", "qp_quotas", "hyper_bare", "nginx", "squid",
           "tinyproxy"]
LABELS = {
    "direct": "direct",
    "qp_forward": "qp forward",
    "qp_route": "qp route",
    "qp_quotas": "qp fwd+quota",
    "hyper_bare": "hyper bare",
    "nginx": "nginx rev",
    "squid": "squid fwd",
    "tinyproxy": "tinyproxy",
}
SCENARIOS = {
    "keepalive": "(a) plain HTTP keep-alive, saturation (wrk)",
    "equal_load": "(a2) plain HTTP keep-alive, equal load: every target paced at one rate (wrk)",
    "fixed_rate": "(b) plain HTTP keep-alive, fixed rate (wrk, paced)",
    "new_conn": "(c) new connection per request, fixed rate (hey -disable-keepalive)",
}

# (name, scenario, kind, numerator, denominator, target text, predicate on the median or None)
#   kind "cpu"     : ratio of CPU µs/request
#   kind "rps"     : ratio of requests/s
#   kind "added50" : numerator's p50 minus direct's p50, in µs (denominator unused)
#   kind "added99r": (num p99 - direct p99) / (den p99 - direct p99)
def cpu_rows(scen, nginx_target, squid_target, quota_target):
    """The CPU/request comparisons of one plain-HTTP scenario."""
    le = lambda t: (lambda v: v <= t)  # noqa: E731
    return [
        ("cpu/req forward vs nginx", scen, "cpu", "qp_forward", "nginx", f"<= {nginx_target}", le(nginx_target)),
        ("cpu/req route vs nginx", scen, "cpu", "qp_route", "nginx", f"<= {nginx_target}", le(nginx_target)),
        ("cpu/req fwd+quota vs nginx", scen, "cpu", "qp_quotas", "nginx", f"<= {nginx_target}", le(nginx_target)),
        ("cpu/req forward vs squid", scen, "cpu", "qp_forward", "squid",
         f"<= {squid_target}" if squid_target else "-", le(squid_target) if squid_target else None),
        ("cpu/req fwd+quota vs squid", scen, "cpu", "qp_quotas", "squid",
         f"<= {squid_target}" if squid_target else "-", le(squid_target) if squid_target else None),
        ("cpu/req quotas on vs off", scen, "cpu", "qp_quotas", "qp_forward",
         f"<= {quota_target}" if quota_target else "-", le(quota_target) if quota_target else None),
        ("cpu/req route vs forward", scen, "cpu", "qp_route", "qp_forward", "-", None),
        # The floor of the stack (examples/bare_proxy.rs): what tokio + hyper alone cost
        # beside nginx, and what quota-proxy adds to them.
        ("cpu/req hyper bare vs nginx", scen, "cpu", "hyper_bare", "nginx", "-", None),
        ("cpu/req forward vs hyper bare", scen, "cpu", "qp_forward", "hyper_bare", "-", None),
    ]


# (name, scenario, kind, numerator, denominator, target text, predicate on the median or None)
#   kind "cpu"     : ratio of CPU µs/request
#   kind "rps"     : ratio of requests/s
#   kind "added50" : numerator's p50 minus direct's p50, in µs (denominator unused)
#   kind "added99r": (num p99 - direct p99) / (den p99 - direct p99)
# SPEC §13: plain keep-alive CPU/request <= 1.3x nginx, <= 0.4x Squid, quotas on <= 1.1x
# off (judged at saturation, at an equal load and at the fixed rate; SPEC §13 names CPU/request
# at equal load the primary figure); fixed 2k req/s: added p50 <= 100 µs,
# added p99 <= 1.5x nginx's; new connection per request: CPU/request <= 1.5x nginx.
RATIOS = (
    cpu_rows("keepalive", 1.3, 0.4, 1.1)
    + [
        ("req/s forward vs nginx", "keepalive", "rps", "qp_forward", "nginx", "-", None),
        ("req/s forward vs squid", "keepalive", "rps", "qp_forward", "squid", "-", None),
        ("req/s quotas on vs off", "keepalive", "rps", "qp_quotas", "qp_forward", "-", None),
    ]
    # Equal load (SPEC §13's primary figure): every target serves the same paced rate, half
    # of quota-proxy's saturation. Squid does not take part (see compare.sh).
    + [r for r in cpu_rows("equal_load", 1.3, None, 1.1) if r[4] != "squid"]
    + cpu_rows("fixed_rate", 1.3, 0.4, 1.1)
    + [
        ("added p50 forward (us)", "fixed_rate", "added50", "qp_forward", None, "<= 100 us", lambda v: v <= 100),
        ("added p50 route (us)", "fixed_rate", "added50", "qp_route", None, "<= 100 us", lambda v: v <= 100),
        ("added p50 fwd+quota (us)", "fixed_rate", "added50", "qp_quotas", None, "<= 100 us", lambda v: v <= 100),
        ("added p50 hyper bare (us)", "fixed_rate", "added50", "hyper_bare", None, "-", None),
        ("added p50 nginx (us)", "fixed_rate", "added50", "nginx", None, "-", None),
        ("added p50 squid (us)", "fixed_rate", "added50", "squid", None, "-", None),
        ("added p99 forward vs nginx", "fixed_rate", "added99r", "qp_forward", "nginx", "<= 1.5", lambda v: v <= 1.5),
        ("added p99 route vs nginx", "fixed_rate", "added99r", "qp_route", "nginx", "<= 1.5", lambda v: v <= 1.5),
        ("added p99 fwd+quota vs nginx", "fixed_rate", "added99r", "qp_quotas", "nginx", "<= 1.5", lambda v: v <= 1.5),
    ]
    + [r for r in cpu_rows("new_conn", 1.5, None, None) if r[4] != "squid" or r[3] == "qp_forward"]
    + [
        ("cpu/req forward vs tinyproxy", "new_conn", "cpu", "qp_forward", "tinyproxy", "-", None),
        ("cpu/req fwd+quota vs tinyproxy", "new_conn", "cpu", "qp_quotas", "tinyproxy", "-", None),
    ]
)


def figure(kind, rows, target):
    """The figure a ratio row compares for one target in one round (proxy or peer column)."""
    r, d = rows.get(target), rows.get("direct")
    try:
        if kind == "cpu":
            return r["cpu_us_per_req"]
        if kind == "rps":
            return r["rps"]
        if kind == "added50":
            return r["p50_us"] - d["p50_us"]
        if kind == "added99r":
            return r["p99_us"] - d["p99_us"]
    except (TypeError, KeyError):
        return None
    return None


def derive(run):
    """Adds rps, cpu_us_per_req and proxy_busy_pct to a raw run sample."""
    secs = run["duration_us"] / 1e6 if run["duration_us"] else None
    run["rps"] = run["requests"] / secs if secs else None
    ticks = run.get("cpu_ticks")
    if ticks is None or not run["requests"]:
        run["cpu_us_per_req"] = None
        run["sys_us_per_req"] = None
        run["proxy_busy_pct"] = None
    else:
        # The scheduler's run time (ns resolution) when recorded; clock ticks (10 ms) before.
        cpu_us = run.get("run_us")
        if cpu_us is None:
            cpu_us = ticks * 1e6 / run["clk_tck"]
        run["cpu_us_per_req"] = cpu_us / run["requests"]
        sys = run.get("sys_ticks")
        # The kernel's share of the ticks, applied to the precise figure.
        run["sys_us_per_req"] = (cpu_us * sys / ticks / run["requests"]
                                 if sys is not None and ticks else None)
        run["proxy_busy_pct"] = 100 * cpu_us / run["duration_us"] if run["duration_us"] else None
    # Core 0 is meant for the proxy alone, but the machine is shared: the time its threads
    # were runnable yet waited for the core says how much other processes delayed it.
    wait = run.get("runq_wait_us")
    run["runq_wait_pct"] = (100 * wait / run["duration_us"]
                            if wait is not None and run["duration_us"] else None)
    return run


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio_value(kind, rows, num, den):
    """One round's value of a ratio; None when a figure is missing or meaningless."""
    a, b, d = rows.get(num), rows.get(den) if den else None, rows.get("direct")
    try:
        if kind == "cpu":
            return a["cpu_us_per_req"] / b["cpu_us_per_req"]
        if kind == "rps":
            return a["rps"] / b["rps"]
        if kind == "added50":
            return a["p50_us"] - d["p50_us"]
        if kind == "added99r":
            den_added = b["p99_us"] - d["p99_us"]
            # A peer's added p99 at or below zero (noise larger than its cost) makes the
            # ratio meaningless for this round.
            return (a["p99_us"] - d["p99_us"]) / den_added if den_added > 0 else None
    except (TypeError, KeyError, ZeroDivisionError):
        return None
    return None


def fmt(v, digits=1):
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def main():
    samples_path, meta_path, out_path = sys.argv[1:4]
    extras = []
    if len(sys.argv) > 4:
        with open(sys.argv[4]) as f:
            extras = [json.loads(line) for line in f if line.strip()]
    with open(meta_path) as f:
        meta = json.load(f)
    runs, rounds = [], []
    with open(samples_path) as f:
        for line in f:
            if not line.strip():
                continue
            obj = json.loads(line)
            (runs if obj["kind"] == "run" else rounds).append(obj)
    runs = [derive(r) for r in runs]
    max_steal = meta["max_steal_pct"]

    out = {
        "meta": meta,
        "steal": [],
        "scenarios": {},
        "ratios": [],
        "warnings": [],
        "extra_rows": extras,
        "runs": runs,
    }
    lines = []
    p = lines.append

    p(f"quota-proxy comparison benchmark, {meta['date']}"
      f" ({'quick' if meta['quick'] else 'full'}: {meta['rounds']} rounds x {meta['duration_s']} s per target)")
    p(f"proxy under test pinned to core 0, one worker; load generator + upstream on core 1; "
      f"nice {meta.get('nice', 0)}.\nquota-proxy (TOKIO_WORKER_THREADS=1), tokio threads that did "
      f"work (quotas off, on): {meta.get('qp_busy_runtime_threads', '?')}")
    idle = meta.get("idle") or {}
    if meta.get("cpu_model") or idle.get("cpuidle_driver"):
        poll = idle.get("guest_halt_poll_ns")
        p(f"machine: {meta.get('cpu_model') or 'unknown CPU'}, {meta.get('cpus', '?')} CPUs; "
          f"cpuidle driver {idle.get('cpuidle_driver') or 'none'}"
          + ("" if poll is None
             else ", guest halt polling off (an idle vCPU halts at once)" if poll == 0
             else f", guest halt polling up to {poll} ns"))

    kept_rounds = {}
    for scen in SCENARIOS:
        srounds = sorted((r for r in rounds if r["scenario"] == scen), key=lambda r: r["round"])
        kept = [r["round"] for r in srounds if r["steal_pct"] <= max_steal]
        dropped = [r["round"] for r in srounds if r["steal_pct"] > max_steal]
        if srounds and not kept:
            out["warnings"].append(
                f"{scen}: every round was above {max_steal}% steal; all kept, figures are suspect")
            kept, dropped = [r["round"] for r in srounds], []
        elif dropped:
            out["warnings"].append(
                f"{scen}: dropped round(s) {dropped} (steal above {max_steal}%)")
        kept_rounds[scen] = kept
        out["steal"].extend(
            {"scenario": scen, "round": r["round"], "steal_pct": r["steal_pct"],
             "kept": r["round"] in kept} for r in srounds)

    for scen, title in SCENARIOS.items():
        kept = kept_rounds[scen]
        srun = [r for r in runs if r["scenario"] == scen and r["round"] in kept]
        if not srun:
            continue
        steal = [s for s in out["steal"] if s["scenario"] == scen]
        p("")
        p(f"{title}; rounds kept {len(kept)}/{len(steal)}, steal per round "
          + " ".join(f"{s['steal_pct']:.1f}%" + ("" if s["kept"] else "(dropped)") for s in steal))
        header = f"  {'median':<22}" + "".join(f"{LABELS[t]:>13}" for t in TARGETS)
        p(header)
        figures = {}
        metrics = [
            ("requests/s", "rps", 0),
            ("proxy CPU us/request", "cpu_us_per_req", 1),
            ("  of which kernel us", "sys_us_per_req", 1),
            ("proxy core busy %", "proxy_busy_pct", 0),
            ("p50 latency us", "p50_us", 0),
            ("p99 latency us", "p99_us", 0),
            ("proxy run-queue wait %", "runq_wait_pct", 1),
        ]
        for label, key, digits in metrics:
            row = f"  {label:<22}"
            for t in TARGETS:
                v = median(r[key] for r in srun if r["target"] == t)
                figures.setdefault(t, {})[key] = v
                row += f"{fmt(v, digits):>13}"
            p(row)
        busy_core0 = []
        for t in TARGETS:
            tr = [r for r in srun if r["target"] == t]
            figures[t]["errors"] = sum(r["errors"] + r["non2xx"] for r in tr)
            figures[t]["rounds"] = len(tr)
            waited = figures[t]["runq_wait_pct"]
            if waited is not None and waited > 5:
                busy_core0.append(f"{t} {waited:.0f}%")
            if figures[t]["errors"]:
                out["warnings"].append(
                    f"{scen}/{t}: {figures[t]['errors']} failed or non-2xx responses")
        if busy_core0:
            out["warnings"].append(
                f"{scen}: the proxy waited for core 0 behind other processes ("
                + ", ".join(busy_core0) + " of the run, median): requests/s and latency "
                "suffer, CPU/request much less")
        paced = meta.get("load", {}).get(scen, {}).get("rate")
        if isinstance(paced, int) and paced > 0:
            short = [f"{t} {figures[t]['rps']:.0f}" for t in TARGETS
                     if figures[t]["rps"] is not None and figures[t]["rps"] < 0.97 * paced]
            if short:
                out["warnings"].append(
                    f"{scen}: paced at {paced} req/s, but " + ", ".join(short)
                    + " req/s: not an equal load for these")
        out["scenarios"][scen] = {"title": title, "kept_rounds": kept, "medians": figures}

    p("")
    p(f"  {'ratio (per round, median)':<42}{'proxy':>9}{'peer':>9}{'median':>9}  {'SPEC 13 target':<16}{'met':<5} per round")
    for name, scen, kind, num, den, target, pred in RATIOS:
        kept = kept_rounds.get(scen, [])
        per_round = []
        for rnd in kept:
            rows = {r["target"]: r for r in runs if r["scenario"] == scen and r["round"] == rnd}
            per_round.append(ratio_value(kind, rows, num, den))
        med = median(per_round)
        met = None if pred is None or med is None else bool(pred(med))
        digits = 0 if kind == "added50" else 2
        label = f"{scen}: {name}"
        rounds_rows = [{r["target"]: r for r in runs if r["scenario"] == scen and r["round"] == rnd}
                       for rnd in kept]
        num_fig = median(figure(kind, rows, num) for rows in rounds_rows)
        den_fig = median(figure(kind, rows, den) for rows in rounds_rows) if den else None
        p(f"  {label:<42}{fmt(num_fig, 1):>9}{fmt(den_fig, 1):>9}{fmt(med, digits):>9}  {target:<16}"
          f"{('-' if met is None else ('yes' if met else 'NO')):<5} "
          + " ".join(fmt(v, digits) for v in per_round))
        out["ratios"].append({
            "scenario": scen, "name": name, "kind": kind, "numerator": num,
            "denominator": den, "per_round": per_round, "median": med,
            "numerator_figure": num_fig, "denominator_figure": den_fig,
            "target": None if target == "-" else target, "met": met,
        })
    if extras:
        p("")
        p("  other SPEC 13 rows (benches/compare/extra.sh; proxy and peer are medians over rounds,"
          " ratio the median of the per-round ratios where the rows ran in rounds)")
        p(f"  {'row':<70}{'proxy':>10}{'peer':>10}{'ratio':>8}  {'target':<18}{'met':<5}")
        for x in extras:
            met = x.get("met")
            p(f"  {x['row']:<70}{fmt(x.get('proxy'), 1):>10}{fmt(x.get('peer'), 1):>10}"
              f"{fmt(x.get('ratio'), 3):>8}  {(x.get('target') or '-'):<18}"
              f"{('-' if met is None else ('yes' if met else 'NO')):<5}")
            if x.get("peer_name") or x.get("detail"):
                p(f"      {('peer: ' + x['peer_name'] + '; ') if x.get('peer_name') else ''}{x.get('detail') or ''}")
    for w in meta.get("notes", []):
        out["warnings"].append(w)
    if out["warnings"]:
        p("")
        for w in out["warnings"]:
            p(f"  note: {w}")

    text = "\n".join(lines)
    print(text)
    out["table"] = text
    with open(out_path, "w") as f:
        json.dump(out, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
