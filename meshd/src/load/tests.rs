//! Tests against a tiny raw-TCP HTTP server standing in for the sidecar.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::gofmt::{fmt_duration, fmt_g, parse_duration};
use super::stats::Histogram;
use super::*;

#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    load: LoadArgs,
}

fn parse(args: &[&str]) -> LoadArgs {
    let v = normalize_args(args.iter().map(|s| s.to_string()).collect());
    match Cli::try_parse_from(std::iter::once("load".to_string()).chain(v)) {
        Ok(c) => c.load,
        Err(e) => panic!("parse {args:?}: {e}"),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// 200 with keep-alive.
    Ok,
    /// Every other request: 503 + `connection: close`, then close.
    Alternate,
    /// Every other request: 503 on a connection kept open, as Envoy's circuit breaker answers.
    Overflow,
    /// Read the request, never answer.
    Silent,
}

struct TestServer {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    count: Arc<AtomicU64>,
}

impl TestServer {
    fn heads(&self) -> Vec<String> {
        self.heads.lock().map(|h| h.clone()).unwrap_or_default()
    }
}

/// Reads one request (head + content-length body); None at EOF.
async fn read_request(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..pos]).to_string();
            let len: usize = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or(0);
            while buf.len() < pos + 4 + len {
                let mut tmp = [0u8; 4096];
                let n = sock.read(&mut tmp).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            let body = String::from_utf8_lossy(&buf[pos + 4..pos + 4 + len]).to_string();
            buf.drain(..pos + 4 + len);
            return Some(format!("{head}\r\n\r\n{body}"));
        }
        let mut tmp = [0u8; 4096];
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
}

async fn server(mode: Mode) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let heads = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicU64::new(0));
    let (h, c) = (heads.clone(), count.clone());
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (h, c) = (h.clone(), c.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(req) = read_request(&mut sock, &mut buf).await {
                    if let Ok(mut v) = h.lock() {
                        v.push(req);
                    }
                    let n = c.fetch_add(1, Ordering::SeqCst);
                    let fail = mode == Mode::Alternate && n % 2 == 1;
                    let overflow = mode == Mode::Overflow && n % 2 == 1;
                    let resp: &[u8] = match mode {
                        Mode::Silent => {
                            tokio::time::sleep(Duration::from_secs(5)).await;
                            return;
                        }
                        _ if fail => {
                            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 3\r\nconnection: close\r\n\r\nbad"
                        }
                        _ if overflow => b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 81\r\nx-envoy-overloaded: true\r\n\r\nupstream connect error or disconnect/reset before headers. reset reason: overflow",
                        _ => b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok",
                    };
                    if sock.write_all(resp).await.is_err() || fail {
                        return;
                    }
                }
            });
        }
    });
    TestServer { addr, heads, count }
}

/// Runs `meshd load` with the given fortio-style args; returns (result, out, err).
async fn load(args: &[&str], proxy: SocketAddr) -> (LoadResult, String, String) {
    let args = parse(args);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let res = run(&args, proxy, &mut out, &mut err).await;
    let err_s = String::from_utf8_lossy(&err).to_string();
    match res {
        Ok(r) => (r, String::from_utf8_lossy(&out).to_string(), err_s),
        Err(e) => panic!("run failed: {e}\n{err_s}"),
    }
}

#[tokio::test]
async fn exact_number_of_calls() {
    let srv = server(Mode::Ok).await;
    let (res, _, err) = load(&["-n", "20", "-c", "2", "-qps", "0", "http://httpbin:8000/get"], srv.addr).await;
    assert_eq!(srv.count.load(Ordering::SeqCst), 20, "{err}");
    assert_eq!(res.calls, 20);
    assert_eq!(res.sockets, 2);
    assert!(err.contains("Code 200 : 20 (100.0 %)"), "{err}");
    assert!(err.contains("Starting at max qps with 2 thread(s) [gomax "), "{err}");
    assert!(err.contains("for exactly 20 calls (10 per thread + 0)"), "{err}");
    assert!(err.contains("Sockets used: 2 (for perfect keepalive, would be 2)"), "{err}");
    assert!(err.contains("All done 20 calls (plus 0 warmup) "), "{err}");
    assert!(err.contains("# target 50% "), "{err}");
    assert!(err.contains("Error cases : no data"), "{err}");
    assert!(err.starts_with("Fortio 1.75.2 running at 0 queries per second, "), "{err}");
}

#[tokio::test]
async fn connection_close_503_reopens_sockets() {
    let srv = server(Mode::Alternate).await;
    let (res, _, err) =
        load(&["-c", "2", "-qps", "0", "-n", "20", "-loglevel", "Warning", "http://httpbin:8000/get"], srv.addr).await;
    assert_eq!(res.calls, 20);
    assert!(err.contains("Code 200 : "), "{err}");
    assert!(err.contains("Code 503 : "), "{err}");
    assert!(res.sockets > 2, "sockets {} {err}", res.sockets);
    assert_eq!(res.codes.values().sum::<u64>(), 20);
    assert!(err.contains("Non ok http code 503 (HTTP/1.1 503)"), "{err}");
    assert!(err.contains("Log level is now 3 Warning (was 2 Info)"), "{err}");
    assert!(err.contains("Error cases : count "), "{err}");
}

#[tokio::test]
async fn a_socket_that_answered_503_is_closed_and_its_headers_not_counted_as_fortio_does() {
    // The server keeps the connection open after its 503s, as Envoy's circuit breaker does.
    let srv = server(Mode::Overflow).await;
    let (res, _, err) = load(&["-c", "1", "-qps", "0", "-n", "10", "http://httpbin:8000/get"], srv.addr).await;
    assert_eq!(res.codes.get(&503), Some(&5), "{err}");
    // One socket to start, and a new one for each call after a 503 (the last 503 ends the run).
    assert_eq!(res.sockets, 5, "{err}");
    assert!(err.contains("Sockets used: 5 (for perfect keepalive, would be 1)"), "{err}");
    // fortio reads no header bytes for a code that is not OK.
    assert!(err.contains("Response Header Sizes : count 10 avg "), "{err}");
    assert!(err.lines().any(|l| l.starts_with("Response Header Sizes") && l.contains(" min 0 ")), "{err}");
}

#[tokio::test]
async fn paced_run_takes_time() {
    let srv = server(Mode::Ok).await;
    let t0 = Instant::now();
    let (res, _, err) = load(&["-qps", "20", "-n", "10", "-c", "1", "http://httpbin:8000/get"], srv.addr).await;
    assert!(t0.elapsed() >= Duration::from_millis(400), "{:?}", t0.elapsed());
    assert_eq!(res.calls, 10);
    assert!(err.contains("Starting at 20 qps with 1 thread(s)"), "{err}");
    assert!(err.contains("Sleep times : count "), "{err}");
}

#[tokio::test]
async fn duration_mode_stops_by_itself() {
    let srv = server(Mode::Ok).await;
    let t0 = Instant::now();
    let (res, _, err) = load(&["-t", "300ms", "-qps", "0", "-c", "2", "http://httpbin:8000/get"], srv.addr).await;
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(2), "{took:?}");
    assert!(res.calls > 0);
    // Two warmup calls (one per connection) are not counted.
    assert_eq!(srv.count.load(Ordering::SeqCst), res.calls + 2);
    assert!(err.contains("for 300ms: http://httpbin:8000/get"), "{err}");
    assert!(err.contains("Starting at max qps with 2 thread(s) [gomax "), "{err}");
    assert!(err.contains("(plus 2 warmup)"), "{err}");
}

#[tokio::test]
async fn closed_port_gives_code_minus_one() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let (res, _, err) = load(&["-n", "3", "-c", "1", "-qps", "0", "http://httpbin:8000/get"], addr).await;
    assert_eq!(res.codes.get(&-1), Some(&3), "{err}");
    assert_eq!(res.sockets, 0);
    assert!(err.contains("Code  -1 : 3 (100.0 %)"), "{err}");
    assert!(err.contains("Unable to connect to "), "{err}");
}

#[tokio::test]
async fn timeout_gives_code_minus_one() {
    let srv = server(Mode::Silent).await;
    let t0 = Instant::now();
    let (res, _, err) =
        load(&["-n", "1", "-c", "1", "-qps", "0", "-timeout", "200ms", "http://httpbin:8000/get"], srv.addr).await;
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert_eq!(res.codes.get(&-1), Some(&1), "{err}");
}

#[tokio::test]
async fn headers_and_absolute_form_reach_server() {
    let srv = server(Mode::Ok).await;
    let args =
        ["-n", "2", "-c", "1", "-qps", "0", "-H", "x-test: hello", "-H", "X-Other:two", "http://httpbin:8000/get"];
    let (res, _, err) = load(&args, srv.addr).await;
    assert_eq!(res.calls, 2, "{err}");
    let heads = srv.heads();
    assert_eq!(heads.len(), 2);
    let h = heads[0].to_ascii_lowercase();
    assert!(heads[0].starts_with("GET http://httpbin:8000/get HTTP/1.1\r\n"), "{}", heads[0]);
    assert!(h.contains("\r\nhost: httpbin:8000\r\n"), "{h}");
    assert!(h.contains("\r\nuser-agent: fortio.org/fortio-1.75.2\r\n"), "{h}");
    assert!(h.contains("\r\nx-test: hello\r\n"), "{h}");
    assert!(h.contains("\r\nx-other: two\r\n"), "{h}");
}

#[tokio::test]
async fn payload_switches_to_post() {
    let srv = server(Mode::Ok).await;
    let args = ["-n", "1", "-c", "1", "-payload", "abc", "-content-type", "text/plain", "http://httpbin:8000/post"];
    let (_, _, err) = load(&args, srv.addr).await;
    let heads = srv.heads();
    assert_eq!(heads.len(), 1, "{err}");
    assert!(heads[0].starts_with("POST http://httpbin:8000/post HTTP/1.1\r\n"), "{}", heads[0]);
    assert!(heads[0].to_ascii_lowercase().contains("content-type: text/plain"), "{}", heads[0]);
    assert!(heads[0].ends_with("\r\n\r\nabc"), "{}", heads[0]);
}

#[tokio::test]
async fn json_to_stdout() {
    let srv = server(Mode::Ok).await;
    let (_, out, err) =
        load(&["-n", "4", "-c", "2", "-qps", "0", "-json", "-", "http://httpbin:8000/get"], srv.addr).await;
    assert!(out.starts_with("{\n"), "{out}");
    assert!(out.contains("\"RetCodes\": {\"200\":4}"), "{out}");
    assert!(out.contains("\"RequestedDuration\": \"exactly 4 calls\""), "{out}");
    assert!(err.contains("Successfully wrote "), "{err}");
    assert!(err.contains(" bytes of Json data to stdout"), "{err}");
}

#[tokio::test]
async fn curl_prints_status_headers_and_body() {
    let srv = server(Mode::Ok).await;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let status = curl("http://httpbin:8000/get", &[], "", None, srv.addr, &mut out, &mut err).await;
    assert_eq!(status.ok(), Some(200));
    let err = String::from_utf8_lossy(&err).to_string();
    assert_eq!(err.lines().next(), Some("HTTP/1.1 200 OK"), "{err}");
    assert!(err.contains("content-type: text/plain\n"), "{err}");
    assert_eq!(out, b"ok");
    let heads = srv.heads();
    assert!(heads[0].starts_with("GET http://httpbin:8000/get HTTP/1.1\r\n"), "{}", heads[0]);
}

#[tokio::test]
async fn curl_flag_in_load() {
    let srv = server(Mode::Ok).await;
    let (res, out, err) = load(&["-curl", "http://httpbin:8000/get"], srv.addr).await;
    assert_eq!(res.codes.get(&200), Some(&1));
    assert_eq!(out, "ok");
    assert!(err.starts_with("HTTP/1.1 200 OK\n"), "{err}");
}

#[test]
fn normalize_and_parse() {
    let v = normalize_args(
        ["-c", "3", "-qps", "0", "-n", "30", "-loglevel", "Warning", "http://httpbin:8000/get"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    );
    assert_eq!(v, ["-c", "3", "--qps", "0", "-n", "30", "--loglevel", "Warning", "http://httpbin:8000/get"]);
    let a = parse(&["-c", "3", "-qps", "0", "-n", "30", "-loglevel", "Warning", "http://httpbin:8000/get"]);
    assert_eq!((a.c, a.qps, a.n), (3, 0.0, 30));
    assert_eq!(a.level(), LogLevel::Warning);
    assert_eq!(a.url, "http://httpbin:8000/get");
    let d = parse(&["http://x/"]);
    assert_eq!((d.c, d.qps, d.n, d.t, d.timeout), (4, 8.0, 0, Duration::from_secs(5), Duration::from_secs(3)));
    assert_eq!(d.level(), LogLevel::Info);
    assert_eq!(d.percentiles().ok(), Some(vec![50.0, 75.0, 90.0, 99.0, 99.9]));
    let e = parse(&[
        "-qps=-1",
        "-t",
        "1m30s",
        "-quiet",
        "-H",
        "a: b",
        "-X",
        "put",
        "-p",
        "50,99",
        "-json",
        "-",
        "http://x/",
    ]);
    assert_eq!((e.qps, e.t, e.quiet), (-1.0, Duration::from_secs(90), true));
    assert_eq!(e.level(), LogLevel::Error);
    assert_eq!(e.headers, ["a: b"]);
    assert_eq!(e.method.as_deref(), Some("put"));
    assert_eq!(e.json.as_deref(), Some("-"));
    let f = parse(&["--qps", "-1", "-payload", "-x", "-keepalive=false", "-nocatchup", "-uniform", "http://x/"]);
    assert_eq!((f.qps, f.payload.as_deref(), f.keepalive, f.nocatchup), (-1.0, Some("-x"), false, true));
    let g = parse(&["-loglevel=debug", "-allow-initial-errors", "-k", "-c=2", "http://x/"]);
    assert_eq!((g.level(), g.allow_initial_errors, g.k, g.c), (LogLevel::Debug, true, true, 2));
}

#[test]
fn go_number_formatting() {
    let cases: &[(f64, Option<usize>, &str)] = &[
        (0.0, None, "0"),
        (8.0, None, "8"),
        (0.5, None, "0.5"),
        (99.9, None, "99.9"),
        (0.0044, Some(6), "0.0044"),
        (0.014432912, Some(6), "0.0144329"),
        (0.0056869, Some(8), "0.0056869"),
        (0.003869123, Some(4), "0.003869"),
        (334.16123, Some(5), "334.16"),
        (1234567.0, Some(5), "1.2346e+06"),
        (0.00001234, None, "1.234e-05"),
        (1e21, None, "1e+21"),
        (123456.0, None, "123456"),
        (1234567.0, None, "1.234567e+06"),
        (100.0, Some(4), "100"),
        (f64::NAN, Some(8), "NaN"),
        (-0.25, None, "-0.25"),
        (0.113738, Some(9), "0.113738"),
    ];
    for (v, p, want) in cases {
        assert_eq!(fmt_g(*v, *p), *want, "fmt_g({v}, {p:?})");
    }
}

#[test]
fn go_durations() {
    assert_eq!(fmt_duration(Duration::from_nanos(59_852_400)), "59.8524ms");
    assert_eq!(fmt_duration(Duration::from_secs(5)), "5s");
    assert_eq!(fmt_duration(Duration::from_millis(300)), "300ms");
    assert_eq!(fmt_duration(Duration::from_secs(90)), "1m30s");
    assert_eq!(fmt_duration(Duration::from_secs(3600)), "1h0m0s");
    assert_eq!(fmt_duration(Duration::from_micros(1500)), "1.5ms");
    assert_eq!(fmt_duration(Duration::from_nanos(1500)), "1.5\u{b5}s");
    assert_eq!(fmt_duration(Duration::from_nanos(1_500_000_001)), "1.500000001s");
    assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
    assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
    assert_eq!(parse_duration("100us"), Ok(Duration::from_micros(100)));
    assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
    assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    assert!(parse_duration("5").is_err());
    assert!(parse_duration("5x").is_err());
    assert!(parse_duration("").is_err());
}

#[test]
fn histogram_percentiles() {
    let mut h = Histogram::new(0.0, 0.001);
    for v in [0.0005, 0.0015, 0.0035, 0.0045, 0.0144] {
        h.record(v);
    }
    let d = h.export(&[50.0, 100.0, 10.0]);
    assert_eq!(d.buckets.len(), 5);
    assert_eq!(d.buckets[0].start, 0.0005);
    assert_eq!(d.buckets[4].end, 0.0144);
    assert_eq!(d.buckets[4].percent, 100.0);
    assert_eq!(d.percentiles[1].1, 0.0144);
    assert_eq!(d.percentiles[2].1, 0.0005);
    // 50% falls in the ]0.003, 0.004] bucket (40%..60%), interpolated.
    assert!((d.percentiles[0].1 - 0.0035).abs() < 1e-9, "{:?}", d.percentiles);
    let text = d.text("Aggregated Function Time");
    assert!(text.starts_with("Aggregated Function Time : count 5 avg "), "{text}");
    assert!(
        text.contains("\n# range, mid point, percentile, count\n>= 0.0005 <= 0.001 , 0.00075 , 20.00, 1\n"),
        "{text}"
    );
    assert!(text.contains("# target 50% 0.0035\n"), "{text}");
    assert_eq!(Histogram::new(0.0, 0.001).export(&[50.0]).text("Error cases"), "Error cases : no data\n");
}
