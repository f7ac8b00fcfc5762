#!/usr/bin/env python3
"""Instructions a request costs meshd's proxy thread and the backend's thread, counted by
valgrind's callgrind: the same figure for the same binary and requests whatever else the machine
does, so two builds compare without the noise of a shared machine (timing stays in the other
benchmarks). User-space instructions only: system calls are not counted.

Usage: python3 scripts/bench_instructions.py [BINARY ...]   (default: the release build)
Environment: N requests (default 3000), HOST (bench.one: the gateway hop; echo:8080: the
sidecar pair through the proxy port, both sidecars on the one proxy thread; direct: straight to
the backend, for what a request costs it without a proxy's headers), KEEP (a folder to
keep callgrind's files in, for `callgrind_annotate --inclusive=yes FILE`), CLIENT (oha, the
default: oha's request, four header fields, on four connections at once; wrk: wrk's request
as `make bench` sends it for throughput, the Host field alone, one at a time on four
connections in turn).
"""
import glob
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import benchlib as b
import bench_dataplane as d

N = int(os.environ.get("N", "3000"))
HOST = os.environ.get("HOST", "bench.one")
CLIENT = os.environ.get("CLIENT", "oha")
if CLIENT not in ("oha", "wrk"):
    sys.exit(f"CLIENT is oha or wrk, not {CLIENT}")


def raw_load(addr, host, n, conns=4):
    """n requests spelled as wrk spells them (the request line and Host), one at a time over
    `conns` keep-alive connections in turn; every answer must be a 200 with a length."""
    request = f"GET {d.PATH} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    ip, port = addr.rsplit(":", 1)
    socks = [socket.create_connection((ip, int(port))) for _ in range(conns)]
    try:
        files = [s.makefile("rb") for s in socks]
        for i in range(n):
            s, f = socks[i % conns], files[i % conns]
            s.sendall(request)
            status = f.readline()
            if not status.startswith(b"HTTP/1.1 200 "):
                sys.exit(f"request {i}: {status!r}")
            length = None
            while (line := f.readline()) != b"\r\n":
                if not line:
                    sys.exit(f"request {i}: the connection closed mid-head")
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length is None or len(f.read(length)) != length:
                sys.exit(f"request {i}: no length, or a short body")
        for f in files:
            f.close()
    finally:
        for s in socks:
            s.close()


def count(binary):
    """{thread kind: instructions per request} for one binary."""
    work = tempfile.mkdtemp(prefix="meshd-cg-")
    cfg = d.mesh_folder(work, samples=())
    wrapper = os.path.join(work, "meshd")
    with open(wrapper, "w") as f:
        f.write(f"#!/bin/sh\nexec valgrind --tool=callgrind --separate-threads=yes "
                f"--callgrind-out-file={work}/cg.out {binary} \"$@\"\n")
    os.chmod(wrapper, 0o755)
    b.BIN = wrapper
    mesh = b.Mesh(cfg, {"MESHD_THREADS": "1", "MESHD_APP_THREADS": "1"})
    try:
        host = None if HOST == "direct" else HOST
        addr = mesh.pod_addr("backend-") if host is None else mesh.gateway if host == "bench.one" else mesh.proxy
        url = f"http://{addr}{d.PATH}"

        def load(n):
            if CLIENT == "wrk":
                return raw_load(addr, host or "backend", n)
            header = ["-H", f"Host: {host}"] if host else []
            subprocess.run([b.oha_bin(), "-n", str(n), "-c", "4", "--no-tui", *header, url],
                           capture_output=True, check=True)

        load(300)  # connections, pools, caches
        subprocess.run(["callgrind_control", "-z", str(mesh.pid)], capture_output=True, check=True)
        load(N)
        subprocess.run(["callgrind_control", "-d", str(mesh.pid)], capture_output=True, check=True)
        time.sleep(1)
    finally:
        mesh.stop()
    out = {}
    keep = os.environ.get("KEEP")
    if keep:
        os.makedirs(keep, exist_ok=True)
    for path in glob.glob(os.path.join(work, "cg.out.*")):
        if keep:
            shutil.copy(path, keep)
        with open(path) as f:
            text = f.read()
        m = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
        if not m:
            continue
        # A thread is told by what it ran: the proxy's HTTP/1.1 loop, or the demo app.
        kind = "proxy" if "downstream::serve" in text else "backend" if "demo_apps::" in text else None
        if kind:
            out[kind] = out.get(kind, 0) + int(m.group(1)) / N
    shutil.rmtree(work, ignore_errors=True)
    return out


def main():
    b.ensure_tools(debian=(("valgrind", "valgrind"),))
    bins = sys.argv[1:] or [b.BIN]
    how = "4 connections at once" if CLIENT == "oha" else "one at a time on 4 connections"
    print(f"# Instructions per request (callgrind, {N} requests from {CLIENT}, {how}, Host {HOST})\n")
    print("| binary | proxy thread | backend thread |")
    print("|---|---|---|")
    for binary in bins:
        c = count(binary)
        print(f"| {binary} | {c.get('proxy', 0):,.0f} | {c.get('backend', 0):,.0f} |")


if __name__ == "__main__":
    main()
