//! What one downstream connection's requests read of the config: the snapshot, the proxy's
//! runtime view of it, and the mesh client it names. A connection keeps them from one request
//! to the next and checks them with a plain load of the handle's store count, where loading
//! them anew would take a reference count on each (locked instructions, every request).

use std::sync::Arc;

use arc_swap::ArcSwapOption;

use super::runtime::{Generation, ProxyRuntime, Registry};
use crate::snapshot::{Snapshot, SnapshotHandle, Workload};

/// The mesh client's workload and runtime.
pub type Client = Arc<(Arc<Workload>, Arc<ProxyRuntime>)>;

/// One connection's views, empty until its first request.
#[derive(Debug, Default)]
pub struct Views {
    current: Option<Current>,
}

/// A snapshot, with the handle's store count when it was loaded, and what was looked up from
/// it: all of it goes when the handle stores another.
#[derive(Debug)]
struct Current {
    stored: u64,
    snapshot: Arc<Snapshot>,
    /// A proxy's runtime view of it.
    generation: Option<Arc<Generation>>,
    /// The mesh client it names.
    client: Option<Client>,
}

impl Views {
    /// The current snapshot, loaded again only when the handle stored another since.
    #[cfg(test)]
    pub fn snapshot(&mut self, handle: &SnapshotHandle) -> &Arc<Snapshot> {
        &self.refresh(handle).snapshot
    }

    /// The current snapshot and `rt`'s view of it.
    pub fn current(&mut self, handle: &SnapshotHandle, rt: &ProxyRuntime) -> (&Arc<Snapshot>, &Arc<Generation>) {
        let Current { snapshot, generation, .. } = self.refresh(handle);
        if generation.as_ref().is_some_and(|g| g.proxy != rt.id) {
            *generation = None;
        }
        let generation = generation.get_or_insert_with(|| rt.for_snapshot(snapshot));
        (snapshot, generation)
    }

    /// The mesh client the current snapshot names, through the listener's `cache` when it
    /// changed (so that every connection shares one runtime per client); None without one.
    pub fn client(
        &mut self,
        handle: &SnapshotHandle,
        registry: &Registry,
        cache: &ArcSwapOption<(Arc<Workload>, Arc<ProxyRuntime>)>,
    ) -> Option<Client> {
        let current = self.refresh(handle);
        if let Some(c) = &current.client {
            return Some(c.clone());
        }
        let w = current.snapshot.mesh_client.clone()?;
        let c = match cache.load_full().filter(|c| c.0.name == w.name) {
            Some(c) => c,
            None => {
                let c = Arc::new((w.clone(), registry.get(&w)));
                cache.store(Some(c.clone()));
                c
            }
        };
        current.client = Some(c.clone());
        Some(c)
    }

    /// What this connection read, dropped first when the handle has stored a snapshot since.
    fn refresh(&mut self, handle: &SnapshotHandle) -> &mut Current {
        let stored = handle.stored();
        if self.current.as_ref().is_some_and(|c| c.stored != stored) {
            self.current = None;
        }
        self.current.get_or_insert_with(|| Current { stored, snapshot: handle.load(), generation: None, client: None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(generation: u64) -> Snapshot {
        Snapshot { generation, ..Snapshot::default() }
    }

    #[test]
    fn a_connection_loads_the_snapshot_again_only_after_a_store() {
        let handle = SnapshotHandle::default();
        handle.store(snapshot(1));
        let mut views = Views::default();
        let first = views.snapshot(&handle).clone();
        assert_eq!(first.generation, 1);
        let held = Arc::strong_count(&first);
        for _ in 0..3 {
            assert!(Arc::ptr_eq(views.snapshot(&handle), &first), "kept, not loaded again");
        }
        assert_eq!(Arc::strong_count(&first), held, "no reference taken per request");
        handle.store(snapshot(2));
        let second = views.snapshot(&handle).clone();
        assert_eq!(second.generation, 2, "the next request sees the new config");
        // A store with a generation number seen before (a test's, say) is still a new snapshot.
        handle.store(snapshot(2));
        let third = views.snapshot(&handle).clone();
        assert!(!Arc::ptr_eq(&third, &second) && Arc::ptr_eq(&third, &handle.load()));
    }

    #[test]
    fn a_runtime_view_is_rebuilt_for_a_new_generation_or_another_proxy() {
        let handle = SnapshotHandle::default();
        handle.store(snapshot(1));
        let gateway = ProxyRuntime::new(&crate::daemon::gateway_workload(), None);
        let other = ProxyRuntime::new(&crate::daemon::gateway_workload(), None);
        let mut views = Views::default();
        let (s, g) = views.current(&handle, &gateway);
        assert_eq!((s.generation, g.generation, g.proxy), (1, 1, gateway.id));
        let kept = g.clone();
        assert!(Arc::ptr_eq(views.current(&handle, &gateway).1, &kept), "kept while the generation stands");
        let (_, g) = views.current(&handle, &other);
        assert_eq!(g.proxy, other.id, "another proxy's runtime gets its own view");
        handle.store(snapshot(2));
        let (s, g) = views.current(&handle, &other);
        assert_eq!((s.generation, g.generation, g.proxy), (2, 2, other.id));
    }
}
