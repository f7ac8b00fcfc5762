#!/usr/bin/env python3
"""Data-plane benchmark: the same backend reached directly, through nginx, through meshd's
gateway (one hop), through a meshd sidecar pair with mTLS (the Istio sidecar-pair path), and
Bookinfo's /productpage; last, nginx adding the ten fields meshd's gateway adds (Istio's
request id, attempt count, forwarded proto, trace context, peer id, and since run 45 the
client's address and the internal mark), which the backend then parses in both rows (run 18
measured it with seven: the peer id was missing; runs 19 to 44 with eight). Rows 2 and 7 are
nginx's, so `--profile` is of use for rows 3 to 6.
For each path: closed-loop throughput (wrk), then open-loop latency
at a fixed 1000 rps with latency correction (oha -q), the proxies' CPU at that rate, and the
share of upstream requests on a reused connection. Both kinds of run go in ROUNDS rounds over
all the paths (in reverse order every other round), and each figure is a median over its rounds. Loopback only, bounded in time.

The backend is meshd's fortio server demo app answering `/echo?size=1024` with 1 KiB (a pod
without a sidecar; the pair row reaches a second one with a sidecar): the response does not
depend on the headers a proxy adds, so every row asks the backend for the same work. Demo apps run on their own
threads (`meshd-app`), proxies on worker threads of theirs (`meshd-proxy`): both get THREADS
threads, as nginx gets THREADS workers, so every proxy under test has the same CPU budget and the
backend is the same in every row. meshd's CPU is every thread of it but the apps': the workers and
the control thread (accepting, reloads, admin API).

`--profile ROW` (1-based row number) records the proxies' threads with perf during that row's
wrk run and prints the hottest symbols instead of the table; with `--svg FILE` it also draws the
recording as a flamegraph (inferno's, installed once with `cargo install inferno --locked`).
"""
import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import urllib.request

import benchlib as b

DUR = int(os.environ.get("DURATION", "5"))
THREADS = os.environ.get("THREADS", "1")
# Even, so that every row runs as often before as after its neighbours (see `in_turn`).
ROUNDS = int(os.environ.get("ROUNDS", "4"))
# One connection: the latency a request gains per proxy, without oha's bursts queueing at a
# one-thread backend (with -c 8 the direct row's own p99 rises to about 0.4 ms, above the proxied rows').
LAT_CONNS = int(os.environ.get("LAT_CONNS", "1"))

PATH = "/echo?size=1024"

DIRECT_APP = b.fortio_app("backend", sidecar=False) + "---\n" + b.fortio_app("echo") + "---\n" + b.fortio_app("echo-h2") + """---
# The same pair, its sidecars talking HTTP/2 (one multiplexed connection) instead of Istio's
# default HTTP/1.1.
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: echo-h2
spec:
  host: echo-h2
  trafficPolicy: {connectionPool: {http: {h2UpgradePolicy: UPGRADE}}}
---
""" + b.BENCH_GATEWAY + "---\n" + b.bench_route(8080)


def in_turn(rows, i):
    """The rows in round `i`'s order: as listed, and reversed every other round. A row measures
    differently after one row than after another (the gateway's row followed nginx's in every
    round up to run 48, and its added p50 was over nginx's in each of runs 42 to 48, while
    rounds in alternating order put it 4 µs under), so each row runs as often before as after
    its neighbours."""
    rows = list(rows)
    return rows[::-1] if i % 2 else rows


SAMPLES = ("httpbin/httpbin.yaml", "httpbin/sample-client/fortio-deploy.yaml",
           "bookinfo/platform/kube/bookinfo.yaml", "bookinfo/networking/bookinfo-gateway.yaml")


def mesh_folder(work, samples=SAMPLES):
    """The benchmark's folder: the given sample files and the backends with their routes."""
    cfg = os.path.join(work, "mesh")
    os.makedirs(cfg)
    for rel in samples:
        shutil.copy(os.path.join(b.SAMPLES, rel), cfg)
    with open(os.path.join(cfg, "backend.yaml"), "w") as f:
        f.write(DIRECT_APP)
    return cfg


def profile(mesh, addr, host, path, svg=None):
    tids = b.thread_ids(mesh.pid, "meshd-proxy")
    data = "/tmp/meshd-perf.data"
    rec = subprocess.Popen(["perf", "record", "-e", "cpu-clock", "-F", "1500", "--call-graph", "dwarf,32768", "-o", data, "-t", ",".join(tids)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rps, _ = b.wrk(f"http://{addr}{path}", host, DUR, threads=int(THREADS))
    rec.send_signal(2)
    rec.wait()
    print(f"# {rps:,.0f} rps under perf; hottest symbols of the meshd-proxy threads (self time)\n")
    out = subprocess.run(["perf", "report", "-i", data, "--no-children", "--stdio", "-g", "none",
                          "--percent-limit", "0.7", "--sort", "symbol"], capture_output=True, text=True).stdout
    print("\n".join(line for line in out.splitlines() if line and not line.startswith("#")))
    if svg:
        flamegraph(data, svg)


def flamegraph(data, svg):
    """Draws perf's recording as a flamegraph: every stack perf unwound, folded by inferno."""
    script = subprocess.run(["perf", "script", "-i", data], capture_output=True, text=True).stdout
    folded = subprocess.run([b.cargo_tool("inferno-collapse-perf")], input=script, capture_output=True,
                            text=True, check=True).stdout
    with open(svg, "w") as f:
        subprocess.run([b.cargo_tool("inferno-flamegraph"), "--title", os.path.basename(svg)], input=folded,
                       stdout=f, text=True, check=True)
    print(f"\n# flamegraph of {len(folded.splitlines()):,} distinct stacks: {svg}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", type=int, help="profile one row (1-based) with perf instead of the table")
    ap.add_argument("--svg", help="with --profile: also draw the recording as a flamegraph in this file")
    args = ap.parse_args()
    if args.svg and not args.profile:
        ap.error("--svg draws the recording of --profile ROW")
    debian = b.LOAD_TOOLS + ((("perf", "linux-perf"),) if args.profile else ())
    b.ensure_tools(oha=not args.profile, debian=debian, inferno=bool(args.svg))
    work = tempfile.mkdtemp(prefix="meshd-bench-")
    env = {"MESHD_THREADS": THREADS, "MESHD_APP_THREADS": THREADS}
    mesh = b.Mesh(mesh_folder(work), env)
    nginx = None
    try:
        backend = mesh.pod_addr("backend-")
        nginx, nginx_pids = b.start_nginx(work, backend, THREADS)
        nginx_threads = [(p, None) for p in nginx_pids]
        # Warm every path (connections, certificates).
        for via, host, path in ((mesh.gateway, "bench.one", PATH), (mesh.proxy, "echo:8080", PATH),
                                (mesh.proxy, "echo-h2:8080", PATH), (mesh.gateway, None, "/productpage")):
            req = urllib.request.Request(f"http://{via}{path}", headers={"Host": host} if host else {})
            urllib.request.urlopen(req).read()
        proxies = [(mesh.pid, "!meshd-app")]
        rows = [  # name, address, Host, path, proxy threads, hops
            ("direct (backend)", backend, None, PATH, [], 0),
            ("nginx, 1 hop", b.NGINX_ADDR, None, PATH, nginx_threads, 1),
            ("meshd gateway, 1 hop", mesh.gateway, "bench.one", PATH, proxies, 1),
            ("meshd sidecar pair, mTLS", mesh.proxy, "echo:8080", PATH, proxies, 2),
            ("same pair, HTTP/2 between the sidecars", mesh.proxy, "echo-h2:8080", PATH, proxies, 2),
            ("Bookinfo /productpage via gateway", mesh.gateway, None, "/productpage", proxies, 0),
            # Not a target's reference: it splits the gap to nginx into the backend's and meshd's.
            ("nginx adding the gateway's 10 fields, 1 hop", b.NGINX_FIELDS_ADDR, None, PATH,
             nginx_threads, 1),
        ]
        if args.profile:
            name, addr, host, path, _, _ = rows[args.profile - 1]
            print(f"## {name}")
            profile(mesh, addr, host, path, args.svg)
            return
        results = [dict(name=row[0], hops=row[5], errors=0, codes={}, runs=[], proxy=0.0, qps=0.0, rps_runs=[],
                        us_runs=[], rq=0, cx=0) for row in rows]
        steal_tp = b.Steal()
        # Throughput rounds interleave the paths too: one wrk run of a path swings by a tenth with
        # what else the two cores run, so each path's figure is its median over the rounds.
        for i in range(ROUNDS):
            for r, (name, addr, host, path, threads, hops) in in_turn(zip(results, rows), i):
                # Connection reuse is meshd's to report: its counters are read around its rows only.
                meshd_row = threads is proxies
                before = mesh.stats() if meshd_row else {}
                busy = b.CpuMeter({"proxy": threads})
                rps, non2xx = b.wrk(f"http://{addr}{path}", host, DUR, threads=int(THREADS))
                r["us_runs"].append(busy.cores()["proxy"] / max(rps, 1) * 1e6)
                r["rps_runs"].append(rps)
                r["errors"] += non2xx
                if meshd_row:
                    after = mesh.stats()
                    r["rq"] += after.get("upstream_rq_total", 0) - before.get("upstream_rq_total", 0)
                    r["cx"] += after.get("upstream_cx_total", 0) - before.get("upstream_cx_total", 0)
        for r in results:
            r["rps"], r["us"] = statistics.median(r["rps_runs"]), statistics.median(r["us_runs"])
            r["reuse"] = (r["rq"] - r["cx"]) / r["rq"] * 100 if r["rq"] else None
        tp_note = steal_tp.note("the throughput rounds")
        steal_lat = b.Steal()
        # Latency rounds interleave the paths, so a noisy moment of the machine is spread over all
        # of them; each percentile is the median over the rounds.
        for i in range(ROUNDS):
            for r, (name, addr, host, path, threads, hops) in in_turn(zip(results, rows), i):
                cpu = b.CpuMeter({"proxy": threads})
                # A page takes about 1 ms: one connection at 1000 rps would be at Bookinfo's knee.
                conns = max(LAT_CONNS, 4) if path == "/productpage" else LAT_CONNS
                pct, qps, codes, errors = b.oha(f"http://{addr}{path}", host, 1000, DUR, connections=conns)
                r["proxy"] += cpu.cores()["proxy"] / ROUNDS
                r["qps"] += qps / ROUNDS
                r["runs"].append(pct)
                r["errors"] += errors
                for c, n in codes.items():
                    r["codes"][c] = r["codes"].get(c, 0) + n
        for r in results:
            r["pct"] = {p: statistics.median(run[p] for run in r["runs"]) for p in ("50", "90", "99")}
        report(results, (tp_note, steal_lat.note("the latency rounds")))
    finally:
        if nginx:
            nginx.terminate()
        mesh.stop()
        shutil.rmtree(work, ignore_errors=True)


def report(results, steal=()):
    base = results[0]
    print(f"# Data plane: {THREADS} thread(s) per proxy and for the apps, wrk -t{THREADS} -c16 {DUR}s, {ROUNDS} rounds; "
          f"oha -q 1000 -c {LAT_CONNS} --latency-correction {DUR}s, {ROUNDS} rounds (Bookinfo: -c 4) ({os.cpu_count()} cores)")
    print(f"# {b.profile_note()}")
    print(f"# {b.machine_note()}")
    for note in steal:
        print(f"# {note}")
    print()
    print("| path | throughput (rps) | / direct | p50 ms | p90 ms | p99 ms | added p50 / p90 / p99 ms "
          "| proxy CPU at 1000 rps (cores) | per hop | proxy CPU per request at saturation (µs) | upstream reuse "
          "| failed |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        added = " / ".join(f"{r['pct'][p] - base['pct'][p]:+.3f}" for p in ("50", "90", "99"))
        per_hop = f"{r['proxy'] / r['hops'] * 1000 / max(r['qps'], 1):.3f}" if r["hops"] else "—"
        reuse = f"{r['reuse']:.2f} %" if r["reuse"] is not None else "—"
        print(f"| {r['name']} | {r['rps']:,.0f} | {r['rps'] / base['rps']:.2f} | {r['pct']['50']:.3f} | "
              f"{r['pct']['90']:.3f} | {r['pct']['99']:.3f} | {added} | {r['proxy']:.3f} | {per_hop} | {r['us']:.1f} | {reuse} | "
              f"{r['errors'] + sum(n for c, n in r['codes'].items() if c != '200')} |")
    # The one-hop comparison round by round: how far the medians above can be trusted.
    def by_round(a, b):
        return ", ".join(f"{x / y:.2f}" for x, y in zip(a["rps_runs"], b["rps_runs"]) if y)
    nginx, gateway, fields = results[1], results[2], results[6]
    print(f"\nthroughput: the median of {ROUNDS} rounds, the paths interleaved; meshd gateway / nginx by round: "
          f"{by_round(gateway, nginx)}; meshd gateway / nginx adding the gateway's fields by round: {by_round(gateway, fields)}")
    print("proxy CPU: meshd's threads but the apps' (meshd-proxy workers and the control thread); nginx's workers, user+system, during the "
          "1000 rps runs; latency percentiles are medians over the rounds; per hop: that, per 1000 rps, divided by the proxies on the path (not given for "
          "Bookinfo, whose path length depends on the reviews version). Apps' threads (the backend) are measured apart and not counted.")


if __name__ == "__main__":
    main()
