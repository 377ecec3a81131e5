//! Background work ferry spawns beside requests (fills, shared-store uploads): each task is
//! tracked while it runs, a panic is logged and counted instead of vanishing with its
//! `JoinHandle`, and shutdown waits for exactly the tasks still running.

use futures_util::FutureExt as _;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct TaskSupervisor {
    running: AtomicUsize,
    panics: AtomicU64,
    finished: Notify,
}

/// Counts a task as running until dropped (also when the task is cancelled).
struct Running(Arc<TaskSupervisor>);

impl Drop for Running {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.finished.notify_waiters();
        }
    }
}

impl TaskSupervisor {
    /// Runs `task` on the runtime, tracked; `what` names it in the log if it panics.
    pub fn spawn<F>(self: &Arc<Self>, what: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.running.fetch_add(1, Ordering::AcqRel);
        let running = Running(self.clone());
        tokio::spawn(async move {
            let outcome = AssertUnwindSafe(task).catch_unwind().await;
            if let Err(payload) = outcome {
                running.0.panics.fetch_add(1, Ordering::Relaxed);
                tracing::error!(task = what, panic = %panic_message(&payload), "background task panicked");
            }
            drop(running);
        });
    }

    /// Tasks running now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }

    /// Tasks that panicked since start.
    pub fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }

    /// Waits until no task runs, for at most `limit`; false if some were still running.
    pub async fn wait_idle(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let finished = self.finished.notified();
            if self.running() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, finished).await.is_err() {
                return self.running() == 0;
            }
        }
    }
}

/// The text a panic was raised with, if it was a string.
pub fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn panics_are_counted_and_shutdown_waits_for_running_tasks() {
        let tasks = Arc::new(TaskSupervisor::default());
        tasks.spawn("panicking", async { panic!("boom") });
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        tasks.spawn("waiting", async move {
            let _ = released.await;
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(tasks.panics(), 1);
        assert_eq!(tasks.running(), 1, "the panicked task is no longer counted");
        assert!(!tasks.wait_idle(Duration::from_millis(50)).await);
        release.send(()).unwrap();
        assert!(tasks.wait_idle(Duration::from_secs(5)).await);
        assert_eq!(tasks.running(), 0);
    }
}
