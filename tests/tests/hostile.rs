//! Hostile and malformed traffic on every port meshd listens on: the gateways, the admin API,
//! the mesh client's port, and every sidecar's inbound and outbound listeners. Whatever comes
//! in, the daemon keeps serving and nothing in it panics.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Mesh, TempDir};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A fixed-seed generator, so a failure replays the same bytes.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = 1 + self.next() as usize % max;
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// What one listener is sent, each on a connection of its own: random bytes, random bytes
/// behind the start of a TLS ClientHello, behind HTTP/2's preface, and a request head with a
/// few of its bytes changed.
fn payloads(rng: &mut XorShift) -> Vec<Vec<u8>> {
    let head = b"GET /productpage HTTP/1.1\r\nhost: bookinfo\r\ncontent-length: 3\r\n\r\nabc";
    let mut out = Vec::new();
    for _ in 0..12 {
        out.push(rng.bytes(3000));
        out.push([&b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..], &rng.bytes(600)].concat());
        out.push([&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..], &rng.bytes(300)].concat());
        let mut mutated = head.to_vec();
        for _ in 0..4 {
            let at = rng.next() as usize % mutated.len();
            mutated[at] = rng.next() as u8;
        }
        out.push(mutated);
    }
    out
}

/// Sends `data` and reads a little of what comes back, giving up quickly: a listener may
/// answer, wait for more, or close.
async fn poke(addr: SocketAddr, data: &[u8]) {
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { return };
    let _ = s.write_all(data).await;
    let mut buf = [0u8; 256];
    let _ = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await;
}

/// Every address in a `meshd status` table (the pods' inbound and outbound listeners).
fn status_addrs(table: &str) -> Vec<SocketAddr> {
    table.split(|c: char| c.is_whitespace() || c == ',' || c == '>').filter_map(|word| word.parse().ok()).collect()
}

#[tokio::test]
async fn garbage_on_every_listener_leaves_the_mesh_serving() {
    let dir = TempDir::new();
    for rel in [
        "bookinfo/platform/kube/bookinfo.yaml",
        "bookinfo/networking/bookinfo-gateway.yaml",
        "httpbin/httpbin.yaml",
        "sleep/sleep.yaml",
        "tcp-echo/tcp-echo-services.yaml",
        "tcp-echo/tcp-echo-all-v1.yaml",
    ] {
        dir.add_sample(rel);
    }
    let mesh = Mesh::start(dir);
    let tcp_line = mesh.wait_for_line(|l| l.contains("gateway tcp 31400 listening on"), Duration::from_secs(10));
    let tcp_gateway: SocketAddr = tcp_line.rsplit(' ').next().unwrap().parse().unwrap();
    let status = mesh.cli(&["status"]);
    let mut targets = status_addrs(&String::from_utf8_lossy(&status.stdout));
    assert!(targets.len() >= 20, "every pod's listeners: {targets:?}");
    targets.extend([mesh.gateway, mesh.gateway_tls, mesh.admin, mesh.proxy, tcp_gateway]);

    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let sent = payloads(&mut rng);
    let pokes = targets.iter().map(|&addr| {
        let sent = sent.clone();
        tokio::spawn(async move {
            for data in &sent {
                poke(addr, data).await;
            }
        })
    });
    for p in pokes.collect::<Vec<_>>() {
        p.await.unwrap();
    }

    // Still serving: the page through the gateway and sidecars, a plain TCP echo.
    assert_eq!(mesh.client().get(mesh.url("/productpage")).send().await.unwrap().status(), 200);
    let mut echo = tokio::net::TcpStream::connect(tcp_gateway).await.unwrap();
    echo.write_all(b"hello\n").await.unwrap();
    let mut line = [0u8; 10];
    tokio::time::timeout(Duration::from_secs(5), echo.read_exact(&mut line)).await.unwrap().unwrap();
    assert_eq!(&line, b"one hello\n");
    let panics: Vec<String> = mesh.output().into_iter().filter(|l| l.contains("panicked")).collect();
    assert!(panics.is_empty(), "{panics:?}");
}
