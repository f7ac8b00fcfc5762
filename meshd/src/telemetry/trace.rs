//! Tracing as Envoy does it in Istio: every proxy continues the caller's
//! trace (B3 first, then W3C `traceparent`) or starts one, opens its own span
//! and hands the span to the app or upstream in both header forms. Spans are
//! kept in memory, grouped by trace, and exported as OTLP/JSON when a
//! collector is configured.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

use super::accesslog::Entry;
use super::metrics::Reporter;
use super::{Parts, Share};

/// The names a span is propagated under (B3, then W3C).
static B3_TRACE: HeaderName = HeaderName::from_static("x-b3-traceid");
static B3_SPAN: HeaderName = HeaderName::from_static("x-b3-spanid");
static B3_PARENT: HeaderName = HeaderName::from_static("x-b3-parentspanid");
static B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `x-b3-sampled`'s value: every span is kept.
const SAMPLED: &str = "1";

/// Every name [`SpanContext::inject`] and [`SpanContext::write_h1`] write: a caller's own
/// copies go before a proxy's are written.
pub static PROPAGATED: [&HeaderName; 5] = [&B3_TRACE, &B3_SPAN, &B3_PARENT, &B3_SAMPLED, &TRACEPARENT];

/// A proxy's place in a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    /// The trace (128 bits; a 64-bit B3 id keeps its width when propagated).
    pub trace_id: u128,
    /// Whether the trace id is printed with 32 hex digits.
    pub wide: bool,
    /// This proxy's span.
    pub span_id: u64,
    /// The caller's span.
    pub parent: Option<u64>,
}

/// An id spelled in `widths` hex digits of either case, not all zero (B3's and W3C's rule), read
/// in one pass over the bytes as they came: no check for text first, no parse by a general
/// number reader. Ids come on nearly every request inside a mesh.
fn hex_id(digits: &[u8], widths: &[usize]) -> Option<u128> {
    if !widths.contains(&digits.len()) {
        return None;
    }
    let (high, low) = digits.split_at(digits.len().saturating_sub(16));
    let (high, bad_high) = hex_u64(high);
    let (low, bad_low) = hex_u64(low);
    let v = u128::from(high) << 64 | u128::from(low);
    (!(bad_high | bad_low) && v != 0).then_some(v)
}

/// The value of at most 16 hex digits, and whether a byte was not one.
fn hex_u64(digits: &[u8]) -> (u64, bool) {
    // A digit's value, or 16 for any other byte: one lookup and no branch a byte.
    static NIBBLE: [u8; 256] = {
        let mut t = [16u8; 256];
        let mut i = 0;
        while i < 10 {
            t[b'0' as usize + i] = i as u8;
            i += 1;
        }
        let mut i = 0;
        while i < 6 {
            t[b'a' as usize + i] = 10 + i as u8;
            t[b'A' as usize + i] = 10 + i as u8;
            i += 1;
        }
        t
    };
    let mut v = 0u64;
    let mut bad = 0u8;
    for &b in digits {
        let n = NIBBLE[usize::from(b)];
        bad |= n;
        v = v << 4 | u64::from(n & 0xf);
    }
    (v, bad & 16 != 0)
}

impl SpanContext {
    /// Continues the caller's trace (B3, then `traceparent`), or starts one; a new span either
    /// way. The caller gathers the three values, as they came, in its own pass over the request's
    /// headers.
    pub fn continue_from(b3_trace: Option<&[u8]>, b3_span: Option<&[u8]>, traceparent: Option<&[u8]>) -> SpanContext {
        let span_id = fastrand::u64(1..);
        if let (Some(t), Some(s)) = (b3_trace, b3_span) {
            if let (Some(trace_id), Some(parent)) = (hex_id(t, &[16, 32]), hex_id(s, &[16])) {
                return SpanContext { trace_id, wide: t.len() == 32, span_id, parent: Some(parent as u64) };
            }
        }
        if let Some(tp) = traceparent {
            let mut f = tp.split(|&b| b == b'-');
            if let (Some(_), Some(t), Some(s), Some(_), None) = (f.next(), f.next(), f.next(), f.next(), f.next()) {
                if let (Some(trace_id), Some(parent)) = (hex_id(t, &[32]), hex_id(s, &[16])) {
                    return SpanContext { trace_id, wide: true, span_id, parent: Some(parent as u64) };
                }
            }
        }
        SpanContext { trace_id: fastrand::u128(1..), wide: true, span_id, parent: None }
    }

    /// The trace id as propagated.
    pub fn trace_hex(&self) -> String {
        if self.wide {
            format!("{:032x}", self.trace_id)
        } else {
            format!("{:016x}", self.trace_id)
        }
    }

    /// The span's ids spelled once, `00-<trace, 32 digits>-<span, 16>-01<parent, 16>`: the first
    /// 55 bytes are `traceparent`, and every B3 value is a slice of it (see [`Self::fields`]).
    fn spelled(&self) -> [u8; 71] {
        let mut buf = [0u8; 71];
        buf[..3].copy_from_slice(b"00-");
        hex(&mut buf[3..35], self.trace_id);
        buf[35] = b'-';
        hex(&mut buf[36..52], u128::from(self.span_id));
        buf[52..55].copy_from_slice(b"-01");
        if let Some(p) = self.parent {
            hex(&mut buf[55..], u128::from(p));
        }
        buf
    }

    /// The fields the span is propagated in, each a range of [`Self::spelled`]; [`SAMPLED`] goes
    /// with them.
    fn fields(&self) -> impl Iterator<Item = (&'static HeaderName, std::ops::Range<usize>)> {
        // A 64-bit trace id keeps its 16 digits in B3: the low half of the 32.
        let trace = if self.wide { 3..35 } else { 19..35 };
        [(&B3_TRACE, trace), (&B3_SPAN, 36..52), (&TRACEPARENT, 0..55)]
            .into_iter()
            .chain(self.parent.map(|_| (&B3_PARENT, 55..71)))
    }

    /// Puts this span into `headers` as the caller's span for the next hop. Every value is a
    /// slice of one buffer (one allocation, no formatting machinery on the request path).
    pub fn inject(&self, headers: &mut HeaderMap) {
        let all = Bytes::from_owner(self.spelled());
        for (name, at) in self.fields() {
            if let Ok(v) = HeaderValue::from_maybe_shared(all.slice(at)) {
                headers.insert(name.clone(), v);
            }
        }
        if self.parent.is_none() {
            headers.remove(&B3_PARENT);
        }
        headers.insert(B3_SAMPLED.clone(), HeaderValue::from_static(SAMPLED));
    }

    /// Writes the fields [`Self::inject`] puts into a header map straight into an HTTP/1.1
    /// head, for a request whose map no longer holds a caller's copies: no hashing, no buffer
    /// of its own.
    pub fn write_h1(&self, w: &mut Vec<u8>) {
        let spelled = self.spelled();
        for (name, at) in self.fields() {
            crate::proxy::h1::write_line(w, name.as_str().as_bytes(), &spelled[at]);
        }
        crate::proxy::h1::write_line(w, B3_SAMPLED.as_str().as_bytes(), SAMPLED.as_bytes());
    }
}

/// Writes the low `out.len()` hex digits of `v` (lowercase, zero-padded) into `out`.
pub fn hex(out: &mut [u8], v: u128) {
    // Two digits per byte, from a table: a digit at a time costs a 128-bit shift each, and ids
    // are spelled on every request.
    static PAIRS: [[u8; 2]; 256] = {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut t = [[0u8; 2]; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = [DIGITS[i >> 4], DIGITS[i & 0xf]];
            i += 1;
        }
        t
    };
    debug_assert!(out.len() <= 32, "a u128 has 32 hex digits");
    let bytes = v.to_be_bytes();
    let (pairs, odd) = (out.len() / 2, out.len() % 2);
    for (o, b) in out[odd..].chunks_exact_mut(2).zip(&bytes[16 - pairs..]) {
        o.copy_from_slice(&PAIRS[usize::from(*b)]);
    }
    if odd == 1 {
        // The digit before the pairs: the low nibble of the byte before them (an odd width is
        // at most 31 digits, so there is one).
        out[0] = PAIRS[usize::from(bytes[15 - pairs] & 0xf)][1];
    }
}

/// Client (gateway, outbound sidecar) or server (inbound sidecar) span.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SpanKind {
    /// Sent by the proxy.
    Client,
    /// Received by the proxy.
    Server,
}

/// One finished span.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Span {
    /// 32 (or 16) hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// The caller's span, if any.
    pub parent_span_id: Option<String>,
    /// The proxy's pod.
    pub proxy: String,
    /// Its workload (Deployment).
    pub workload: String,
    /// Client or server.
    pub kind: SpanKind,
    /// Envoy's decorator: `reviews.default.svc.cluster.local:9080/*`.
    pub operation: String,
    /// Start, microseconds since the epoch.
    pub start_unix_us: u64,
    /// Duration in microseconds.
    pub duration_us: u64,
    /// Response status.
    pub status: u16,
    /// Envoy's response flags.
    pub flags: String,
    /// The upstream cluster.
    pub cluster: String,
    /// Method and path, for the trace list.
    pub request: String,
}

/// One trace as the admin API lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TraceSummary {
    /// Trace id.
    pub trace_id: String,
    /// The earliest span's proxy and request.
    pub root: String,
    /// Start, milliseconds since the epoch.
    pub start_unix_ms: u64,
    /// From the first span's start to the last span's end.
    pub duration_ms: f64,
    /// Span count.
    pub spans: usize,
    /// Any span with a 5xx or a response flag.
    pub error: bool,
}

/// How many traces and spans per trace are kept.
const MAX_TRACES: usize = 1000;
const MAX_SPANS: usize = 64;

/// The last traces, in memory, as the entries that made them: spans are only spelled out
/// when the admin API asks. Each telemetry writer (one a worker thread) adds to a shard of its
/// own, under a lock no other writer takes: a store every worker locked for every request was
/// one lock for the whole mesh. Reads gather the shards, and put a trace whose spans were
/// written by several workers together again.
#[derive(Debug, Default)]
pub struct TraceStore {
    /// The writers' shards; they share [`MAX_TRACES`].
    shards: Parts<TraceShard>,
}

/// One writer's part of the store: its last traces, its share of [`MAX_TRACES`].
#[derive(Debug)]
pub struct TraceShard {
    inner: Mutex<Store>,
    share: Share,
}

#[derive(Debug, Default)]
struct Store {
    /// Trace ids in the order their first span came, with when that span ended (microseconds
    /// since the epoch), by which the shards' orders are merged.
    order: VecDeque<(u128, u64)>,
    traces: HashMap<u128, Spans, IdKey>,
}

/// A trace's spans. Most traces in the store have a single span (a request that no other proxy
/// handled): it is kept in place, which saves allocating and freeing a vector a request.
#[derive(Debug)]
enum Spans {
    One(Arc<Entry>),
    Many(Vec<Arc<Entry>>),
}

// A second span always fits.
const _: () = assert!(MAX_SPANS >= 2);

impl Spans {
    fn push(&mut self, e: Arc<Entry>) {
        match self {
            // A count more and one less, once a trace: clearer than moving the span out.
            Spans::One(first) => *self = Spans::Many(vec![first.clone(), e]),
            Spans::Many(all) if all.len() < MAX_SPANS => all.push(e),
            Spans::Many(_) => {}
        }
    }

    fn to_vec(&self) -> Vec<Arc<Entry>> {
        match self {
            Spans::One(e) => vec![e.clone()],
            Spans::Many(all) => all.clone(),
        }
    }
}

/// Hashes trace ids with a folded multiply under a key drawn when the store is made. SipHash
/// cost as much as the rest of storing a span; a caller choosing its own trace ids still
/// cannot aim them at one bucket without the key.
#[derive(Debug, Clone, Copy)]
struct IdKey(u64, u64);

impl Default for IdKey {
    fn default() -> Self {
        IdKey(fastrand::u64(..), fastrand::u64(..))
    }
}

impl std::hash::BuildHasher for IdKey {
    type Hasher = IdHasher;

    fn build_hasher(&self) -> IdHasher {
        IdHasher { key: *self, state: 0 }
    }
}

/// See [`IdKey`].
struct IdHasher {
    key: IdKey,
    state: u64,
}

/// The two halves of a full 64 by 64-bit product, folded into one.
fn fold_mul(a: u64, b: u64) -> u64 {
    let r = u128::from(a) * u128::from(b);
    (r as u64) ^ ((r >> 64) as u64)
}

impl std::hash::Hasher for IdHasher {
    fn write_u128(&mut self, v: u128) {
        // A second multiply spreads ids that differ in a few low bits of one half (a single
        // fold leaves them in a narrow band of the top bits, which pick the bucket group).
        let once = fold_mul((v as u64) ^ self.key.0, ((v >> 64) as u64) ^ self.key.1);
        self.state ^= fold_mul(once ^ self.key.1, 0x9e37_79b9_7f4a_7c15);
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not used by `u128` keys; kept correct for any other.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.state = fold_mul(u64::from_le_bytes(word) ^ self.key.0, self.state ^ self.key.1);
        }
    }

    fn finish(&self) -> u64 {
        self.state
    }
}

impl TraceShard {
    /// Adds a request's span; the oldest trace goes when the shard is full.
    pub fn add(&self, e: Arc<Entry>) {
        let Some(ctx) = e.span else { return };
        let share = self.share.of(MAX_TRACES);
        let mut s = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let Store { traces, order } = &mut *s;
        // One lookup for the span; another only to evict the oldest trace when a new one is full.
        match traces.entry(ctx.trace_id) {
            std::collections::hash_map::Entry::Occupied(mut o) => o.get_mut().push(e),
            std::collections::hash_map::Entry::Vacant(v) => {
                order.push_back((ctx.trace_id, e.ended_us()));
                v.insert(Spans::One(e));
                while order.len() > share {
                    if let Some((old, _)) = order.pop_front() {
                        traces.remove(&old);
                    }
                }
            }
        }
    }
}

impl TraceStore {
    /// A shard for a new writer.
    pub fn shard(&self) -> Arc<TraceShard> {
        self.shards.add(|share| TraceShard { inner: Mutex::default(), share })
    }

    /// The newest traces first.
    pub fn list(&self, limit: usize) -> Vec<TraceSummary> {
        // Each shard's newest traces, newest first, taken under its lock (its writer adds
        // under it); then merged by when their first span ended, and the spans built after.
        // Per shard: (when the first span ended, trace id, spans).
        type Newest = Vec<(u64, u128, Vec<Arc<Entry>>)>;
        let newest: Vec<Newest> = self
            .shards
            .all()
            .iter()
            .map(|shard| {
                let s = shard.inner.lock().unwrap_or_else(|e| e.into_inner());
                let traces = s.order.iter().rev().take(limit);
                traces.filter_map(|&(id, ended)| s.traces.get(&id).map(|spans| (ended, id, spans.to_vec()))).collect()
            })
            .collect();
        let mut traces: Vec<(u128, Vec<Arc<Entry>>)> = Vec::new();
        for (_, id, entries) in super::merged(&newest, |t| std::cmp::Reverse(t.0)) {
            // A trace's spans from another worker's shard join it where it first came.
            if let Some(t) = traces.iter_mut().find(|t| t.0 == *id) {
                t.1.extend(entries.iter().cloned());
            } else if traces.len() < limit {
                traces.push((*id, entries.clone()));
            }
        }
        traces.iter().map(|(_, entries)| summary(&entries.iter().filter_map(|e| span(e)).collect::<Vec<_>>())).collect()
    }

    /// The spans of one trace, by start time, from every shard.
    pub fn get(&self, trace_id: &str) -> Option<Vec<Span>> {
        let id = hex_id(trace_id.as_bytes(), &[16, 32])?;
        let mut entries: Option<Vec<Arc<Entry>>> = None;
        for shard in self.shards.all() {
            if let Some(spans) = shard.inner.lock().unwrap_or_else(|e| e.into_inner()).traces.get(&id) {
                entries.get_or_insert_with(Vec::new).extend(spans.to_vec());
            }
        }
        let mut spans: Vec<Span> = entries?.iter().filter_map(|e| span(e)).collect();
        spans.sort_by_key(|s| s.start_unix_us);
        Some(spans)
    }
}

/// The span of a request: a server span at an inbound sidecar, a client span elsewhere.
pub fn span(e: &Entry) -> Option<Span> {
    let ctx = e.span?;
    let series = e.series.as_ref();
    let kind = match series.map(|s| s.key.reporter) {
        Some(Reporter::Destination) => SpanKind::Server,
        _ => SpanKind::Client,
    };
    let workload = series
        .map(|s| match kind {
            SpanKind::Server => s.key.destination.workload.clone(),
            SpanKind::Client => s.key.source.workload.clone(),
        })
        .unwrap_or_else(|| e.proxy.to_string());
    let service = series.map(|s| s.key.service.fqdn.as_str()).filter(|s| *s != "unknown");
    let operation = match (service, &e.upstream_cluster) {
        (Some(svc), Some(c)) if c.port != 0 => format!("{svc}:{}/*", c.port),
        (Some(svc), _) => format!("{svc}/*"),
        (None, _) => "unknown".to_string(),
    };
    let path = e.path();
    Some(Span {
        trace_id: ctx.trace_hex(),
        span_id: format!("{:016x}", ctx.span_id),
        parent_span_id: ctx.parent.map(|p| format!("{p:016x}")),
        proxy: e.proxy.to_string(),
        workload,
        kind,
        operation,
        start_unix_us: unix_us(e.start),
        duration_us: e.duration_us,
        status: e.status,
        flags: e.flags.to_string(),
        cluster: e.upstream_cluster.as_ref().map_or("-".into(), |c| c.name.clone()),
        request: format!("{} {}", e.method, path.split('?').next().unwrap_or_default()),
    })
}

fn summary(spans: &[Span]) -> TraceSummary {
    let first = spans.iter().min_by_key(|s| (s.start_unix_us, std::cmp::Reverse(s.duration_us)));
    let start = first.map_or(0, |s| s.start_unix_us);
    let end = spans.iter().map(|s| s.start_unix_us + s.duration_us).max().unwrap_or(start);
    TraceSummary {
        trace_id: first.map(|s| s.trace_id.clone()).unwrap_or_default(),
        root: first.map(|s| format!("{} {}", s.workload, s.request)).unwrap_or_default(),
        start_unix_ms: start / 1000,
        duration_ms: (end - start) as f64 / 1000.0,
        spans: spans.len(),
        error: spans.iter().any(|s| s.status >= 500 || s.flags != "-"),
    }
}

/// Microseconds since the epoch.
pub fn unix_us(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or(Duration::ZERO).as_micros() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_hash_apart_under_the_key_and_alike_without_it() {
        use std::hash::BuildHasher;
        let ids: Vec<u128> = (0..1000u128).map(|i| i << 64).chain((0..1000).map(|i| i * 0x1_0001)).collect();
        // Under any key: random hashes would fill 1024 (1 - e^-1.95) = 879 of them, give or take 10.
        for _ in 0..200 {
            let key = IdKey::default();
            let buckets: std::collections::HashSet<u64> = ids.iter().map(|id| key.hash_one(id) >> 54).collect();
            assert!(buckets.len() > 800, "{} of 1024 top-bit buckets used by 2000 ids under {key:?}", buckets.len());
        }
        let key = IdKey::default();
        assert_eq!(key.hash_one(7u128), key.hash_one(7u128));
        assert_ne!(IdKey(1, 2).hash_one(7u128), IdKey(3, 4).hash_one(7u128));
    }

    #[test]
    fn hex_spells_the_low_digits_of_any_width() {
        for v in [0u128, 1, 0xabc, u128::from(u64::MAX), u128::MAX, 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210] {
            for width in [1, 3, 16, 31, 32] {
                let mut out = vec![0u8; width];
                hex(&mut out, v);
                let full = format!("{v:032x}");
                assert_eq!(std::str::from_utf8(&out).unwrap(), &full[32 - width..], "{v:x} in {width}");
            }
        }
    }

    fn continued(headers: &HeaderMap) -> SpanContext {
        let get = |name: &HeaderName| headers.get(name).map(HeaderValue::as_bytes);
        SpanContext::continue_from(get(&B3_TRACE), get(&B3_SPAN), get(&TRACEPARENT))
    }

    #[test]
    fn b3_is_continued_with_a_new_span() {
        let mut h = HeaderMap::new();
        h.insert("x-b3-traceid", HeaderValue::from_static("463ac35c9f6413ad"));
        h.insert("x-b3-spanid", HeaderValue::from_static("a2fb4a1d1a96d312"));
        let ctx = continued(&h);
        assert_eq!(ctx.trace_hex(), "463ac35c9f6413ad");
        assert_eq!(ctx.parent, Some(0xa2fb4a1d1a96d312));
        assert_ne!(ctx.span_id, 0xa2fb4a1d1a96d312);
        ctx.inject(&mut h);
        assert_eq!(h["x-b3-traceid"], "463ac35c9f6413ad", "a 64-bit trace id keeps its width");
        assert_eq!(h["x-b3-parentspanid"], "a2fb4a1d1a96d312");
        assert_eq!(h["x-b3-spanid"], format!("{:016x}", ctx.span_id).as_str());
        assert_eq!(h["x-b3-sampled"], "1");
        let tp = h["traceparent"].to_str().unwrap();
        assert_eq!(tp, format!("00-0000000000000000463ac35c9f6413ad-{:016x}-01", ctx.span_id));
    }

    #[test]
    fn traceparent_is_used_without_b3_and_a_trace_starts_without_either() {
        let mut h = HeaderMap::new();
        h.insert("traceparent", HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
        let ctx = continued(&h);
        assert_eq!(ctx.trace_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.parent, Some(0x00f067aa0ba902b7));
        let fresh = continued(&HeaderMap::new());
        assert_eq!(fresh.parent, None);
        assert_eq!(fresh.trace_hex().len(), 32);
        let mut out = HeaderMap::new();
        out.insert("x-b3-parentspanid", HeaderValue::from_static("0000000000000001"));
        fresh.inject(&mut out);
        assert!(!out.contains_key("x-b3-parentspanid"));
        assert_eq!(out["x-b3-traceid"], fresh.trace_hex().as_str());
        assert_eq!(out["x-b3-spanid"], format!("{:016x}", fresh.span_id).as_str());
        assert_eq!(out["traceparent"], format!("00-{}-{:016x}-01", fresh.trace_hex(), fresh.span_id).as_str());
    }

    #[test]
    fn fields_written_into_a_head_are_the_injected_ones() {
        for (trace_id, wide) in [(0x4bf92f3577b34da6a3ce929d0e0e4736, true), (0x463ac35c9f6413ad, false)] {
            for parent in [None, Some(0xa2fb4a1d1a96d312)] {
                let ctx = SpanContext { trace_id, wide, span_id: 0x00f067aa0ba902b7, parent };
                let mut injected = HeaderMap::new();
                ctx.inject(&mut injected);
                let mut head = Vec::new();
                ctx.write_h1(&mut head);
                let mut written = HeaderMap::new();
                for line in std::str::from_utf8(&head).unwrap().split_terminator("\r\n") {
                    let (name, value) = line.split_once(": ").unwrap();
                    let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
                    assert!(PROPAGATED.contains(&&name), "{name} is dropped from a caller's request");
                    written.append(name, HeaderValue::from_str(value).unwrap());
                }
                assert_eq!(written, injected, "wide {wide}, parent {parent:?}");
            }
        }
    }

    #[test]
    fn traceparent_needs_exactly_four_parts() {
        let tp = HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra");
        assert_eq!(SpanContext::continue_from(None, None, Some(tp.as_bytes())).parent, None);
    }

    #[test]
    fn malformed_ids_start_a_new_trace() {
        let mut h = HeaderMap::new();
        h.insert("x-b3-traceid", HeaderValue::from_static("zz"));
        h.insert("x-b3-spanid", HeaderValue::from_static("0000000000000000"));
        assert_eq!(continued(&h).parent, None);
    }

    /// What an id is, spelled out the slow way: its width, hex digits of either case only (no
    /// sign, no space, nothing past ASCII), not zero.
    fn id_by_rule(s: &[u8], widths: &[usize]) -> Option<u128> {
        let s = std::str::from_utf8(s).ok()?;
        if !widths.contains(&s.len()) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u128::from_str_radix(s, 16).ok().filter(|v| *v != 0)
    }

    #[test]
    fn ids_are_hex_digits_of_their_width_and_not_zero() {
        let cases: [&[u8]; 14] = [
            b"463ac35c9f6413ad",
            b"463AC35C9F6413AD",
            b"4bf92f3577b34da6a3ce929d0e0e4736",
            b"00000000000000000000000000000001",
            b"0000000000000000",
            b"00000000000000000000000000000000",
            b"+63ac35c9f6413ad",
            b"463ac35c9f6413a ",
            b"463ac35c9f6413ag",
            b"463ac35c9f6413a\xc3",
            b"463ac35c9f6413a",
            b"4bf92f3577b34da6a3ce929d0e0e47361",
            b"ffffffffffffffffffffffffffffffff",
            b"",
        ];
        for s in cases {
            for widths in [&[16, 32][..], &[16], &[32]] {
                assert_eq!(hex_id(s, widths), id_by_rule(s, widths), "{:?} in {widths:?}", String::from_utf8_lossy(s));
            }
        }
        // Every byte in every place of a 16-digit id, against the rule.
        for at in [0, 7, 15] {
            for b in 0..=255u8 {
                let mut s = *b"463ac35c9f6413ad";
                s[at] = b;
                assert_eq!(hex_id(&s, &[16]), id_by_rule(&s, &[16]), "byte {b:#x} at {at}");
            }
        }
    }

    fn entry(trace: u128, id: u64, start_us: u64, dur: u64, status: u16) -> Arc<Entry> {
        let r = crate::telemetry::accesslog::Record {
            proxy: "p".into(),
            start: SystemTime::UNIX_EPOCH + Duration::from_micros(start_us),
            method: http::Method::GET,
            uri: http::Uri::from_static("/x?y=1"),
            protocol: "HTTP/1.1",
            status,
            flags: "-".into(),
            details: "via_upstream".into(),
            bytes_received: 0,
            bytes_sent: 0,
            duration_us: dur,
            upstream_service_time: None,
            forwarded_for: None,
            user_agent: None,
            request_id: None,
            authority: None,
            upstream_host: None,
            upstream_cluster: None,
            downstream_local: None,
            downstream_remote: "127.0.0.1:1".parse().unwrap(),
            route: None,
            span: Some(SpanContext { trace_id: trace, wide: true, span_id: id, parent: None }),
            series: None,
        };
        Arc::new(Entry::from(Box::new(r)))
    }

    #[test]
    fn the_store_groups_spans_and_forgets_the_oldest_trace() {
        let store = TraceStore::default();
        let shard = store.shard();
        shard.add(entry(1, 0xb, 2_000, 1_000, 200));
        shard.add(entry(1, 0xa, 1_000, 5_000, 503));
        for i in 0..MAX_TRACES {
            shard.add(entry(100 + i as u128, 1, 0, 1, 200));
        }
        assert!(store.get(&format!("{:032x}", 1)).is_none());
        let store = TraceStore::default();
        let shard = store.shard();
        shard.add(entry(1, 0xb, 2_000, 1_000, 200));
        shard.add(entry(1, 0xa, 1_000, 5_000, 503));
        let list = store.list(10);
        assert_eq!(list[0].spans, 2);
        assert_eq!(list[0].trace_id, format!("{:032x}", 1));
        assert_eq!(list[0].duration_ms, 5.0);
        assert_eq!(list[0].root, "p GET /x");
        assert!(list[0].error);
        let spans = store.get(&format!("{:032X}", 1)).unwrap();
        assert_eq!(spans[0].span_id, "000000000000000a");
        // A trace keeps its first spans up to the limit; a lone span is a trace too.
        for i in 0..2 * MAX_SPANS as u64 {
            shard.add(entry(2, 0x100 + i, i, 1, 200));
        }
        shard.add(entry(3, 0xc, 0, 1, 200));
        let kept: Vec<String> = store.get(&format!("{:032x}", 2)).unwrap().into_iter().map(|s| s.span_id).collect();
        let first: Vec<String> = (0..MAX_SPANS as u64).map(|i| format!("{:016x}", 0x100 + i)).collect();
        assert_eq!(kept, first, "the first spans, by start time");
        assert_eq!(store.list(10)[0].spans, 1);
    }
    #[test]
    fn a_trace_whose_spans_two_workers_wrote_is_listed_and_read_whole() {
        let store = TraceStore::default();
        let (one, two) = (store.shard(), store.shard());
        // Trace 1: the gateway's span on one worker, the sidecar's on the other. Trace 2 ends
        // later on the first worker, trace 3 earlier on the second.
        one.add(entry(1, 0xb, 1_000, 3_000, 200));
        two.add(entry(1, 0xa, 2_000, 1_000, 503));
        one.add(entry(2, 0xc, 9_000, 1_000, 200));
        two.add(entry(3, 0xd, 0, 500, 200));
        let ids: Vec<String> = store.list(10).into_iter().map(|t| t.trace_id).collect();
        let hex = |id: u128| format!("{id:032x}");
        assert_eq!(ids, [hex(2), hex(1), hex(3)], "newest first, by when the first span ended");
        let first = &store.list(10)[1];
        assert_eq!((first.spans, first.error, first.duration_ms), (2, true, 3.0));
        let spans: Vec<String> = store.get(&hex(1)).unwrap().into_iter().map(|s| s.span_id).collect();
        assert_eq!(spans, ["000000000000000b", "000000000000000a"], "both shards' spans, by start");
        assert_eq!(store.list(2).len(), 2);
        // The shards share MAX_TRACES: one that all traces come to keeps its share.
        for i in 0..MAX_TRACES as u128 {
            one.add(entry(100 + i, 1, 0, 1, 200));
        }
        assert_eq!(one.inner.lock().unwrap().order.len(), MAX_TRACES / 2);
        assert!(store.get(&hex(100 + MAX_TRACES as u128 / 2 - 1)).is_none());
        assert!(store.get(&hex(100 + MAX_TRACES as u128 / 2)).is_some());
    }
}
