#!/usr/bin/env python3
"""Live-reload benchmark: while oha keeps 1000 rps on the gateway, a VirtualService file is
saved once a second with a new response header; a poller measures the time from the save
(the file closed) to the first response that carries the new header. Reports the latency
percentiles over all saves and every failed request of the load. Loopback only."""
import http.client
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time

import benchlib as b

RELOADS = int(os.environ.get("RELOADS", "20"))
THREADS = os.environ.get("THREADS", "1")

BACKEND = b.httpbin_app("backend") + "---\n" + b.BENCH_GATEWAY



def generation_route(n):
    """The bench route to httpbin, its responses carrying generation `n`."""
    return b.bench_route(8000, {"x-generation": n})


def main():
    b.ensure_tools()
    work = tempfile.mkdtemp(prefix="meshd-reload-")
    cfg = os.path.join(work, "mesh")
    os.makedirs(cfg)
    with open(os.path.join(cfg, "backend.yaml"), "w") as f:
        f.write(BACKEND)
    route = os.path.join(cfg, "route.yaml")
    with open(route, "w") as f:
        f.write(generation_route(0))
    mesh = b.Mesh(cfg, {"MESHD_THREADS": THREADS, "MESHD_APP_THREADS": THREADS})
    try:
        host, port = mesh.gateway.rsplit(":", 1)
        seconds = RELOADS + 3
        load = {}

        def run_load():
            load["result"] = b.oha(f"http://{mesh.gateway}/get", "bench.one", 1000, seconds)

        steal = b.Steal()
        t = threading.Thread(target=run_load)
        t.start()
        time.sleep(1.5)
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        delays, poll_failures = [], 0
        for n in range(1, RELOADS + 1):
            with open(route, "w") as f:
                f.write(generation_route(n))
            saved = time.perf_counter()
            while True:
                try:
                    conn.request("GET", "/get", headers={"Host": "bench.one"})
                    r = conn.getresponse()
                    r.read()
                    if r.status != 200:
                        poll_failures += 1
                    if r.getheader("x-generation") == str(n):
                        break
                except (OSError, http.client.HTTPException):
                    poll_failures += 1
                    conn = http.client.HTTPConnection(host, int(port), timeout=5)
                if time.perf_counter() - saved > 5:
                    sys.exit(f"save {n} not served within 5 s")
            delays.append((time.perf_counter() - saved) * 1000)
            time.sleep(max(0.0, 1.0 - (time.perf_counter() - saved)))
        t.join()
        pct, qps, codes, errors = load["result"]
        failed = errors + sum(c for code, c in codes.items() if code != "200") + poll_failures
        delays.sort()
        p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))]
        print(f"# Live reload under load: {RELOADS} saves, one a second, oha -q 1000 on the gateway "
              f"({THREADS} proxy thread(s))")
        print(f"# {steal.note('the reloads')}\n")
        print("| figure | value |")
        print("|---|---|")
        print(f"| save to new routing served, median (ms) | {statistics.median(delays):.1f} |")
        print(f"| save to new routing served, p99 / max (ms) | {p99:.1f} / {delays[-1]:.1f} |")
        print(f"| requests during the reloads | {sum(codes.values()) + errors:,} at {qps:,.0f} rps |")
        print(f"| failed requests (non-200 or errors) | {failed} |")
        print(f"| load latency p50 / p90 / p99 (ms) | {pct['50']:.3f} / {pct['90']:.3f} / {pct['99']:.3f} |")
    finally:
        mesh.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
