#!/usr/bin/env python3
"""Draws meshguard's board (the main panels of dashboards/meshguard.json) into a PNG from Envoy
`/stats/prometheus` snapshots, without Prometheus or Grafana.

    tools/board.py --prom FILE [--prom FILE ...] --out board.png [--interval SECONDS]

One snapshot: totals since Envoy started. Several (in the order given, oldest first): rates
per second between the first and the last, over the time between them (the files' modification
times, or --interval). Needs the labelled families (the stats_tags rules of envoy/examples/*).
Exits 2 when a snapshot holds no meshguard series.
"""

import argparse
import os
import re
import sys
from collections import defaultdict

LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(path):
    """{(name, frozenset of (label, value)): value} of one text-format snapshot."""
    series = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            m = LINE.match(line)
            if not m:
                continue
            name, labels, value = m.groups()
            try:
                v = float(value)
            except ValueError:
                continue
            series[(name, frozenset(LABEL.findall(labels or "")))] = v
    return series


def combine(snapshots, seconds):
    """One snapshot: itself. Several: (last - first) / seconds per series (counters; a series
    absent from the first counts from 0; gauges take the last value)."""
    if len(snapshots) == 1:
        return snapshots[0]
    first, last = snapshots[0], snapshots[-1]
    out = {}
    for key, v in last.items():
        name = key[0]
        if name.endswith(("_keys", "_age_seconds")):
            out[key] = v
        else:
            out[key] = max(v - first.get(key, 0.0), 0.0) / seconds
    return out


def total_by(data, name, label, where=None):
    sums = defaultdict(float)
    for (n, labels), v in data.items():
        if n != name:
            continue
        d = dict(labels)
        if where and any(d.get(k) != w for k, w in where.items()):
            continue
        sums[d.get(label, "")] += v
    return dict(sums)


def quantile(data, q):
    """The q-quantile of meshguard_decision_time_us from its buckets (upper bound of the bucket
    it falls in), or None."""
    buckets = defaultdict(float)
    for (n, labels), v in data.items():
        if n == "meshguard_decision_time_us_bucket":
            le = dict(labels).get("le")
            if le is not None:
                buckets[float(le)] += v
    if not buckets:
        return None
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return None
    for b in bounds:
        if buckets[b] >= q * total:
            return b
    return bounds[-1]


def bars(ax, values, title, unit, top=None, color="tab:blue"):
    items = sorted(values.items(), key=lambda kv: -kv[1])
    items = [(k, v) for k, v in items if v > 0][: top or len(items)]
    ax.set_title(title, fontsize=10)
    if not items:
        ax.text(0.5, 0.5, "none", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    labels = [k for k, _ in items][::-1]
    ax.barh(labels, [v for _, v in items][::-1], color=color)
    ax.set_xlabel(unit, fontsize=8)
    ax.tick_params(labelsize=8)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prom", action="append", required=True, help="a /stats/prometheus snapshot")
    ap.add_argument("--out", required=True, help="the PNG to write")
    ap.add_argument("--interval", type=float, help="seconds between the first and last snapshot")
    args = ap.parse_args()

    snapshots = [parse(p) for p in args.prom]
    for path, snap in zip(args.prom, snapshots):
        if not any(name.startswith("meshguard_") for name, _ in snap):
            print(f"{path}: no meshguard series (is it Envoy's /stats/prometheus?)", file=sys.stderr)
            return 2
    seconds = None
    if len(snapshots) > 1:
        seconds = args.interval or (os.path.getmtime(args.prom[-1]) - os.path.getmtime(args.prom[0]))
        if not seconds or seconds <= 0:
            print("snapshots taken at the same time: give --interval", file=sys.stderr)
            return 2
    data = combine(snapshots, seconds)
    unit = "requests" if seconds is None else "per second"

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(18, 8))
    when = "totals since Envoy started" if seconds is None else f"rates over {seconds:.0f} s"
    fig.suptitle(f"meshguard — {when}", fontsize=13)
    req = "meshguard_requests_total"
    bars(axes[0][0], total_by(data, req, "decision"), "Allowed vs denied", unit)
    bars(axes[0][1], total_by(data, req, "reason", {"decision": "deny"}), "Denied by reason", unit,
         top=10, color="tab:red")
    routes = defaultdict(float)
    for (n, labels), v in data.items():
        if n == req:
            d = dict(labels)
            routes[f"{d.get('route')} {d.get('decision')}"] += v
    bars(axes[0][2], routes, "Requests by route and decision", unit, top=12)
    bars(axes[0][3], total_by(data, req, "status", {"decision": "deny"}), "401 / 403 / 429 answers",
         unit, color="tab:orange")
    bars(axes[1][0], total_by(data, "meshguard_rate_limited_total", "policy"), "429s by policy",
         unit, color="tab:orange")
    bars(axes[1][1], total_by(data, "meshguard_refused_identities_total", "identity"),
         "Top refused identities (bucket)", unit, top=10, color="tab:purple")
    tls = {
        "certificate refused": sum(total_by(data, "envoy_listener_ssl_fail_verify_error", "envoy_listener_address").values()),
        "no certificate": sum(total_by(data, "envoy_listener_ssl_fail_verify_no_cert", "envoy_listener_address").values()),
        "SAN refused": sum(total_by(data, "envoy_listener_ssl_fail_verify_san", "envoy_listener_address").values()),
        "other TLS errors": sum(total_by(data, "envoy_listener_ssl_connection_error", "envoy_listener_address").values()),
    }
    bars(axes[1][2], tls, "mTLS handshake failures", "handshakes" if seconds is None else unit,
         color="tab:brown")
    ax = axes[1][3]
    ax.axis("off")
    ax.set_title("JWKS health, decision time", fontsize=10)
    lines = []
    keys = total_by(data, "meshguard_jwks_keys", "provider")
    age = total_by(data, "meshguard_jwks_age_seconds", "provider")
    fetches = defaultdict(dict)
    # Fetches are few: counted since Envoy started (the last snapshot), whatever the mode.
    for (n, labels), v in snapshots[-1].items():
        if n == "meshguard_jwks_fetches_total" and v > 0:
            d = dict(labels)
            fetches[d.get("provider")][d.get("outcome")] = v
    for p in sorted(set(keys) | set(age) | set(fetches)):
        f = ", ".join(f"{o} {v:g}" for o, v in sorted(fetches[p].items())) or "none"
        lines.append(f"{p}: {keys.get(p, 0):g} keys, age {age.get(p, 0):g} s")
        lines.append(f"    fetches since start: {f}")
    for q in (0.5, 0.99):
        v = quantile(data, q)
        lines.append(f"decision time p{int(q * 100)}: " + ("n/a" if v is None else f"≤ {v:g} µs"))
    ax.text(0.0, 0.95, "\n".join(lines) or "no data", va="top", family="monospace", fontsize=9,
            transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
