#!/usr/bin/env python3
"""Data-plane benchmark: the same backend reached directly, through nginx, through
meshd's gateway (one hop), through a meshd sidecar pair with mTLS, and Bookinfo's
/productpage. Closed-loop throughput with wrk, and latency percentiles plus CPU at a
fixed 1000 rps with `meshd load` (fortio-style, paced per connection). Loopback only.

The backend is the httpbin demo app inside meshd (a pod without a sidecar), so every
configuration hits the same code in the same process; meshd's CPU in the direct run is
the backend's cost, and the difference in the other runs is the proxies' cost.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("MESHD_BIN", os.path.join(ROOT, "target", "release", "meshd"))
SAMPLES = os.path.join(ROOT, "..", "shared", "istio-samples")
DUR = os.environ.get("DURATION", "5")
THREADS = os.environ.get("THREADS", "1")
HZ = os.sysconf("SC_CLK_TCK")

DIRECT_APP = """apiVersion: apps/v1
kind: Deployment
metadata:
  name: backend
spec:
  replicas: 1
  selector:
    matchLabels: {app: backend}
  template:
    metadata:
      labels: {app: backend}
      annotations: {sidecar.istio.io/inject: "false"}
    spec:
      containers:
      - name: httpbin
        image: docker.io/mccutchen/go-httpbin:v2.15.0
        ports: [{containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata:
  name: backend
spec:
  ports: [{name: http, port: 8000, targetPort: 8080}]
  selector: {app: backend}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: bench
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["bench.one"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: bench
spec:
  hosts: ["bench.one"]
  gateways: [bench]
  http:
  - route: [{destination: {host: backend, port: {number: 8000}}}]
"""


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total


def wrk(url, host=None):
    cmd = ["wrk", "-t", THREADS, "-c", "16", "-d", f"{DUR}s", url]
    if host:
        cmd[1:1] = ["-H", f"Host: {host}"]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return float(m.group(1)) if m else 0.0


def latency(via, url, host, pids):
    cmd = [BIN, "load", "--via", via, "-qps", "1000", "-c", "8", "-t", f"{DUR}s", "-loglevel", "Error"]
    if host:
        cmd += ["-H", f"Host: {host}"]
    cmd.append(url)
    before, t0 = cpu_ticks(pids), time.time()
    out = subprocess.run(cmd, capture_output=True, text=True).stderr
    secs = time.time() - t0
    cpu = (cpu_ticks(pids) - before) / HZ / secs
    pct = {}
    for p in ("50", "90", "99"):
        m = re.search(rf"# target {p}% ([\d.e-]+)", out)
        pct[p] = float(m.group(1)) * 1000 if m else float("nan")
    m = re.search(r"All done \d+ calls .* ([\d.]+) qps", out)
    qps = float(m.group(1)) if m else 0.0
    codes = re.findall(r"^Code (\s*-?\d+) : (\d+)", out, re.M)
    return pct, cpu, qps, codes


def main():
    for tool in ("wrk", "nginx"):
        if not shutil.which(tool):
            subprocess.run(["apt-get", "install", "-y", "nginx-light", "wrk"], check=False, capture_output=True)
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} missing: cargo build --release -p meshd")
    work = tempfile.mkdtemp(prefix="meshd-bench-")
    cfg = os.path.join(work, "mesh")
    os.makedirs(cfg)
    for rel in ("httpbin/httpbin.yaml", "httpbin/sample-client/fortio-deploy.yaml",
                "bookinfo/platform/kube/bookinfo.yaml", "bookinfo/networking/bookinfo-gateway.yaml"):
        shutil.copy(os.path.join(SAMPLES, rel), cfg)
    with open(os.path.join(cfg, "backend.yaml"), "w") as f:
        f.write(DIRECT_APP)
    env = dict(os.environ, MESHD_THREADS=THREADS, MESHD_APP_THREADS=THREADS)
    meshd = subprocess.Popen([BIN, "up", cfg, "--gateway", "127.0.0.1:0", "--gateway-tls", "127.0.0.1:0",
                              "--admin", "127.0.0.1:0", "--proxy", "127.0.0.1:0"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    nginx = None
    try:
        for line in meshd.stdout:
            if "meshd: ready:" in line:
                ready = line
                break
        gw = re.search(r"gateway http://(\S+)", ready).group(1)
        admin = re.search(r"admin http://(\S+)", ready).group(1)
        proxy = re.search(r"proxy http://(\S+)", ready).group(1)
        pods = json.load(urllib.request.urlopen(f"http://{admin}/meshd/pods"))
        backend = next(p for p in pods if p["name"].startswith("backend-"))["apps"][0].split("->")[1]
        conf = os.path.join(work, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""worker_processes {THREADS};
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  upstream backend {{ server {backend}; keepalive 64; }}
  server {{
    listen 127.0.0.1:18081;
    location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
}}
""")
        nginx = subprocess.Popen(["nginx", "-c", conf, "-g", "daemon off;"], stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        nginx_pids = [int(p) for p in subprocess.run(["pgrep", "-P", str(nginx.pid)], capture_output=True, text=True).stdout.split()] + [nginx.pid]
        # Warm up every path (connections, certificates).
        for via, host, path in ((gw, "bench.one", "/get"), (proxy, "httpbin:8000", "/get"), (gw, None, "/productpage")):
            req = urllib.request.Request(f"http://{via}{path}", headers={"Host": host} if host else {})
            urllib.request.urlopen(req).read()
        rows = [
            ("direct (backend)", backend, None, "/get", [meshd.pid]),
            ("nginx, 1 hop", "127.0.0.1:18081", None, "/get", nginx_pids + [meshd.pid]),
            ("meshd gateway, 1 hop", gw, "bench.one", "/get", [meshd.pid]),
            ("meshd sidecar pair, mTLS", proxy, "httpbin:8000", "/get", [meshd.pid]),
            ("Bookinfo /productpage via gateway", gw, None, "/productpage", [meshd.pid]),
        ]
        results = []
        for name, addr, host, path, pids in rows:
            rps = wrk(f"http://{addr}{path}", host)
            pct, cpu, qps, codes = latency(addr, f"http://{host or addr}{path}", host, pids)
            results.append((name, rps, pct, cpu, qps, codes))
        base = results[0]
        print(f"# Data plane, {THREADS} worker thread(s) each, wrk -c16 {DUR}s, latency at 1000 rps over {DUR}s ({os.cpu_count()} cores)\n")
        print("| path | throughput (rps) | / direct | p50 ms | p90 ms | p99 ms | added p50 / p90 / p99 ms | CPU cores at 1000 rps | codes |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name, rps, pct, cpu, qps, codes in results:
            added = " / ".join(f"{pct[p] - base[2][p]:+.3f}" for p in ("50", "90", "99"))
            code_s = ", ".join(f"{c.strip()}: {n}" for c, n in codes)
            print(f"| {name} | {rps:,.0f} | {rps / base[1]:.2f} | {pct['50']:.3f} | {pct['90']:.3f} | {pct['99']:.3f} | {added} | {cpu:.3f} | {code_s} |")
        print("\nCPU is the measured processes' user+system time (meshd runs the backend too: the direct row is the backend's own cost).")
    finally:
        if nginx:
            nginx.terminate()
        meshd.terminate()
        meshd.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
