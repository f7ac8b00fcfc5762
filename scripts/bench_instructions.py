#!/usr/bin/env python3
"""Instructions a request costs meshd's proxy thread and the backend's thread, counted by
valgrind's callgrind: the same figure for the same binary and requests whatever else the machine
does, so two builds compare without the noise of a shared machine (timing stays in the other
benchmarks). User-space instructions only: system calls are not counted. Beside each count, how
many of those instructions are locked ones (atomic read-modify-writes: reference counts, tokio's
task and readiness states, mutexes), which cost far more than their number says.

Usage: python3 scripts/bench_instructions.py [BINARY ...]   (default: the release build)
Environment: N requests (default 3000), HOST (bench.one: the gateway hop; echo:8080: the
sidecar pair through the proxy port, both sidecars on the one proxy thread; direct: straight to
the backend, for what a request costs it without a proxy's headers), KEEP (a folder to
keep callgrind's files in, for `callgrind_annotate --inclusive=yes FILE`), CLIENT (oha, the
default: oha's request, four header fields, on four connections at once; wrk: wrk's request
as `make bench` sends it for throughput, the Host field alone, one at a time on four
connections in turn), SIM (1: callgrind also simulates the caches and branch predictor of this
machine; the proxy thread's row then adds its first-level instruction and data cache misses and
its mispredicted branches a request, and a row for nginx proxying the same requests. The
backend then runs in a second meshd outside valgrind, reached through a ServiceEntry: valgrind
simulates one cache for all of a process's threads, and the backend's would pollute the
proxy's).
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
SIM = os.environ.get("SIM") == "1"
# The events callgrind's simulation adds, summed per request: (column, events).
MISSES = (("I1 misses", ("I1mr",)), ("D1 misses", ("D1mr", "D1mw")), ("mispredicted branches", ("Bcm", "Bim")))
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


def valgrind(work):
    """The valgrind command line, writing to `work`/cg.out, with a count for each instruction
    (for `locked`)."""
    sim = ["--cache-sim=yes", "--branch-sim=yes"] if SIM else []
    return ["valgrind", "--tool=callgrind", "--separate-threads=yes", *sim, "--dump-instr=yes",
            f"--callgrind-out-file={work}/cg.out"]


def locked_sites(binary):
    """The addresses of `binary`'s locked instructions: a `lock` prefix, or `xchg` with a memory
    operand, which locks without one. Each costs some 7 ns on this machine even uncontended,
    and waits for the stores before it; nginx's worker makes none."""
    dump = subprocess.run(["objdump", "-d", "--no-show-raw-insn", binary], capture_output=True, text=True,
                          check=True).stdout
    return {int(m.group(1), 16) for m in re.finditer(r"^\s*([0-9a-f]+):\s+(?:lock\s|xchg\s[^\n]*\()", dump, re.M)}


def locked(text, binary, sites):
    """How many of `sites` (addresses in `binary`) one callgrind file counts run, per request.
    Callgrind gives an executable's addresses as the file has them, so they compare as they are."""
    real = os.path.realpath(binary)
    objects, ob, mine, addr, after_call, total = {}, None, False, 0, False, 0
    for line in text.splitlines():
        head = line[:1]
        if head and (head.isdigit() or head in "+-*"):
            pos = line.split(None, 2)
            tok = pos[0]
            if tok != "*":
                addr = addr + int(tok[1:], 0) if head == "+" else addr - int(tok[1:], 0) if head == "-" else int(tok, 0)
            # The line after `calls=` is the call's inclusive cost, not the instruction's own.
            if after_call:
                after_call = False
            elif mine and addr in sites and len(pos) > 2:
                total += int(pos[2].split()[0])
        elif line.startswith("calls="):
            after_call = True
        elif line.startswith(("ob=", "fn=")):
            m = re.match(r"(ob|fn)=\((\d+)\)(?: (.*))?", line)
            if m and m.group(1) == "ob":
                if m.group(3):
                    objects[m.group(2)] = m.group(3)
                ob = objects.get(m.group(2))
            elif m:
                mine = ob is not None and os.path.realpath(ob) == real
        elif line.startswith("cob="):
            m = re.match(r"cob=\((\d+)\)(?: (.*))?", line)
            if m and m.group(2):
                objects[m.group(1)] = m.group(2)
    return total / N


# The gateway's route to a backend in another process (SIM): a ServiceEntry with its address.
EXTERNAL = """---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: backend}}
spec:
  hosts: [backend.bench]
  location: MESH_EXTERNAL
  ports: [{{number: {port}, name: http, protocol: HTTP}}]
  resolution: STATIC
  endpoints: [{{address: {ip}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: bench}}
spec:
  hosts: [bench.one]
  gateways: [bench]
  http: [{{route: [{{destination: {{host: backend.bench, port: {{number: {port}}}}}}}]}}]
"""


def per_request(path):
    """{event: count per request} from one callgrind file."""
    with open(path) as f:
        text = f.read()
    events = re.search(r"^events: (.*)$", text, re.M)
    totals = re.search(r"^(?:summary|totals): (.*)$", text, re.M)
    if not events or not totals:
        return text, {}
    return text, {e: int(v) / N for e, v in zip(events.group(1).split(), totals.group(1).split())}


def measure(pid, load):
    """Counts `N` requests sent by `load(n)` in the process under callgrind, after 300 that
    open connections and fill pools and caches."""
    load(300)
    subprocess.run(["callgrind_control", "-z", str(pid)], capture_output=True, check=True)
    load(N)
    subprocess.run(["callgrind_control", "-d", str(pid)], capture_output=True, check=True)
    time.sleep(1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def count_nginx(backend):
    """nginx (one worker, no master) proxying wrk's request to `backend`: the proxy thread's
    {event: per request}."""
    work = tempfile.mkdtemp(prefix="meshd-cg-")
    addr = f"127.0.0.1:{free_port()}"
    conf = os.path.join(work, "nginx.conf")
    with open(conf, "w") as f:
        f.write(b.NGINX.format(threads=1, work=work, backend=backend, addr=addr,
                               fields_addr=f"127.0.0.1:{free_port()}"))
    proc = subprocess.Popen([*valgrind(work), "nginx", "-c", conf, "-g", "daemon off; master_process off;"],
                            stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if proc.poll() is not None:
                sys.exit(f"nginx under valgrind exited: see {work}/nginx-error.log")
            try:
                socket.create_connection(addr.rsplit(":", 1)).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            sys.exit(f"nginx under valgrind did not listen on {addr} within 10 s")
        measure(proc.pid, lambda n: raw_load(addr, "bench.one", n))
        # The dump of the serving loop (the exit's own dump is cg.out-01).
        counts = [per_request(path) for path in glob.glob(os.path.join(work, "cg.out.*"))]
        text, events = max(counts, key=lambda c: c[1].get("Ir", 0), default=("", {}))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        return dict(events, locked=locked(text, nginx, locked_sites(nginx))) if events else {}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)


def count(binary, backend=None):
    """{thread kind: {event: per request}} for one binary; its gateway proxies to `backend`
    (another process) when given."""
    work = tempfile.mkdtemp(prefix="meshd-cg-")
    try:
        return count_in(work, binary, backend)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def count_in(work, binary, backend):
    if backend:
        cfg = os.path.join(work, "mesh")
        os.makedirs(cfg)
        ip, port = backend.rsplit(":", 1)
        with open(os.path.join(cfg, "bench.yaml"), "w") as f:
            f.write(b.BENCH_GATEWAY + EXTERNAL.format(ip=ip, port=port))
    else:
        cfg = d.mesh_folder(work, samples=())
    wrapper = os.path.join(work, "meshd")
    with open(wrapper, "w") as f:
        f.write("#!/bin/sh\nexec " + " ".join(valgrind(work)) + f" {binary} \"$@\"\n")
    os.chmod(wrapper, 0o755)
    binary_was, b.BIN = b.BIN, wrapper
    try:
        mesh = b.Mesh(cfg, {"MESHD_THREADS": "1", "MESHD_APP_THREADS": "1"})
    finally:
        b.BIN = binary_was
    try:
        host = None if HOST == "direct" else HOST
        addr = (backend or mesh.pod_addr("backend-")) if host is None else mesh.gateway if host == "bench.one" else mesh.proxy
        url = f"http://{addr}{d.PATH}"

        def load(n):
            if CLIENT == "wrk":
                return raw_load(addr, host or "backend", n)
            header = ["-H", f"Host: {host}"] if host else []
            subprocess.run([b.cargo_tool("oha"), "-n", str(n), "-c", "4", "--no-tui", *header, url],
                           capture_output=True, check=True)

        measure(mesh.pid, load)
    finally:
        mesh.stop()
    out = {}
    keep = os.environ.get("KEEP")
    if keep:
        os.makedirs(keep, exist_ok=True)
    sites = locked_sites(binary)
    threads = []
    for path in glob.glob(os.path.join(work, "cg.out.*")):
        if keep:
            shutil.copy(path, keep)
        text, events = per_request(path)
        if events:
            threads.append((text, events))
    # A thread is told by what it ran: the demo app's code, or else the most work under the
    # load, which is the one proxy worker's (the guided build inlines the proxy's loop, so its
    # name is no mark).
    apps = [t for t in threads if "demo_apps::" in t[0]]
    rest = [t for t in threads if "demo_apps::" not in t[0]]
    for kind, group in (("backend", apps), ("proxy", [max(rest, key=lambda t: t[1].get("Ir", 0))] if rest else [])):
        for text, events in group:
            into = out.setdefault(kind, {})
            for e, v in events.items():
                into[e] = into.get(e, 0) + v
            into["locked"] = into.get("locked", 0) + locked(text, binary, sites)
    return out


def misses(events):
    return " | ".join(f"{sum(events.get(e, 0) for e in names):,.0f}" for _, names in MISSES)


def simulated(bins):
    """The proxy thread's instructions and misses a request, for each binary and for nginx, each
    proxying wrk's request to a backend in a meshd of its own."""
    print(f"# The proxy thread a request (callgrind with cache and branch simulation, {N} requests "
          "spelled as wrk's, one at a time on 4 connections, to a backend in another process)\n")
    print("| proxy | instructions | " + " | ".join(name for name, _ in MISSES) + " | locked instructions |")
    print("|---|---|" + "---|" * len(MISSES) + "---|")
    work = tempfile.mkdtemp(prefix="meshd-cg-")
    backend_mesh = b.Mesh(d.mesh_folder(work, samples=()), {"MESHD_THREADS": "1", "MESHD_APP_THREADS": "1"})
    try:
        backend = backend_mesh.pod_addr("backend-")
        rows = [(binary, count(binary, backend).get("proxy", {})) for binary in bins]
        rows.append(("nginx", count_nginx(backend)))
    finally:
        backend_mesh.stop()
        shutil.rmtree(work, ignore_errors=True)
    for name, events in rows:
        print(f"| {name} | {events.get('Ir', 0):,.0f} | {misses(events)} | {events.get('locked', 0):,.1f} |")


def main():
    b.ensure_tools(debian=(("valgrind", "valgrind"), ("nginx", "nginx-light")) if SIM else (("valgrind", "valgrind"),))
    bins = sys.argv[1:] or [b.BIN]
    if SIM:
        if CLIENT != "wrk" or HOST != "bench.one":
            sys.exit("SIM=1 counts the gateway hop with wrk's request: CLIENT=wrk, HOST=bench.one")
        return simulated(bins)
    how = "4 connections at once" if CLIENT == "oha" else "one at a time on 4 connections"
    print(f"# Instructions per request (callgrind, {N} requests from {CLIENT}, {how}, Host {HOST})\n")
    print("| binary | proxy thread | its locked instructions | backend thread | its locked instructions |")
    print("|---|---|---|---|---|")
    for binary in bins:
        c = count(binary)
        p, a = c.get("proxy", {}), c.get("backend", {})
        print(f"| {binary} | {p.get('Ir', 0):,.0f} | {p.get('locked', 0):,.1f} | {a.get('Ir', 0):,.0f} | "
              f"{a.get('locked', 0):,.1f} |")


if __name__ == "__main__":
    main()
