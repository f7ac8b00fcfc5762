//! Per-pod app logs, kept in memory (bounded) for `meshd logs` and printed
//! with the pod name when verbose.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// How many lines each pod keeps.
const KEEP: usize = 1000;

/// Log lines of every pod's apps.
#[derive(Debug, Clone, Default)]
pub struct Logs(Arc<Mutex<HashMap<String, VecDeque<String>>>>);

impl Logs {
    /// A sink for the apps of `pod`.
    pub fn sink(&self, pod: &str) -> demo_apps::LogSink {
        let logs = self.clone();
        let pod = pod.to_string();
        Arc::new(move |line: &str| {
            tracing::debug!(target: "app", pod = %pod, "{line}");
            let mut map = logs.0.lock().unwrap_or_else(|e| e.into_inner());
            let q = map.entry(pod.clone()).or_default();
            if q.len() == KEEP {
                q.pop_front();
            }
            q.push_back(line.to_string());
        })
    }

    /// The lines of `pod`, oldest first.
    pub fn lines(&self, pod: &str) -> Vec<String> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(pod).map(|q| q.iter().cloned().collect()).unwrap_or_default()
    }
}
