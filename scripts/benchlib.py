"""Shared pieces of the benchmarks: starting meshd and nginx, load generators (wrk for
closed-loop throughput, oha for open-loop latency), per-thread CPU, RSS and the admin API.
Loopback only."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("MESHD_BIN", os.path.join(ROOT, "target", "release", "meshd"))
SAMPLES = os.path.join(ROOT, "..", "shared", "istio-samples")
HZ = os.sysconf("SC_CLK_TCK")
CARGO_BIN = os.path.join(os.path.expanduser("~"), ".cargo", "bin")


def _app(name, container, image, args, container_port, service_port, replicas, sidecar):
    """A Deployment of one demo-app container and its Service."""
    inject = "\n      annotations: {sidecar.istio.io/inject: \"false\"}" if not sidecar else ""
    args = f"\n        args: [{', '.join(args)}]" if args else ""
    return f"""apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}{inject}
    spec:
      containers:
      - name: {container}
        image: {image}{args}
        ports: [{{containerPort: {container_port}}}]
---
apiVersion: v1
kind: Service
metadata:
  name: {name}
spec:
  ports: [{{name: http, port: {service_port}, targetPort: {container_port}}}]
  selector: {{app: {name}}}
"""


def httpbin_app(name, replicas=1, sidecar=True):
    """A Deployment of meshd's httpbin demo app and its Service on port 8000."""
    return _app(name, "httpbin", "docker.io/mccutchen/go-httpbin:v2.15.0", [], 8080, 8000, replicas, sidecar)


def fortio_app(name, sidecar=True):
    """A Deployment of meshd's fortio server demo app and its Service on port 8080. Its echo
    answers `?size=N` with N fixed bytes, whatever the request's headers: the backend Istio's
    own data-plane benchmarks use, so a proxy that adds headers does not make the backend work more."""
    return _app(name, "fortio", "fortio/fortio:latest_release", ["server"], 8080, 8080, 1, sidecar)


# The gateway serves host bench.one; the benchmarks add the VirtualService.
BENCH_GATEWAY = """apiVersion: networking.istio.io/v1
kind: Gateway
metadata:
  name: bench
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["bench.one"]
"""


def bench_route(port, response_set=None):
    """The VirtualService that sends bench.one to the backend on `port`, optionally setting
    response headers (`{name: value}`)."""
    vs = f"""apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: bench
spec:
  hosts: ["bench.one"]
  gateways: [bench]
  http:
  - route: [{{destination: {{host: backend, port: {{number: {port}}}}}}}]
"""
    if response_set:
        sets = ", ".join(f'{k}: "{v}"' for k, v in response_set.items())
        vs += f"    headers:\n      response:\n        set: {{{sets}}}\n"
    return vs


# nginx as a one-hop keepalive reverse proxy to `backend`, on NGINX_ADDR.
NGINX_ADDR = "127.0.0.1:18081"
# The same nginx adding the fields meshd's gateway adds to wrk's request (the names, and values
# of the same lengths), so the backend parses the same head behind both: what those fields cost
# the backend is then in both rows, and the difference left is the proxies' own.
NGINX_FIELDS_ADDR = "127.0.0.1:18082"
NGINX = """worker_processes {threads};
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  upstream backend {{ server {backend}; keepalive 64; }}
  server {{
    listen {addr};
    location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }}
  }}
  server {{
    listen {fields_addr};
    location / {{
      proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header x-request-id $request_id-000;
      proxy_set_header x-envoy-attempt-count 1;
      proxy_set_header x-forwarded-proto $scheme;
      proxy_set_header x-b3-traceid $request_id;
      proxy_set_header x-b3-spanid 00f067aa0ba902b7;
      proxy_set_header traceparent 00-$request_id-00f067aa0ba902b7-01;
      proxy_set_header x-b3-sampled 1;
      proxy_set_header x-envoy-peer-metadata-id sidecar~127.0.0.1~istio-ingressgateway-5b7c9d8f6d-x2k4p.istio-system~istio-system.svc.cluster.local;
      proxy_set_header x-forwarded-for $proxy_add_x_forwarded_for;
      proxy_set_header x-envoy-internal true;
    }}
  }}
}}
"""


def start_nginx(work, backend, threads):
    """Starts nginx (config in `work`); returns the process and its workers' pids."""
    conf = os.path.join(work, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX.format(threads=threads, work=work, backend=backend, addr=NGINX_ADDR,
                             fields_addr=NGINX_FIELDS_ADDR))
    proc = subprocess.Popen(["nginx", "-c", conf, "-g", "daemon off;"], stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    out = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout
    return proc, [int(p) for p in out.split()]


# The load generator and the reference proxy, as (command, Debian package) pairs.
LOAD_TOOLS = (("wrk", "wrk"), ("nginx", "nginx-light"))


def ensure_tools(oha=True, debian=LOAD_TOOLS, inferno=False):
    """Debian's packages (by default wrk and nginx: (command, package) pairs), oha
    (open-loop, latency-corrected) and, when asked, inferno (flamegraphs) from crates.io."""
    for refresh in (False, True):
        missing = [pkg for cmd, pkg in debian if not shutil.which(cmd)]
        if not missing:
            break
        if refresh:  # a fresh machine may have no package lists yet
            subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=False, capture_output=True,
                       env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    for crate, command, wanted in (("oha", "oha", oha), ("inferno", "inferno-flamegraph", inferno)):
        if wanted and not shutil.which(command) and not os.path.exists(os.path.join(CARGO_BIN, command)):
            print(f"installing {crate} (cargo install {crate} --locked), once", file=sys.stderr)
            subprocess.run(["cargo", "install", crate, "--locked"], check=False, capture_output=True)
    if not os.path.exists(BIN):
        sys.exit(f"{BIN} missing: cargo build --release -p meshd")


def git(*args):
    """What git printed in the project's checkout, stripped; "" when it failed."""
    out = subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT)
    return out.stdout.strip() if out.returncode == 0 else ""


# What a profile of the release build depends on: the crates' code and the dependencies' versions.
RUST_CODE = ("Cargo.lock", "meshd", "demo-apps")


def profile_note():
    """Which profile guided `make release`, and how many commits have changed the Rust code
    since it was taken (each changed function builds as without one: `make pgo` refreshes it)."""
    words = (read_text(os.path.join(ROOT, "pgo", "trained-on")) or "").split()
    if not words:
        return "release build: no pgo/trained-on, so no record of the profile"
    rev = words[0]
    since = git("rev-list", "--count", f"{rev}..HEAD", "--", *RUST_CODE) or "an unknown number of"
    return f"release build guided by pgo/meshd.profdata, trained on {rev}; {since} commit(s) changed the Rust code since"


def machine_note():
    """The processor and the kernel's idle handling, which differ between the machines a run
    may land on: a vCPU that halts when idle makes every wake-up of it cost a round trip
    through the hypervisor, and wake-ups are most of a request's latency at 1000 rps."""
    lines = (read_text("/proc/cpuinfo") or "").splitlines()
    model = next((l.split(":", 1)[1].strip() for l in lines if l.startswith("model name")), "unknown processor")
    idle = read_text("/sys/devices/system/cpu/cpuidle/current_driver") or "no cpuidle driver"
    poll = read_text("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
    if poll is not None:
        idle += f", guest_halt_poll_ns {poll}"
    return f"machine: {os.cpu_count()} x {model}, kernel {os.uname().release}, idle: {idle}"


def read_text(path):
    """A small file's text, stripped, or None when it cannot be read."""
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def cargo_tool(command):
    """A command `cargo install` put in place, found on PATH or in cargo's own folder."""
    return shutil.which(command) or os.path.join(CARGO_BIN, command)


class Mesh:
    """`meshd up DIR` on ephemeral ports; reads the addresses from the ready line."""

    def __init__(self, folder, env=None):
        self.proc = subprocess.Popen(
            [BIN, "up", folder, "--gateway", "127.0.0.1:0", "--gateway-tls", "127.0.0.1:0",
             "--admin", "127.0.0.1:0", "--proxy", "127.0.0.1:0"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=dict(os.environ, **(env or {})))
        ready = next((line for line in self.proc.stdout if "meshd: ready:" in line), None)
        if ready is None:
            sys.exit("meshd exited before it was ready")
        self.gateway = re.search(r"gateway http://(\S+)", ready).group(1)
        self.admin = re.search(r"admin http://(\S+)", ready).group(1)
        self.proxy = re.search(r"proxy http://(\S+)", ready).group(1)
        self.pid = self.proc.pid

    def api(self, path):
        with urllib.request.urlopen(f"http://{self.admin}{path}") as r:
            body = r.read()
        return json.loads(body) if path.startswith("/meshd/") else body.decode()

    def pod_addr(self, prefix, index=0):
        """The app address of a pod (for a pod without a sidecar, what direct clients reach)."""
        pods = self.api("/meshd/pods")
        pod = next(p for p in pods if p["name"].startswith(prefix))
        return pod["apps"][index].split("->")[1]

    def stats(self):
        """Envoy's cluster counters summed over every proxy and cluster: {counter: value}."""
        total = {}
        for line in self.api("/stats/prometheus").splitlines():
            m = re.match(r"envoy_cluster_(\w+)\{.*\} (\d+)$", line)
            if m:
                total[m.group(1)] = total.get(m.group(1), 0) + int(m.group(2))
        return total

    def stop(self, sig=signal.SIGTERM, timeout=10):
        """Sends `sig` and waits; kills meshd if it has not exited within `timeout` seconds.
        Whether it exited by itself."""
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout)
            return True
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return False


def thread_ids(pid, name_prefix=None):
    """A process's threads whose name starts with `name_prefix` (`!prefix`: whose name does not)."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    out = []
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if name_prefix and name_prefix.startswith("!"):
            if comm.startswith(name_prefix[1:]):
                continue
        elif name_prefix and not comm.startswith(name_prefix):
            continue
        out.append(tid)
    return out


def thread_user_sys(pid, name_prefix=None):
    """User and system clock ticks, apart, of a process's threads that `thread_ids` selects."""
    user = system = 0
    for tid in thread_ids(pid, name_prefix):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user, system = user + int(fields[11]), system + int(fields[12])
        except OSError:
            pass
    return user, system


def user_sys(threads):
    """User and system clock ticks, each summed, of [(pid, thread-name prefix or None)]."""
    pairs = [thread_user_sys(pid, prefix) for pid, prefix in threads]
    return sum(u for u, _ in pairs), sum(s for _, s in pairs)


class CpuMeter:
    """CPU seconds per second of named thread groups over an interval: {label: cores}."""

    def __init__(self, groups):
        self.groups = groups  # label -> [(pid, thread-name prefix or None)]
        self.before = self.read()
        self.t0 = time.time()

    def read(self):
        return {k: sum(user_sys(v)) for k, v in self.groups.items()}

    def cores(self):
        secs = time.time() - self.t0
        after = self.read()
        return {k: (after[k] - self.before[k]) / HZ / secs for k in self.groups}


class Steal:
    """How much of the time this machine's vCPUs wanted to run the hypervisor gave to other
    guests over an interval (/proc/stat's steal against the busy and stolen time): near 0 on a
    quiet host. A run measured while the host was busy is not comparable with one that was not,
    though every ratio within it stays fair."""

    def __init__(self):
        self.before = self.read()

    @staticmethod
    def read():
        try:
            with open("/proc/stat") as f:
                t = [int(v) for v in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        if len(t) < 8:
            return None
        # user nice system idle iowait irq softirq steal (guest time is inside user).
        return t[7], t[0] + t[1] + t[2] + t[5] + t[6] + t[7]

    def note(self, what):
        after = self.read()
        if self.before is None or after is None or after[1] == self.before[1]:
            return f"steal during {what}: not known"
        share = (after[0] - self.before[0]) / (after[1] - self.before[1]) * 100
        return f"steal during {what}: {share:.1f} % of the vCPUs' running time went to other guests of the host"


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def wrk(url, host=None, duration=5, connections=16, threads=1):
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", url]
    if host:
        cmd[1:1] = ["-H", f"Host: {host}"]
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return (float(m.group(1)) if m else 0.0), (int(errors.group(1)) if errors else 0)


def oha(url, host=None, qps=1000, duration=5, connections=8):
    """Open-loop load at `qps` with latency correction (latency counted from when each request
    was due, so a stall is charged to every request it delays). Returns percentiles in ms,
    the achieved rate and the status-code counts."""
    cmd = [cargo_tool("oha"), "-z", f"{duration}s", "-q", str(qps), "-c", str(connections), "--latency-correction",
           "--no-tui", "--output-format", "json", url]
    if host:
        cmd[1:1] = ["-H", f"Host: {host}"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    try:
        data = json.loads(out.stdout)
    except json.JSONDecodeError:
        sys.exit(f"oha failed: {out.stderr[-500:]}")
    pct = data.get("latencyPercentiles", {})
    ms = {p: (pct.get(f"p{p}") or float("nan")) * 1000 for p in ("50", "90", "99")}
    codes = data.get("statusCodeDistribution", {})
    # Requests still in flight when oha's own deadline ends the run are not failures.
    errors = sum(n for e, n in data.get("errorDistribution", {}).items() if e != "aborted due to deadline")
    return ms, data["summary"].get("requestsPerSec", 0.0), codes, errors
