#!/usr/bin/env python3
"""Refreshes pgo/meshd.profdata, the profile that guides the release build (`make pgo`).

1. Builds meshd instrumented (target/pgo-gen, about 7.5 minutes on two cores).
2. Runs it on the traffic a user's mesh sees: Bookinfo's /productpage through the gateway (four
   apps, their sidecars, mTLS between them), a plaintext gateway hop to a fortio server, a
   sidecar pair with mTLS over HTTP/1.1 and over HTTP/2, and httpbin behind its sidecar through
   the mesh client, one of its routes answering 503: each path DURATION seconds (default 3)
   under wrk. Then, a second each on two connections, the task samples' policies: weighted
   routes, fault injection, local rate limits, circuit breaking, mirroring and a Gateway of
   the user's own. Code no training run reaches is what the compiler takes for cold and builds
   for size. After each mesh an interrupt lets meshd exit, and its counters reach the profile
   folder, added to the previous meshes'.
3. Merges them with LLVM's llvm-profdata (Debian's llvm-19: rustc's LLVM 22 writes raw profiles
   of format 10, which LLVM 19 reads, and LLVM 22 reads the indexed profile LLVM 19 writes).

pgo/trained-on records the commit the profile was taken from. Code changed since then keeps
the profile of every function whose control flow is unchanged; the rest builds as without one.
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile

import benchlib as b
import bench_dataplane as d

DUR = int(os.environ.get("DURATION", "3"))
GEN = os.path.join(b.ROOT, "target", "pgo-gen")
RAW = os.path.join(GEN, "raw")
PROFILE = os.path.join(b.ROOT, "pgo", "meshd.profdata")
PROFDATA = "llvm-profdata-19"


def build():
    flags = f"{os.environ.get('RUSTFLAGS', '')} -Cprofile-generate={RAW}".strip()
    print("building meshd instrumented (target/pgo-gen)", file=sys.stderr)
    subprocess.run(["cargo", "build", "--release", "-p", "meshd", "--target-dir", GEN], check=True, cwd=b.ROOT,
                   env=dict(os.environ, RUSTFLAGS=flags))
    # The build scripts ran instrumented too: their profiles are not meshd's.
    shutil.rmtree(RAW, ignore_errors=True)
    return os.path.join(GEN, "release", "meshd")


# The task samples whose traffic a plain request drives: (folder, [(via, Host, path)]).
SAMPLE_TRAFFIC = [
    ("canary", [("gateway", None, "/productpage")]),
    ("fault-injection-abort", [("gateway", None, "/productpage")]),
    ("rate-limiting", [("gateway", None, "/productpage")]),
    ("circuit-breaking", [("proxy", "httpbin:8000", "/get")]),
    ("mirroring", [("proxy", "httpbin:8000", "/headers")]),
    ("ingress-control", [("gateway", "httpbin.example.com", "/status/200")]),
]


def train(folder, paths, duration, connections):
    """Runs the instrumented meshd on `folder` under wrk on each (via, Host, path), via being
    the mesh's "gateway" or its "proxy" (the mesh client's sidecar)."""
    mesh = b.Mesh(folder, {"MESHD_THREADS": "1", "MESHD_APP_THREADS": "1"})
    try:
        for via, host, path in paths:
            addr = mesh.gateway if via == "gateway" else mesh.proxy
            rps, non2xx = b.wrk(f"http://{addr}{path}", host, duration, connections=connections)
            print(f"trained on {os.path.basename(folder)}: {host or via}{path}: {rps:,.0f} rps, {non2xx:,} not 2xx",
                  file=sys.stderr)
    finally:
        # An interrupt lets main return, and the profile runtime writes its counters at exit.
        if not mesh.stop(signal.SIGINT, timeout=30):
            sys.exit("the instrumented meshd did not exit on an interrupt: no profile written")


def main():
    b.BIN = build()
    b.ensure_tools(oha=False, debian=(("wrk", "wrk"), (PROFDATA, "llvm-19")))
    work = tempfile.mkdtemp(prefix="meshd-pgo-")
    try:
        train(d.mesh_folder(work), [
            ("gateway", None, "/productpage"),
            ("gateway", "bench.one", d.PATH),
            ("proxy", "echo:8080", d.PATH),
            ("proxy", "echo-h2:8080", d.PATH),
            ("proxy", "httpbin:8000", "/headers"),
            ("proxy", "httpbin:8000", "/status/503"),
        ], DUR, 16)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for name, paths in SAMPLE_TRAFFIC:
        # Fewer connections: a policy's local replies (429, 503) come fast, and should not
        # outweigh the requests that are served.
        train(os.path.join(b.ROOT, "samples", name), paths, 1, 2)
    raws = [os.path.join(RAW, f) for f in os.listdir(RAW)] if os.path.isdir(RAW) else []
    if not raws:
        sys.exit(f"no raw profile in {RAW}")
    subprocess.run([PROFDATA, "merge", "-o", PROFILE, *raws], check=True)
    # What the profile depends on is the Rust code; an edited script or document does not count.
    edited = b.git("status", "--porcelain", "--", *b.RUST_CODE)
    rev = b.git("rev-parse", "--short", "HEAD") + (" with uncommitted changes to the Rust code" if edited else "") + "\n"
    with open(os.path.join(b.ROOT, "pgo", "trained-on"), "w") as f:
        f.write(rev)
    print(f"wrote {os.path.relpath(PROFILE, b.ROOT)} ({os.path.getsize(PROFILE):,} bytes), trained on {rev.strip()}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
