//! ferry's one shutdown: a cancellation token every loop and listener watches, and one tracker
//! of every task spawned beside requests (fills, uploads, connections, maintenance, probes,
//! TLS reloads). A panic is logged and counted instead of vanishing with its `JoinHandle`;
//! shutdown cancels the token and waits for exactly the tasks still running.

use futures_util::FutureExt as _;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, Default)]
pub struct TaskSupervisor {
    tracker: TaskTracker,
    stop: CancellationToken,
    panics: AtomicU64,
    /// Background work running now (fills, uploads, clean-ups, scans): what `running`
    /// reports. Connections and endless loops are tracked for shutdown but not counted.
    background: AtomicUsize,
}

/// Counts one piece of background work as running until dropped (also when cancelled).
struct Counted(Arc<TaskSupervisor>);

impl Counted {
    fn start(supervisor: &Arc<TaskSupervisor>) -> Counted {
        supervisor.background.fetch_add(1, Ordering::AcqRel);
        Counted(supervisor.clone())
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.background.fetch_sub(1, Ordering::AcqRel);
    }
}

impl TaskSupervisor {
    /// Runs background work (a fill, an upload) on the runtime, tracked and counted; `what`
    /// names it in the log if it panics.
    pub fn spawn<F>(self: &Arc<Self>, what: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let counted = Counted::start(self);
        self.track(what, async move {
            task.await;
            drop(counted);
        });
    }

    /// Runs a client connection (or one of its HTTP/2 streams), tracked: shutdown waits for
    /// it, but it is not background work.
    pub(crate) fn spawn_connection<F>(self: &Arc<Self>, what: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.track(what, task);
    }

    /// Runs a loop that has no end of its own (maintenance, probes, reloads), tracked, until
    /// shutdown: it is dropped at its next await once [`TaskSupervisor::stop`] is called.
    pub(crate) fn spawn_until_stopped<F>(self: &Arc<Self>, what: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = self.stop.clone();
        self.track(what, async move {
            tokio::select! {
                () = task => {}
                () = stop.cancelled() => {}
            }
        });
    }

    /// Runs blocking background work (a disk scan, opening a file) on the blocking pool,
    /// tracked and counted, so shutdown waits for what it holds.
    pub(crate) fn spawn_blocking<F, T>(self: &Arc<Self>, work: F) -> tokio::task::JoinHandle<T>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let counted = Counted::start(self);
        self.tracker.spawn_blocking(move || {
            let _counted = counted;
            work()
        })
    }

    fn track<F>(self: &Arc<Self>, what: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let supervisor = self.clone();
        self.tracker.spawn(async move {
            let outcome = AssertUnwindSafe(task).catch_unwind().await;
            if let Err(payload) = outcome {
                supervisor.panics.fetch_add(1, Ordering::Relaxed);
                tracing::error!(task = what, panic = %panic_message(&payload), "background task panicked");
            }
        });
    }

    /// Starts the shutdown: every listener stops accepting and every loop ends.
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Resolves once shutdown has started.
    pub async fn stopped(&self) {
        self.stop.cancelled().await;
    }

    /// Background work running now (not connections or endless loops).
    pub fn running(&self) -> usize {
        self.background.load(Ordering::Acquire)
    }

    /// Tasks that panicked since start.
    pub fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }

    /// Waits until no task runs, for at most `limit`; false if some were still running.
    /// New tasks may still be spawned afterwards (a fill's upload after its commit).
    pub(crate) async fn wait_idle(&self, limit: Duration) -> bool {
        self.tracker.close();
        let idle = tokio::time::timeout(limit, self.tracker.wait())
            .await
            .is_ok();
        self.tracker.reopen();
        idle
    }
}

/// The text a panic was raised with, if it was a string.
pub(crate) fn panic_message(payload: &Box<dyn std::any::Any + Send>) -> String {
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
    async fn stop_ends_every_loop_and_idle_means_none_left() {
        let tasks = Arc::new(TaskSupervisor::default());
        for _ in 0..3 {
            tasks.spawn_until_stopped("endless", std::future::pending());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(tasks.running(), 0, "loops are tracked, not counted as work");
        assert!(
            !tasks.wait_idle(Duration::from_millis(50)).await,
            "but waited for"
        );
        tasks.stop();
        assert!(tasks.wait_idle(Duration::from_secs(5)).await);
        assert_eq!(tasks.running(), 0);
        tasks.spawn("after a wait", async {});
        assert!(
            tasks.wait_idle(Duration::from_secs(5)).await,
            "still usable"
        );
    }

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
