//! A future polled only after it asked to be woken. A connection's rare signals (shutdown, pod
//! stop, a config change) share a task with the connection itself, and a task's every wake
//! polls all it waits on: without the gate each request's wakes would poll the signals too, and
//! each poll of a `watch` takes its lock.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// The waker handed to the inner future: notes the wake, then wakes the task.
#[derive(Debug)]
struct Gate {
    woken: AtomicBool,
    task: Mutex<Option<Waker>>,
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            task.wake_by_ref();
        }
    }
}

/// `inner`, polled on the first poll and then only after it woke itself.
pub struct Gated<F> {
    inner: Pin<Box<F>>,
    gate: Arc<Gate>,
    waker: Waker,
    /// The task waker last stored in the gate, so that it is only replaced (under the lock)
    /// when the task's waker changes.
    stored: Option<Waker>,
}

impl<F: Future> Gated<F> {
    pub fn new(inner: F) -> Gated<F> {
        let gate = Arc::new(Gate { woken: AtomicBool::new(true), task: Mutex::new(None) });
        Gated { inner: Box::pin(inner), waker: Waker::from(gate.clone()), gate, stored: None }
    }
}

impl<F: Future> Future for Gated<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        if !this.stored.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            // Stored before the flag is read: a wake in between reaches this task either way.
            *this.gate.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
            this.stored = Some(cx.waker().clone());
        }
        // Read before it is swapped: almost every poll finds it unset, and a load is a plain
        // instruction where a swap is a locked one.
        if !this.gate.woken.load(Ordering::Acquire) || !this.gate.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.inner.as_mut().poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its polls; ready once `open` is set, waking through the waker it was last given.
    struct Probe {
        polls: Arc<AtomicUsize>,
        open: Arc<AtomicBool>,
        waker: Arc<Mutex<Option<Waker>>>,
    }

    impl Future for Probe {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            if self.open.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    #[tokio::test]
    async fn the_inner_future_is_polled_only_after_it_woke() {
        let (polls, open, waker) = (Arc::default(), Arc::new(AtomicBool::new(false)), Arc::default());
        let probe = Probe { polls: Arc::clone(&polls), open: Arc::clone(&open), waker: Arc::clone(&waker) };
        let mut gated = std::pin::pin!(Gated::new(probe));
        // The task is woken by something else many times: the probe is polled once, at first.
        for _ in 0..10 {
            assert!(futures_poll(gated.as_mut()).is_pending());
        }
        assert_eq!(polls.load(Ordering::Relaxed), 1);
        // The probe's own wake lets the next poll through, to completion.
        open.store(true, Ordering::Release);
        waker.lock().unwrap().take().unwrap().wake();
        assert!(futures_poll(gated.as_mut()).is_ready());
        assert_eq!(polls.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn a_wake_from_another_thread_wakes_the_task() {
        let (polls, open, waker) = (Arc::default(), Arc::new(AtomicBool::new(false)), Arc::default());
        let probe = Probe { polls, open: Arc::clone(&open), waker: Arc::clone(&waker) };
        let gated = Gated::new(probe);
        let handle = tokio::spawn(gated);
        tokio::task::yield_now().await;
        while waker.lock().unwrap().is_none() {
            tokio::task::yield_now().await;
        }
        std::thread::spawn(move || {
            open.store(true, Ordering::Release);
            waker.lock().unwrap().take().unwrap().wake();
        });
        handle.await.unwrap();
    }

    fn futures_poll<F: Future>(f: Pin<&mut F>) -> Poll<F::Output> {
        let waker = Waker::noop();
        f.poll(&mut Context::from_waker(waker))
    }
}
