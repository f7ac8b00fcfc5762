//! Per-pod app logs, kept in memory (bounded) for `meshd logs`. Each pod's
//! apps write to their own buffer: no lock is shared between pods.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// How many lines each pod keeps.
const KEEP: usize = 1000;

type Buffer = Arc<Mutex<VecDeque<String>>>;

/// Log lines of every pod's apps.
#[derive(Debug, Clone, Default)]
pub struct Logs(Arc<Mutex<HashMap<String, Buffer>>>);

impl Logs {
    /// A sink for the apps of `pod` (taken once, when the pod starts).
    pub fn sink(&self, pod: &str) -> demo_apps::LogSink {
        let buffer: Buffer =
            self.0.lock().unwrap_or_else(|e| e.into_inner()).entry(pod.to_string()).or_default().clone();
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

    /// The lines of `pod`, oldest first.
    pub fn lines(&self, pod: &str) -> Vec<String> {
        let buffer = self.0.lock().unwrap_or_else(|e| e.into_inner()).get(pod).cloned();
        buffer.map(|b| b.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()).unwrap_or_default()
    }

    /// Forgets pods that are gone.
    pub fn retain(&self, live: &std::collections::HashSet<String>) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).retain(|k, _| live.contains(k));
    }
}
