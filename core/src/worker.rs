//! Background loops with one runner (in the manner of Garage's `Worker`): every loop of every
//! role (dispatcher, batch workers, channel consumers, result counters, scheduler, cleanup) is
//! a [`Worker`] whose [`Worker::work`] does one step and says what comes next. The runner
//! calls it until shutdown, backs off after an error (doubling, with jitter, up to a minute),
//! survives a panic in a step (counted, backed off, then the loop goes on), and keeps each
//! worker's state in the process's [`Workers`] registry, which `/readyz` and the metrics read:
//! a worker whose last [`FAILING_AFTER`] steps all failed makes the process not ready.
//!
//! Helpers a step spawns (lease keepers, heartbeats) are held by an [`AbortOnDrop`], so they
//! end with their step however it ends: returned, failed, panicked or dropped at an `.await`.

use futures::FutureExt;
use parking_lot::Mutex;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Consecutive failed steps after which a worker counts as failing (process not ready).
pub const FAILING_AFTER: u32 = 3;
/// First pause after a failed step; doubled per consecutive failure up to [`MAX_BACKOFF`].
pub const BASE_BACKOFF: Duration = Duration::from_millis(200);
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How long a step under way at shutdown may take to finish (it sees the shutdown token).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What the runner does after a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// There may be more to do: step again at once.
    Busy,
    /// Nothing to do now: step again after this pause (or at shutdown, stop).
    Idle(Duration),
    /// The worker has finished for good.
    Done,
}

/// One background loop. `name` is a metric label: a fixed word per kind of worker
/// (`dispatcher`, `channel.push`), never an id.
#[async_trait::async_trait]
pub trait Worker: Send + 'static {
    fn name(&self) -> &'static str;
    /// One step. A step should return within its own timeouts; it may be dropped at any
    /// `.await` at shutdown, so whatever it leases must be safe to let expire.
    async fn step(&mut self, shutdown: &CancellationToken) -> crate::Result<WorkerState>;
}

/// What the registry knows of one running worker.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkerStatus {
    pub name: &'static str,
    /// `running`, `idle`, `failing`, `done` or `stopped`.
    pub state: &'static str,
    pub consecutive_failures: u32,
    pub panics: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The workers of a process, for `/readyz` and the operators.
#[derive(Clone, Default)]
pub struct Workers(Arc<Mutex<Vec<Arc<Mutex<WorkerStatus>>>>>);

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.snapshot()).finish()
    }
}

impl Workers {
    /// Every worker's status, in start order.
    pub fn snapshot(&self) -> Vec<WorkerStatus> {
        self.0.lock().iter().map(|s| s.lock().clone()).collect()
    }

    /// The workers whose last [`FAILING_AFTER`] steps failed, with their last error.
    pub fn failing(&self) -> Vec<WorkerStatus> {
        self.snapshot()
            .into_iter()
            .filter(|s| s.state == "failing")
            .collect()
    }

    fn register(&self, name: &'static str) -> Arc<Mutex<WorkerStatus>> {
        let status = Arc::new(Mutex::new(WorkerStatus {
            name,
            state: "running",
            consecutive_failures: 0,
            panics: 0,
            last_error: None,
        }));
        let mut all = self.0.lock();
        // Workers that ended leave their entry behind; drop those first.
        all.retain(|s| !matches!(s.lock().state, "done" | "stopped"));
        all.push(status.clone());
        status
    }

    /// Runs `worker` until `shutdown` (or until it says it is done), on a task of its own.
    /// Dropping the returned handle aborts the worker: a role whose future is dropped takes
    /// its workers with it, as a process that dies would.
    pub fn spawn<W: Worker>(&self, worker: W, shutdown: CancellationToken) -> AbortOnDrop<()> {
        let status = self.register(worker.name());
        AbortOnDrop::spawn(run(worker, status, shutdown))
    }
}

async fn run<W: Worker>(
    mut worker: W,
    status: Arc<Mutex<WorkerStatus>>,
    shutdown: CancellationToken,
) {
    let name = worker.name();
    let failing_gauge = metrics::gauge!("herald_worker_failing", "worker" => name);
    let mut failures: u32 = 0;
    while !shutdown.is_cancelled() {
        let started = Instant::now();
        let step = AssertUnwindSafe(worker.step(&shutdown)).catch_unwind();
        tokio::pin!(step);
        let outcome = tokio::select! {
            r = &mut step => r,
            // A step under way at shutdown may finish what it holds (a dispatcher saves its
            // checkpoint and hands its campaign back) for a grace period; then it is dropped,
            // and what it held is redelivered when its lease runs out.
            _ = shutdown.cancelled() => match tokio::time::timeout(SHUTDOWN_GRACE, &mut step).await {
                Ok(r) => r,
                Err(_) => {
                    tracing::warn!(worker = name, "step still running after the shutdown grace; dropped");
                    break;
                }
            },
        };
        let pause = match outcome {
            Ok(Ok(state)) => {
                if failures >= FAILING_AFTER {
                    tracing::info!(worker = name, "worker recovered");
                    failing_gauge.set(0.0);
                }
                failures = 0;
                let mut s = status.lock();
                s.consecutive_failures = 0;
                s.last_error = None;
                match state {
                    WorkerState::Busy => {
                        s.state = "running";
                        None
                    }
                    WorkerState::Idle(d) => {
                        s.state = "idle";
                        Some(d)
                    }
                    WorkerState::Done => {
                        s.state = "done";
                        return;
                    }
                }
            }
            Ok(Err(e)) => {
                metrics::counter!("herald_worker_errors_total", "worker" => name).increment(1);
                tracing::warn!(worker = name, error = %e, secs = started.elapsed().as_secs_f64(), "worker step failed");
                Some(failed(
                    &status,
                    &mut failures,
                    e.to_string(),
                    &failing_gauge,
                ))
            }
            Err(panic) => {
                let msg = panic_message(&panic);
                metrics::counter!("herald_worker_panics_total", "worker" => name).increment(1);
                tracing::error!(worker = name, panic = %msg, "worker step panicked; restarting it");
                status.lock().panics += 1;
                Some(failed(
                    &status,
                    &mut failures,
                    format!("panicked: {msg}"),
                    &failing_gauge,
                ))
            }
        };
        if let Some(pause) = pause {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(pause) => {}
            }
        } else {
            // A busy worker still lets the others on its thread run.
            tokio::task::yield_now().await;
        }
    }
    status.lock().state = "stopped";
}

/// Records a failed step; the pause before the next one.
fn failed(
    status: &Mutex<WorkerStatus>,
    failures: &mut u32,
    error: String,
    failing_gauge: &metrics::Gauge,
) -> Duration {
    *failures = failures.saturating_add(1);
    let mut s = status.lock();
    s.consecutive_failures = *failures;
    s.last_error = Some(error);
    if *failures >= FAILING_AFTER {
        s.state = "failing";
        failing_gauge.set(1.0);
    }
    backoff(*failures)
}

/// The pause after `failures` consecutive failures: doubling from [`BASE_BACKOFF`], capped at
/// [`MAX_BACKOFF`], with the upper half jittered so workers that failed together spread out.
pub fn backoff(failures: u32) -> Duration {
    let exp = BASE_BACKOFF.saturating_mul(1 << failures.saturating_sub(1).min(16));
    let capped = exp.min(MAX_BACKOFF);
    let half = capped / 2;
    let jitter = rand::random_range(0..=half.as_millis() as u64);
    half + Duration::from_millis(jitter)
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}

/// A spawned helper task that is aborted when this guard is dropped: keep it in the scope of
/// the work it helps, and it ends with that work however the work ends.
pub struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> AbortOnDrop<T> {
    pub fn spawn<F>(f: F) -> Self
    where
        F: std::future::Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        Self(tokio::spawn(f))
    }

    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }

    /// Waits for the task to end (it is not aborted while waited for).
    pub async fn join(mut self) -> Result<T, tokio::task::JoinError> {
        (&mut self.0).await
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    struct Flaky {
        steps: Arc<AtomicU32>,
        /// Steps 1..=fail_until fail (odd ones panic), later ones succeed.
        fail_until: u32,
    }

    #[async_trait::async_trait]
    impl Worker for Flaky {
        fn name(&self) -> &'static str {
            "flaky"
        }
        async fn step(&mut self, _: &CancellationToken) -> crate::Result<WorkerState> {
            let n = self.steps.fetch_add(1, Ordering::SeqCst) + 1;
            if n <= self.fail_until {
                if n % 2 == 1 {
                    panic!("step {n} panicked");
                }
                return Err(crate::Error::internal(format!("step {n} failed")));
            }
            Ok(WorkerState::Idle(Duration::from_millis(5)))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_that_panics_and_fails_is_restarted_reported_failing_then_recovers() {
        let workers = Workers::default();
        let steps = Arc::new(AtomicU32::new(0));
        let shutdown = CancellationToken::new();
        let handle = workers.spawn(
            Flaky {
                steps: steps.clone(),
                fail_until: 4,
            },
            shutdown.clone(),
        );
        // Three failed steps (two of them panics) make it failing.
        while steps.load(Ordering::SeqCst) < 3 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        let failing = workers.failing();
        assert_eq!(failing.len(), 1, "{:?}", workers.snapshot());
        assert_eq!(failing[0].name, "flaky");
        assert!(failing[0].panics >= 1);
        assert!(failing[0].last_error.as_deref().unwrap().contains("step 3"));
        // It keeps going through its backoff and recovers by itself.
        while steps.load(Ordering::SeqCst) < 6 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(workers.failing().is_empty(), "{:?}", workers.snapshot());
        shutdown.cancel();
        handle.join().await.unwrap();
        assert_eq!(workers.snapshot()[0].state, "stopped");
    }

    #[tokio::test]
    async fn a_helper_held_by_abort_on_drop_ends_when_its_owner_panics() {
        let alive = Arc::new(AtomicU32::new(0));
        let seen = alive.clone();
        let owner = tokio::spawn(async move {
            let _keeper = AbortOnDrop::spawn(async move {
                loop {
                    seen.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
            tokio::time::sleep(Duration::from_millis(20)).await;
            panic!("the owner dies");
        });
        assert!(owner.await.unwrap_err().is_panic());
        let after = alive.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(alive.load(Ordering::SeqCst), after, "the helper stopped");
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_a_minute() {
        for n in 1..40 {
            let d = backoff(n);
            let full = BASE_BACKOFF
                .saturating_mul(1 << (n - 1).min(16))
                .min(MAX_BACKOFF);
            assert!(d >= full / 2 && d <= full, "{n}: {d:?} of {full:?}");
        }
        assert!(backoff(30) >= MAX_BACKOFF / 2);
    }
}
