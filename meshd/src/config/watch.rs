//! Watches the config folder and reports settled changes. A file closed after writing, or
//! renamed into place (an editor's atomic save), is complete: it is reloaded after a short
//! settle that gathers the other files of the same save. Any other change (a write still
//! going on) waits for a quiet period first, so a half-written file is not read.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::load::is_config_file;

/// Quiet period after the last event before a reload, while a write may still be going on.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// Quiet period once every changed file is complete (closed or renamed into place).
pub const SETTLE: Duration = Duration::from_millis(5);

/// One change to a config file, and whether the file is known to be complete.
#[derive(Debug)]
struct Change {
    path: PathBuf,
    complete: bool,
}

/// Whether an event leaves the file whole: closed after a write, renamed into place, removed.
/// A created file is not: its contents come with the writes that follow.
fn completes(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
    matches!(
        kind,
        EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(ModifyKind::Name(_))
            | EventKind::Remove(_)
    )
}

/// Keeps the OS watcher alive; dropping it stops the events.
pub struct FolderWatch {
    _watcher: notify::RecommendedWatcher,
}

impl std::fmt::Debug for FolderWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FolderWatch")
    }
}

/// Starts watching `dir`; each message on the returned channel is one settled batch of changed files.
pub fn watch(dir: &Path) -> notify::Result<(FolderWatch, mpsc::Receiver<Vec<PathBuf>>)> {
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<Change>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res {
            let complete = completes(&event.kind);
            if event.kind.is_access() && !complete {
                return;
            }
            for path in event.paths {
                if is_config_file(&path) {
                    let _ = raw_tx.send(Change { path, complete });
                }
            }
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        while let Some(first) = raw_rx.recv().await {
            // Files written but not yet closed; the batch settles quickly once none is left.
            let mut open: Vec<PathBuf> = vec![];
            let mut batch = vec![];
            note(first, &mut batch, &mut open);
            loop {
                let quiet = if open.is_empty() { SETTLE } else { DEBOUNCE };
                match tokio::time::timeout(quiet, raw_rx.recv()).await {
                    Ok(Some(c)) => note(c, &mut batch, &mut open),
                    Ok(None) | Err(_) => break,
                }
            }
            if tx.send(batch).await.is_err() {
                return;
            }
        }
    });
    Ok((FolderWatch { _watcher: watcher }, rx))
}

/// Adds a change to the batch and tracks which files are still being written.
fn note(c: Change, batch: &mut Vec<PathBuf>, open: &mut Vec<PathBuf>) {
    if c.complete {
        open.retain(|p| p != &c.path);
    } else if !open.contains(&c.path) {
        open.push(c.path.clone());
    }
    if !batch.contains(&c.path) {
        batch.push(c.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, EventKind, ModifyKind, RenameMode};

    #[test]
    fn a_file_is_complete_when_closed_after_writing_or_renamed_into_place() {
        assert!(completes(&EventKind::Access(AccessKind::Close(AccessMode::Write))));
        assert!(completes(&EventKind::Modify(ModifyKind::Name(RenameMode::To))));
        assert!(!completes(&EventKind::Create(CreateKind::File)));
        assert!(!completes(&EventKind::Modify(ModifyKind::Data(DataChange::Any))));
        assert!(!completes(&EventKind::Access(AccessKind::Close(AccessMode::Read))));
    }

    #[test]
    fn a_batch_waits_for_every_file_being_written() {
        let (mut batch, mut open) = (vec![], vec![]);
        let c = |p: &str, complete| Change { path: PathBuf::from(p), complete };
        note(c("a.yaml", false), &mut batch, &mut open);
        note(c("b.yaml", false), &mut batch, &mut open);
        note(c("a.yaml", true), &mut batch, &mut open);
        assert_eq!(open, vec![PathBuf::from("b.yaml")]);
        note(c("b.yaml", true), &mut batch, &mut open);
        assert!(open.is_empty());
        assert_eq!(batch, vec![PathBuf::from("a.yaml"), PathBuf::from("b.yaml")]);
    }

    /// Removes the folder when the test ends.
    struct Scratch(PathBuf);
    impl Scratch {
        fn path(&self) -> &Path {
            &self.0
        }
    }
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[tokio::test]
    async fn an_in_place_save_and_an_atomic_rename_each_give_one_batch() {
        let dir = std::env::temp_dir().join(format!("meshd-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let dir = Scratch(dir);
        let (_w, mut rx) = watch(dir.path()).unwrap();
        std::fs::write(dir.path().join("vs.yaml"), "kind: VirtualService\n").unwrap();
        let batch = rx.recv().await.unwrap();
        assert_eq!(batch, vec![dir.path().join("vs.yaml")]);
        std::fs::write(dir.path().join("dr.tmp"), "kind: DestinationRule\n").unwrap();
        std::fs::rename(dir.path().join("dr.tmp"), dir.path().join("dr.yaml")).unwrap();
        let batch = rx.recv().await.unwrap();
        assert_eq!(batch, vec![dir.path().join("dr.yaml")]);
    }
}
