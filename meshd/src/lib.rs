//! meshd: an Istio-style service mesh on one machine. Data flows one way:
//! config (YAML) -> snapshot (compiled, immutable) -> proxy (listeners).
#![forbid(unsafe_code)]

pub mod admin;
pub mod analyze;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod explain;
pub mod load;
pub mod logs;
pub mod proxy;
pub mod security;
pub mod snapshot;
pub mod telemetry;
pub mod workers;
pub mod workload;
