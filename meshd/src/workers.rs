//! The data plane's worker threads, as Envoy and nginx have them: each runs an event loop of its
//! own (a current-thread runtime), and a connection stays on the worker it was handed to for its
//! whole life. Listeners accept on the control thread, which also reloads config and serves the
//! admin API, so none of that shares a worker's loop; each worker writes its own telemetry.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::TcpStream;
use tokio::runtime::Handle;

/// The worker event loops; connections are handed out in turn.
#[derive(Debug)]
pub struct Workers {
    loops: Vec<Handle>,
    next: AtomicUsize,
}

impl Workers {
    /// Starts `n` (at least one) worker threads named `meshd-proxy`; each runs `init` in its
    /// runtime first (to start its own telemetry writer).
    pub fn start<I>(n: usize, init: I) -> std::io::Result<Workers>
    where
        I: Fn() + Clone + Send + 'static,
    {
        let mut loops = Vec::with_capacity(n.max(1));
        for _ in 0..n.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            loops.push(rt.handle().clone());
            let init = init.clone();
            std::thread::Builder::new().name("meshd-proxy".into()).spawn(move || {
                rt.block_on(async move {
                    init();
                    std::future::pending::<()>().await
                })
            })?;
        }
        Ok(Workers { loops, next: AtomicUsize::new(0) })
    }

    /// Runs `serve` for an accepted connection on the next worker. The socket moves to that
    /// worker's reactor, so its readiness events never pass through another thread.
    pub fn hand_off<F, Fut>(&self, stream: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let std_stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot hand a connection to a worker");
                return;
            }
        };
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.loops.len();
        self.loops[i].spawn(async move {
            match TcpStream::from_std(std_stream) {
                Ok(stream) => serve(stream).await,
                Err(e) => tracing::warn!(error = %e, "a worker cannot take a connection"),
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn connections_are_served_on_the_workers_in_turn() {
        let workers = Workers::start(2, || {}).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut names = Vec::new();
        for _ in 0..4 {
            let mut client = TcpStream::connect(addr).await.unwrap();
            let (accepted, _) = listener.accept().await.unwrap();
            workers.hand_off(accepted, |mut s| async move {
                let t = std::thread::current();
                let reply = format!("{}:{:?}", t.name().unwrap_or(""), t.id());
                s.write_all(reply.as_bytes()).await.unwrap();
            });
            let mut reply = String::new();
            client.read_to_string(&mut reply).await.unwrap();
            names.push(reply);
        }
        assert!(names.iter().all(|n| n.starts_with("meshd-proxy:")), "{names:?}");
        assert_eq!(names[0], names[2], "{names:?}");
        assert_eq!(names[1], names[3], "{names:?}");
        assert_ne!(names[0], names[1], "two workers, in turn: {names:?}");
    }
}
