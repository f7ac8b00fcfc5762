#!/usr/bin/env python3
"""Same-session A/B rounds of meshd builds against nginx: is a change faster, on a machine whose
speed moves by a tenth from one minute to the next?

Each round starts, for each build in turn, the data-plane bench's mesh and nginx in front of the
same backend, and runs wrk through nginx and then through the gateway (one hop, one proxy thread
each, 1 KiB answers). A build's ratio in a round is its gateway's throughput over the nginx
measured beside it, in the same mesh; the medians over the rounds compare the builds. The
order of the builds moves their figures (in two trials of 8 rounds, whichever build ran
second had the higher median, by 0.06 and 0.07), so odd rounds take them in reverse: with an
even number of rounds each build runs first as often as second. Also per
request: the user and system CPU of the proxy's threads (nginx's worker, or every meshd thread
but the apps') and the backend's CPU, and with LAT=1 the latency at 1000 rps (oha, one
connection).

Usage: python3 scripts/bench_ab.py BINARY [BINARY ...]
Environment: ROUNDS (default 6; keep it even), DURATION (seconds a run, default 3), LAT (1: latency too),
BPATH (the backend's path, default the data-plane bench's).
"""
import os
import shutil
import statistics
import sys
import tempfile

import benchlib as b
import bench_dataplane as d


def measure(url, host, proxy, app, duration, latency):
    """One wrk run (and an oha run with `latency`): rps and CPU a request, in µs."""
    p0, a0 = b.user_sys(proxy), b.user_sys(app)
    rps, non2xx = b.wrk(url, host, duration)
    p1, a1 = b.user_sys(proxy), b.user_sys(app)
    n = max(rps * duration, 1)
    row = dict(rps=rps, failed=non2xx, usr=(p1[0] - p0[0]) / b.HZ / n * 1e6, sys=(p1[1] - p0[1]) / b.HZ / n * 1e6,
               app=(sum(a1) - sum(a0)) / b.HZ / n * 1e6)
    if latency:
        pct, _, _, _ = b.oha(url, host, 1000, duration, connections=1)
        row.update(p50=pct["50"], p90=pct["90"], p99=pct["99"])
    return row


def main():
    bins = sys.argv[1:]
    if not bins:
        sys.exit(__doc__)
    rounds, duration = int(os.environ.get("ROUNDS", "6")), int(os.environ.get("DURATION", "3"))
    latency, path = os.environ.get("LAT") == "1", os.environ.get("BPATH", d.PATH)
    b.ensure_tools(oha=latency)
    runs = {(name, bin_): [] for bin_ in bins for name in ("nginx", "gateway")}
    for i in range(rounds):
        for bin_ in reversed(bins) if i % 2 else bins:
            b.BIN = bin_
            work = tempfile.mkdtemp(prefix="meshd-ab-")
            mesh = b.Mesh(d.mesh_folder(work), {"MESHD_THREADS": "1", "MESHD_APP_THREADS": "1"})
            nginx = None
            try:
                backend = mesh.pod_addr("backend-")
                nginx, nginx_pids = b.start_nginx(work, backend, 1)
                app = [(mesh.pid, "meshd-app")]
                b.wrk(f"http://{mesh.gateway}{path}", "bench.one", 1)  # warm the pool
                # Each run follows a run of the other proxy: in trials, a run that repeats the one
                # before it measured higher than one that follows a switch.
                runs[("nginx", bin_)].append(measure(f"http://{b.NGINX_ADDR}{path}", None,
                                                     [(p, None) for p in nginx_pids], app, duration, latency))
                runs[("gateway", bin_)].append(measure(f"http://{mesh.gateway}{path}", "bench.one",
                                                       [(mesh.pid, "!meshd-app")], app, duration, latency))
            finally:
                if nginx:
                    nginx.terminate()
                mesh.stop()
                shutil.rmtree(work, ignore_errors=True)
    med = statistics.median
    print(f"# {rounds} rounds, wrk -t1 -c16 {duration}s on {path}, one proxy thread each\n")
    print("| build | gateway / nginx, by round | median | gateway user / system µs a request | "
          "nginx user / system | backend µs a request (behind nginx) | failed |")
    print("|---|---|---|---|---|---|---|")
    for bin_ in bins:
        gw, ng = runs[("gateway", bin_)], runs[("nginx", bin_)]
        ratios = [g["rps"] / n["rps"] for g, n in zip(gw, ng) if n["rps"]]
        print(f"| {bin_} | {' '.join(f'{r:.2f}' for r in ratios)} | {med(ratios):.2f} | "
              f"{med(g['usr'] for g in gw):.1f} / {med(g['sys'] for g in gw):.1f} | "
              f"{med(n['usr'] for n in ng):.1f} / {med(n['sys'] for n in ng):.1f} | "
              f"{med(g['app'] for g in gw):.1f} ({med(n['app'] for n in ng):.1f}) | "
              f"{sum(r['failed'] for r in gw + ng)} |")
    if latency:
        print("\n| build | gateway p50 / p90 / p99 ms at 1000 rps | nginx p50 / p90 / p99 |")
        print("|---|---|---|")
        for bin_ in bins:
            gw, ng = runs[("gateway", bin_)], runs[("nginx", bin_)]
            pct = lambda rows: " / ".join(f"{med(r[k] for r in rows):.3f}" for k in ("p50", "p90", "p99"))
            print(f"| {bin_} | {pct(gw)} | {pct(ng)} |")


if __name__ == "__main__":
    main()
