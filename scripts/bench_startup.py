#!/usr/bin/env python3
"""Startup and idle-memory benchmark for `meshd up` on an empty folder.

Measures, over several launches of the release binary: time from exec to the first
200 on the gateway's /productpage, and the RSS of the whole daemon (one process:
gateway, sidecars and demo apps) after it has idled for two seconds and after a
short burst of page loads. Prints a Markdown table. Loopback only, bounded in time.
"""
import http.client
import os
import re
import statistics
import subprocess
import tempfile
import threading
import time

import benchlib as b

RUNS = int(os.environ.get("RUNS", "5"))


def get(addr, path):
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        return r.status
    finally:
        c.close()


def one_run():
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        p = subprocess.Popen(
            [b.BIN, "up", d, "--gateway", "127.0.0.1:0", "--gateway-tls", "127.0.0.1:0", "--admin", "127.0.0.1:0",
             "--proxy", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        try:
            gateway = None
            # The gateway port is bound before the config loads; read it from the ready line.
            for line in p.stdout:
                m = re.search(r"gateway http://(\S+)", line)
                if m:
                    gateway = m.group(1)
                    break
            deadline = t0 + 10
            while time.perf_counter() < deadline:
                try:
                    if get(gateway, "/productpage") == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.002)
            first_200 = time.perf_counter() - t0
            time.sleep(2)
            idle = b.rss_mib(p.pid)
            for _ in range(200):
                get(gateway, "/productpage")
            loaded = b.rss_mib(p.pid)
            return first_200, idle, loaded
        finally:
            p.terminate()
            p.wait()


def idle_rss(extra_pods):
    """RSS of the built-in mesh plus `extra_pods` httpbin pods with sidecars, after 2 s idle."""
    with tempfile.TemporaryDirectory() as d:
        with open(os.path.join(d, "extra.yaml"), "w") as f:
            f.write(b.httpbin_app("extra", replicas=extra_pods))
        mesh = b.Mesh(d)
        try:
            # Every extra sidecar has served a request (its pools and label sets exist).
            for _ in range(extra_pods * 2):
                c = http.client.HTTPConnection(*mesh.proxy.rsplit(":", 1), timeout=5)
                c.request("GET", "/get", headers={"Host": "extra:8000"})
                c.getresponse().read()
                c.close()
            time.sleep(2)
            return b.rss_mib(mesh.pid)
        finally:
            mesh.stop()


def under_load():
    """Peak RSS while wrk keeps 16 connections busy on /productpage for 5 s."""
    with tempfile.TemporaryDirectory() as d:
        mesh = b.Mesh(d)
        try:
            peak, done = [0.0], threading.Event()

            def sample():
                while not done.is_set():
                    peak[0] = max(peak[0], b.rss_mib(mesh.pid))
                    time.sleep(0.1)

            t = threading.Thread(target=sample)
            t.start()
            rps, _ = b.wrk(f"http://{mesh.gateway}/productpage", None, 5)
            done.set()
            t.join()
            return peak[0], rps
        finally:
            mesh.stop()


def main():
    b.ensure_tools(oha=False)
    steal = b.Steal()
    runs = [one_run() for _ in range(RUNS)]
    t = [r[0] * 1000 for r in runs]
    idle = [r[1] for r in runs]
    loaded = [r[2] for r in runs]
    print(f"meshd up (empty folder: Bookinfo + httpbin + fortio: 8 pods and the gateway), {RUNS} launches, {os.cpu_count()} cores")
    print()
    print("| figure | median | min | max | target |")
    print("|---|---|---|---|---|")
    print(f"| launch to first 200 on /productpage (ms) | {statistics.median(t):.0f} | {min(t):.0f} | {max(t):.0f} | <= 300 |")
    print(f"| RSS idle (MiB) | {statistics.median(idle):.1f} | {min(idle):.1f} | {max(idle):.1f} | <= 64 |")
    print(f"| RSS after 200 page loads (MiB) | {statistics.median(loaded):.1f} | {min(loaded):.1f} | {max(loaded):.1f} | <= 96 |")
    peak, rps = under_load()
    base, extra = idle_rss(0), idle_rss(20)
    print()
    print("| figure | value | target |")
    print("|---|---|---|")
    print(f"| RSS peak under load: wrk -c16 on /productpage for 5 s, {rps:,.0f} rps (MiB) | {peak:.1f} | <= 96 |")
    print(f"| RSS per extra sidecar: 20 more httpbin pods, each with a sidecar that served (MiB) "
          f"| {(extra - base) / 20:.2f} ({base:.1f} -> {extra:.1f}) | <= 2 |")
    print(f"\n# {steal.note('these launches and loads')}")


if __name__ == "__main__":
    main()
