//! Watches the config folder and reports settled changes: notify events
//! are debounced so an editor's save (write, rename, chmod) is one reload.

use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::load::is_config_file;

/// Quiet period after the last event before a reload.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

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
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<PathBuf>();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if let Ok(event) = res {
            if event.kind.is_access() {
                return;
            }
            for p in event.paths {
                if is_config_file(&p) {
                    let _ = raw_tx.send(p);
                }
            }
        }
    })?;
    watcher.watch(dir, RecursiveMode::NonRecursive)?;
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        while let Some(first) = raw_rx.recv().await {
            let mut batch = vec![first];
            loop {
                match tokio::time::timeout(DEBOUNCE, raw_rx.recv()).await {
                    Ok(Some(p)) => {
                        if !batch.contains(&p) {
                            batch.push(p);
                        }
                    }
                    Ok(None) => break,
                    Err(_) => break,
                }
            }
            if tx.send(batch).await.is_err() {
                return;
            }
        }
    });
    Ok((FolderWatch { _watcher: watcher }, rx))
}
