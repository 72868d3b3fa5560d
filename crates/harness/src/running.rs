//! A server of the workspace running on a task of the test's runtime, and
//! the polling wait every test writes otherwise.
//!
//! [`RunningServer`] wraps whatever `run_until_stopped(shutdown)` a server
//! has (order-srv, stock-srv, the coordinator): it spawns the run, and
//! [`RunningServer::stop`] asks for a graceful stop and insists that the
//! run ends cleanly. [`wait_until`] polls a condition until it holds — a
//! transaction becoming final, a branch receiving its calls — and fails the
//! test with what it was waiting for.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The shutdown signal handed to a server's `run_until_stopped`.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A server running on a task until [`RunningServer::stop`] (or drop,
/// which aborts it).
pub struct RunningServer<E> {
    /// Fires the shutdown signal.
    stop: Option<oneshot::Sender<()>>,
    /// The run; `None` once stopped.
    task: Option<JoinHandle<Result<(), E>>>,
}

impl<E: Debug + Send + 'static> RunningServer<E> {
    /// Spawns `run(shutdown)`, e.g. `|stop| server.run_until_stopped(stop)`.
    pub fn spawn<F, Fut>(run: F) -> RunningServer<E>
    where
        F: FnOnce(Shutdown) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
    {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run(Box::pin(async move {
            let _ = stopped.await;
        })));
        RunningServer { stop: Some(stop), task: Some(task) }
    }

    /// Stops the server and waits (up to 15 s: a bounded drain) for its run to end; panics
    /// if it fails, panics or hangs.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let task = self.task.take().expect("running");
        match tokio::time::timeout(Duration::from_secs(15), task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(err))) => panic!("the server's run failed: {err:?}"),
            Ok(Err(join)) => panic!("the server's run panicked: {join}"),
            Err(_) => panic!("the server did not stop within 15 s"),
        }
    }
}

impl<E> Drop for RunningServer<E> {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Polls `check` every 100 ms until it gives `Ok`, and returns that value;
/// after `timeout`, panics naming `what` and the last `Err` (what the check
/// saw instead, e.g. the status so far).
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{what} not reached after {timeout:?} ({last})"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
