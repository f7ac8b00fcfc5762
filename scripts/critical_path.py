#!/usr/bin/env python3
"""Time a proxy spends between the syscalls of a request, meshd's gateway against nginx.

Records the `recvfrom`, write (`writev`, `sendto`, `write`) and `epoll_wait` tracepoints of the proxy's one worker thread
with `perf record` while oha sends 1000 rps on one connection, then prints medians (µs) of:
wake-up to the request's read, request read to the upstream write, response read to the
downstream write, and the downstream write to the next sleep. Needs perf with tracepoints
(run as root). Usage: python3 scripts/critical_path.py [path/to/meshd]
"""
import os
import re
import statistics
import subprocess
import sys
import tempfile
import shutil
import time

import benchlib as b
import bench_dataplane as d

WRITES = ("writev", "sendto", "write")
EVENTS = ",".join(f"syscalls:sys_{e}" for e in (
    "enter_recvfrom", "exit_recvfrom", "enter_epoll_wait", "exit_epoll_wait",
    *(f"{side}_{w}" for w in WRITES for side in ("enter", "exit"))))


def fd_of(args):
    """The file descriptor a syscall tracepoint's arguments name."""
    return int(args.split("fd:")[1].split(",")[0], 0)


def segments(script):
    """Medians of the four segments from `perf script` output."""
    order, fd = [], None
    for line in script.splitlines():
        m = re.search(r"\s(\d+\.\d+):\s+syscalls:sys_(\w+):\s*(.*)", line)
        if not m:
            continue
        ts, ev, args = float(m.group(1)) * 1e6, m.group(2), m.group(3)
        if ev == "enter_recvfrom":
            fd = fd_of(args)
        elif ev == "exit_recvfrom" and 0 < int(args.split()[-1], 0) < 1 << 40:
            order.append((ts, "read", fd))
        elif ev.startswith("enter_") and ev[6:] in WRITES:
            order.append((ts, "write", fd_of(args)))
        elif ev.startswith("exit_") and ev[5:] in WRITES:
            order.append((ts, "written", None))
        elif ev == "exit_epoll_wait":
            order.append((ts, "wake", None))
        elif ev == "enter_epoll_wait":
            order.append((ts, "sleep", None))
    out = {"wake to read": [], "request read to upstream write": [], "response read to downstream write": [],
           "downstream write to sleep": []}
    client = None
    for i, (ts, kind, f) in enumerate(order):
        nxt = order[i + 1:i + 8]
        if kind == "wake":
            r = next((x for x in nxt if x[1] == "read"), None)
            if r:
                out["wake to read"].append(r[0] - ts)
        elif kind == "read":
            w = next((x for x in nxt if x[1] == "write"), None)
            if w and w[2] != f:
                # The client's connection was accepted first: its fd is the lower one.
                client = min(f, w[2]) if client is None else client
                key = "request read to upstream write" if f == client else "response read to downstream write"
                out[key].append(w[0] - ts)
        elif kind == "written":
            s = next((x for x in nxt[:3] if x[1] in ("sleep", "read", "write")), None)
            if s and s[1] == "sleep":
                out["downstream write to sleep"].append(s[0] - ts)
    return {k: statistics.median(v) for k, v in out.items() if v}


def main():
    if len(sys.argv) > 1:
        b.BIN = sys.argv[1]
    work = tempfile.mkdtemp()
    mesh = b.Mesh(d.mesh_folder(work), {"MESHD_THREADS": "1", "MESHD_APP_THREADS": "1"})
    nginx = None
    try:
        backend = mesh.pod_addr("backend-")
        nginx, nginx_pids = b.start_nginx(work, backend, 1)
        nginx_worker = str(nginx_pids[0])
        worker = b.thread_ids(mesh.pid, "meshd-proxy")[0]
        data = os.path.join(work, "perf.data")
        for name, addr, tid in (("nginx", b.NGINX_ADDR, nginx_worker), ("meshd gateway", mesh.gateway, worker)):
            load = subprocess.Popen([b.cargo_tool("oha"), "-H", "Host: bench.one", "-z", "4s", "-q", "1000", "-c", "1", "--no-tui",
                                     f"http://{addr}{d.PATH}"], stdout=subprocess.DEVNULL)
            time.sleep(1)
            subprocess.run(["perf", "record", "-e", EVENTS, "-t", tid, "-o", data, "--", "sleep", "2"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            load.wait()
            script = subprocess.run(["perf", "script", "-i", data], capture_output=True, text=True).stdout
            print(name, {k: round(v, 1) for k, v in segments(script).items()})
    finally:
        if nginx:
            nginx.terminate()
        mesh.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
