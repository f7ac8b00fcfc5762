//! Test harness: runs the real `meshd` binary on a temporary folder with
//! every port on 0, and reads the addresses it prints.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Where Istio's sample YAML lives.
pub fn samples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/istio-samples")
}

/// The meshd binary (built by `make test` before the tests run).
pub fn meshd_bin() -> PathBuf {
    if let Ok(p) = std::env::var("MESHD_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let bin = target.join("debug/meshd");
    assert!(bin.exists(), "{} is missing: run `cargo build -p meshd` first (make test does)", bin.display());
    bin
}

/// A fresh, empty temporary folder removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "meshd-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    /// Copies a sample file (path under istio-samples) into the folder.
    pub fn add_sample(&self, rel: &str) {
        let src = samples().join(rel);
        let name = Path::new(rel).file_name().unwrap();
        std::fs::copy(&src, self.0.join(name)).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
    }

    /// Writes a file with the given text, atomically (as editors save).
    pub fn write(&self, name: &str, text: &str) {
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.0.join(name)).unwrap();
    }

    pub fn remove(&self, name: &str) {
        std::fs::remove_file(self.0.join(name)).unwrap();
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.0.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[derive(Default)]
struct Output {
    lines: Vec<String>,
    /// Streams (stdout, stderr) that reached their end: both means meshd exited.
    closed: usize,
}

/// A running meshd.
pub struct Mesh {
    child: Child,
    pub dir: TempDir,
    pub gateway: SocketAddr,
    pub gateway_tls: SocketAddr,
    pub admin: SocketAddr,
    pub proxy: SocketAddr,
    out: Arc<(Mutex<Output>, Condvar)>,
}

fn pump(stream: impl std::io::Read + Send + 'static, out: Arc<(Mutex<Output>, Condvar)>, tag: &'static str) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if std::env::var_os("MESHD_TEST_VERBOSE").is_some() {
                eprintln!("[meshd {tag}] {line}");
            }
            let (m, cv) = &*out;
            m.lock().unwrap().lines.push(line);
            cv.notify_all();
        }
        let (m, cv) = &*out;
        m.lock().unwrap().closed += 1;
        cv.notify_all();
    });
}

impl Mesh {
    /// Starts meshd on `dir` and waits until it is ready.
    pub fn start(dir: TempDir) -> Mesh {
        Mesh::start_with(dir, &[])
    }

    /// Starts meshd on `dir` with extra `meshd up` flags.
    pub fn start_with(dir: TempDir, extra: &[&str]) -> Mesh {
        let mut child = Command::new(meshd_bin())
            .arg("up")
            .arg(&dir.0)
            .args(extra)
            .args(["--gateway", "127.0.0.1:0", "--gateway-tls", "127.0.0.1:0"])
            .args(["--admin", "127.0.0.1:0", "--proxy", "127.0.0.1:0"])
            .env("MESHD_LOG", "meshd=info,warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn meshd");
        let out = Arc::new((Mutex::new(Output::default()), Condvar::new()));
        pump(child.stdout.take().unwrap(), out.clone(), "out");
        pump(child.stderr.take().unwrap(), out.clone(), "err");
        let mut mesh = Mesh {
            child,
            dir,
            gateway: "0.0.0.0:0".parse().unwrap(),
            gateway_tls: "0.0.0.0:0".parse().unwrap(),
            admin: "0.0.0.0:0".parse().unwrap(),
            proxy: "0.0.0.0:0".parse().unwrap(),
            out,
        };
        let ready = mesh.wait_for_line(|l| l.contains("meshd: ready:"), Duration::from_secs(30));
        let addr = |key: &str| -> SocketAddr {
            let rest = ready.split(&format!("{key} http://")).nth(1).expect(key);
            rest.split_whitespace().next().unwrap().parse().unwrap()
        };
        mesh.gateway = addr("gateway");
        mesh.gateway_tls = {
            let rest = ready.split("gateway-tls https://").nth(1).expect("gateway-tls");
            rest.split_whitespace().next().unwrap().parse().unwrap()
        };
        mesh.admin = addr("admin");
        mesh.proxy = addr("proxy");
        mesh
    }

    /// Stops meshd and hands back its folder, kept.
    pub fn stop(mut self) -> TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, TempDir(PathBuf::new()))
    }

    /// Every line meshd printed so far (stdout and stderr).
    pub fn output(&self) -> Vec<String> {
        self.out.0.lock().unwrap().lines.clone()
    }

    /// Number of lines printed so far; pass to `wait_for_line_after`.
    pub fn mark(&self) -> usize {
        self.out.0.lock().unwrap().lines.len()
    }

    pub fn wait_for_line(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> String {
        self.wait_for_line_after(0, pred, timeout)
    }

    /// Waits for a line printed after `mark` that satisfies `pred`.
    pub fn wait_for_line_after(&self, mark: usize, pred: impl Fn(&str) -> bool, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let (m, cv) = &*self.out;
        let mut g = m.lock().unwrap();
        loop {
            if let Some(l) = g.lines.iter().skip(mark).find(|l| pred(l)) {
                return l.clone();
            }
            let now = Instant::now();
            if g.closed == 2 {
                panic!("meshd exited; its output:\n{}", g.lines.join("\n"));
            }
            if now >= deadline {
                panic!("timed out waiting for a line; output so far:\n{}", g.lines.join("\n"));
            }
            g = cv.wait_timeout(g, deadline - now).unwrap().0;
        }
    }

    /// Waits for the next applied generation after `mark`.
    pub fn wait_applied(&self, mark: usize) -> String {
        self.wait_for_line_after(mark, |l| l.contains("applied in"), Duration::from_secs(20))
    }

    /// Waits for a rejected reload after `mark`.
    pub fn wait_rejected(&self, mark: usize) -> String {
        self.wait_for_line_after(mark, |l| l.contains("config rejected"), Duration::from_secs(20))
    }

    /// A client for the gateway (no proxy, no redirects).
    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder().no_proxy().redirect(reqwest::redirect::Policy::none()).build().unwrap()
    }

    /// A client inside the mesh: the mesh client's sidecar as HTTP proxy.
    pub fn mesh_client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .proxy(reqwest::Proxy::http(format!("http://{}", self.proxy)).unwrap())
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway)
    }

    /// GET a gateway path, returning the body.
    pub async fn page(&self, path: &str) -> String {
        let resp = self.client().get(self.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "GET {path}");
        resp.text().await.unwrap()
    }

    /// One counter of the mesh client's cluster toward httpbin, from the admin `/stats`.
    pub async fn httpbin_stat(&self, name: &str) -> u64 {
        self.cluster_stat("outbound|8000||httpbin.default.svc.cluster.local", name).await
    }

    /// One counter of one of the mesh client's clusters, from the admin `/stats`.
    pub async fn cluster_stat(&self, cluster: &str, name: &str) -> u64 {
        let stats =
            self.client().get(format!("http://{}/stats", self.admin)).send().await.unwrap().text().await.unwrap();
        let key = format!("cluster.{cluster}.{name}: ");
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&key))
            .unwrap_or_else(|| panic!("no {key} in {stats}"))
            .parse()
            .unwrap()
    }

    /// Runs a meshd CLI verb against this daemon.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(meshd_bin()).args(args).env("MESHD_ADMIN", self.admin.to_string()).output().unwrap()
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which reviews version served a product page: "v1" (no stars), "v2" (black) or "v3" (red).
pub fn reviews_version(page: &str) -> &'static str {
    let by_pod = ["reviews-v1-", "reviews-v2-", "reviews-v3-"].iter().position(|p| page.contains(p));
    let by_stars = if !page.contains("glyphicon glyphicon-star") {
        0
    } else if page.contains("gap-x-1 text-red-500") {
        2
    } else {
        1
    };
    if let Some(i) = by_pod {
        assert_eq!(i, by_stars, "pod name and stars disagree");
    }
    ["v1", "v2", "v3"][by_stars]
}

/// Logs in as `user` at the gateway and returns the session cookie.
pub async fn login(mesh: &Mesh, user: &str) -> String {
    let resp = mesh
        .client()
        .post(mesh.url("/login"))
        .form(&[("username", user), ("passwd", "password")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    let cookie = resp.headers().get("set-cookie").expect("set-cookie").to_str().unwrap();
    cookie.split(';').next().unwrap().to_string()
}

impl Mesh {
    /// The name of the first pod whose name starts with `prefix` (or the gateway's).
    pub fn pod(&self, prefix: &str) -> String {
        if prefix == "istio-ingressgateway" || prefix == "meshd-client" {
            return prefix.to_string();
        }
        let out = String::from_utf8(self.cli(&["status"]).stdout).unwrap();
        out.lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .find(|n| n.starts_with(prefix))
            .unwrap_or_else(|| panic!("no pod {prefix}* in\n{out}"))
            .to_string()
    }

    /// Waits until the access log of the pod named `prefix...` has a line containing every part of `want`.
    pub fn proxy_log_line(&self, prefix: &str, want: &[&str]) -> String {
        let pod = self.pod(prefix);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let log = String::from_utf8(self.cli(&["logs", &pod, "-c", "istio-proxy"]).stdout).unwrap();
            if let Some(l) = log.lines().find(|l| want.iter().all(|w| l.contains(w))) {
                return l.to_string();
            }
            if Instant::now() > deadline {
                panic!("no access-log line of {pod} with {want:?}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A sample file placed in namespace `ns`, as `kubectl apply -n ns -f` would place it.
pub fn in_namespace(rel: &str, ns: &str) -> String {
    let text = std::fs::read_to_string(samples().join(rel)).unwrap();
    text.lines()
        .map(|l| if l == "metadata:" { format!("metadata:\n  namespace: {ns}") } else { l.to_string() })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A test certificate authority: a self-signed CA of organisation `org` and leaves it signs.
pub struct Pki {
    pub ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    pub fn new(org: &str) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::OrganizationName, org);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = p.self_signed(&key).unwrap();
        Pki { ca_pem: cert.pem(), issuer: rcgen::Issuer::new(p, key) }
    }

    /// A leaf for `names`: (cert PEM, key PEM).
    pub fn leaf(&self, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let p = rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Sends `request` on a fresh connection to `addr` and reads what comes back until the server
/// closes or resets: a server that refuses a request before reading all of it resets the
/// connection as it closes.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(request).await;
    let (mut out, mut buf) = (Vec::new(), [0u8; 4096]);
    while let Ok(Ok(n @ 1..)) = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `(echo line; sleep) | nc gateway 31400`: the first line that comes back, or None if the
/// connection closes.
pub fn tcp_echo(addr: SocketAddr, line: &str) -> Option<String> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("{line}\n").as_bytes()).ok()?;
    let mut out = String::new();
    BufReader::new(s).read_line(&mut out).ok()?;
    (!out.is_empty()).then(|| out.trim_end().to_string())
}

impl Mesh {
    /// Where the gateway's TCP server for a Gateway's `port` listens.
    pub fn gateway_tcp(&self, port: u16) -> SocketAddr {
        let line =
            self.wait_for_line(|l| l.contains(&format!("gateway tcp {port} listening on")), Duration::from_secs(10));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }
}

/// What the ingress task's page shows for httpbin behind a gateway for `httpbin.example.com`
/// that routes `/status` and `/delay`: 200 from `istio-envoy`, 404 for another path or Host.
pub async fn ingress_task_answers(mesh: &Mesh) {
    let c = mesh.client();
    let resp = c.head(mesh.url("/status/200")).header("host", "httpbin.example.com").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["server"], "istio-envoy");
    let resp = c.get(mesh.url("/headers")).header("host", "httpbin.example.com").send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let resp = c.get(mesh.url("/status/200")).header("host", "other.example.com").send().await.unwrap();
    assert_eq!(resp.status(), 404, "a Host the gateway does not serve");
}

impl Mesh {
    /// `meshd logs POD`: the app's log.
    pub fn app_log(&self, pod: &str) -> String {
        String::from_utf8(self.cli(&["logs", pod]).stdout).unwrap()
    }
}
