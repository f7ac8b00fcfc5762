//! Per-pod app logs and per-proxy access logs, kept in memory (bounded) for
//! `meshd logs`. Each pod's apps write to their own buffer: no lock is shared
//! between pods. A proxy's access log is a ring per telemetry writer (one a worker
//! thread), so no two workers share a lock either; its entries are kept as they are,
//! and merged and formatted when read.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::telemetry::accesslog::Entry;
use crate::telemetry::{Parts, Share};

/// How many lines each pod keeps.
const KEEP: usize = 1000;

type Buffer = Arc<Mutex<VecDeque<String>>>;

/// One proxy's last requests, and how its lines are encoded.
#[derive(Debug, Default)]
pub struct AccessLog {
    json: bool,
    /// A ring for each writer that logged for this proxy; they share [`KEEP`].
    rings: Parts<Ring>,
}

/// One writer's last entries of a proxy's log, oldest first.
#[derive(Debug)]
pub struct Ring {
    entries: Mutex<VecDeque<Arc<Entry>>>,
    share: Share,
}

impl Ring {
    /// Keeps `e`, forgetting the oldest entries past this ring's share of [`KEEP`].
    pub fn push(&self, e: Arc<Entry>) {
        let share = self.share.of(KEEP);
        let mut q = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        while q.len() >= share {
            q.pop_front();
        }
        q.push_back(e);
    }
}

impl AccessLog {
    /// A ring for a writer of its own.
    pub fn ring(&self) -> Arc<Ring> {
        self.rings.add(|share| Ring { entries: Mutex::default(), share })
    }

    /// The last [`KEEP`] lines, oldest first: the rings merged by when each request ended, each
    /// ring's own order kept.
    fn lines(&self) -> Vec<String> {
        let rings: Vec<Vec<Arc<Entry>>> = self
            .rings
            .all()
            .iter()
            .map(|r| r.entries.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect())
            .collect();
        let merged = crate::telemetry::merged(&rings, |e| e.ended_us());
        let skip = merged.len().saturating_sub(KEEP);
        merged[skip..].iter().map(|e| if self.json { e.json() } else { e.text() }).collect()
    }
}

/// Log lines of every pod's apps, and every proxy's access log.
#[derive(Debug, Clone, Default)]
pub struct Logs {
    apps: Arc<Mutex<HashMap<String, Buffer>>>,
    access: Arc<Mutex<HashMap<String, Arc<AccessLog>>>>,
}

/// The log name of a proxy's access log: its pod's `istio-proxy` container.
pub fn access_name(proxy: &str) -> String {
    format!("{proxy}{ACCESS_SUFFIX}")
}

const ACCESS_SUFFIX: &str = "/istio-proxy";

impl Logs {
    /// A sink for the apps of `pod` (taken once, when the pod starts).
    pub fn sink(&self, pod: &str) -> demo_apps::LogSink {
        let buffer: Buffer =
            self.apps.lock().unwrap_or_else(|e| e.into_inner()).entry(pod.to_string()).or_default().clone();
        let pod = pod.to_string();
        Arc::new(move |line: &str| {
            tracing::debug!(target: "app", pod = %pod, "{line}");
            let mut q = buffer.lock().unwrap_or_else(|e| e.into_inner());
            if q.len() == KEEP {
                q.pop_front();
            }
            q.push_back(line.to_string());
        })
    }

    /// The access log of `proxy` (taken once per proxy by each telemetry writer).
    pub fn access_log(&self, proxy: &str, json: bool) -> Arc<AccessLog> {
        let mut map = self.access.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(proxy.to_string()).or_insert_with(|| Arc::new(AccessLog { json, ..AccessLog::default() })).clone()
    }

    /// Whether `log` is still `proxy`'s access log: a removed pod's is dropped here, and every
    /// worker's telemetry writer drops its cached handle when this turns false.
    pub fn is_current(&self, proxy: &str, log: &Arc<AccessLog>) -> bool {
        self.access.lock().unwrap_or_else(|e| e.into_inner()).get(proxy).is_some_and(|l| Arc::ptr_eq(l, log))
    }

    /// The lines of `pod` (or of `pod/istio-proxy`, its access log), oldest first.
    pub fn lines(&self, pod: &str) -> Vec<String> {
        if let Some(proxy) = pod.strip_suffix(ACCESS_SUFFIX) {
            let log = self.access.lock().unwrap_or_else(|e| e.into_inner()).get(proxy).cloned();
            return log.map(|l| l.lines()).unwrap_or_default();
        }
        let buffer = self.apps.lock().unwrap_or_else(|e| e.into_inner()).get(pod).cloned();
        buffer.map(|b| b.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()).unwrap_or_default()
    }

    /// Forgets pods (and their proxies' access logs) that are gone.
    pub fn retain(&self, live: &std::collections::HashSet<String>) {
        self.apps.lock().unwrap_or_else(|e| e.into_inner()).retain(|k, _| live.contains(k));
        self.access.lock().unwrap_or_else(|e| e.into_inner()).retain(|k, _| live.contains(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An entry of `reviews-v1` that ended `ended_ms` after the epoch, with `path` to tell it by.
    fn entry(path: &'static str, ended_ms: u64) -> Arc<Entry> {
        let mut r = crate::telemetry::accesslog::reviews();
        r.uri = http::Uri::from_static(path);
        r.start = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ended_ms - 1);
        r.duration_us = 1_000;
        Arc::new(Entry::from(Box::new(r)))
    }

    #[test]
    fn each_writers_ring_is_read_with_the_others_in_the_order_requests_ended() {
        let logs = Logs::default();
        let log = logs.access_log("reviews-v1", false);
        let (one, two) = (log.ring(), log.ring());
        one.push(entry("/a", 10));
        two.push(entry("/b", 20));
        one.push(entry("/c", 30));
        // A ring's own order stands even where the end times do not agree with it.
        one.push(entry("/d", 25));
        two.push(entry("/e", 40));
        let paths: Vec<String> = logs
            .lines("reviews-v1/istio-proxy")
            .iter()
            .map(|l| l.split('"').nth(1).unwrap().split(' ').nth(1).unwrap().to_string())
            .collect();
        assert_eq!(paths, ["/a", "/b", "/c", "/d", "/e"]);
        // The last KEEP of them all.
        for i in 0..KEEP as u64 {
            one.push(entry("/f", 100 + 2 * i));
            two.push(entry("/g", 101 + 2 * i));
        }
        let lines = logs.lines("reviews-v1/istio-proxy");
        assert_eq!(lines.len(), KEEP);
        let held = |r: &Ring| r.entries.lock().unwrap().len();
        assert_eq!(held(&one) + held(&two), KEEP, "the rings share KEEP: memory does not grow with workers");
        assert!(lines[0].contains("/f") && lines[KEEP - 1].contains("/g"), "{} .. {}", lines[0], lines[KEEP - 1]);
    }

    #[test]
    fn a_removed_pods_access_log_is_no_longer_current_for_any_holder() {
        let logs = Logs::default();
        let first = logs.access_log("p-1", false);
        let second_worker = logs.access_log("p-1", false);
        assert!(logs.is_current("p-1", &first) && logs.is_current("p-1", &second_worker));
        // Two workers hold it: a reference count above one no longer means "still live".
        logs.retain(&std::collections::HashSet::new());
        assert!(!logs.is_current("p-1", &first));
        assert!(Arc::strong_count(&first) > 1, "the other worker's handle keeps it alive");
        // A pod of the same name started again gets a new log, not the old one.
        let again = logs.access_log("p-1", false);
        assert!(logs.is_current("p-1", &again) && !logs.is_current("p-1", &first));
    }
}
