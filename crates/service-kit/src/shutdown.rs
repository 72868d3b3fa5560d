//! The shutdown signal every process waits for.
//!
//! Kubernetes stops a pod by sending SIGTERM (then SIGKILL after the grace
//! period, 30 s by default); a developer presses Ctrl-C (SIGINT). Both mean
//! "stop taking new work, finish what is running, exit". go-zero listens for
//! the same two signals (`core/proc/signals.go`).

/// Resolves when the process receives SIGINT or SIGTERM.
///
/// If the signal handlers cannot be installed (which only happens when the
/// runtime is misconfigured) it logs the problem and never resolves: the
/// process keeps serving and can still be killed.
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(term), Ok(int)) => (term, int),
            (Err(err), _) | (_, Err(err)) => {
                tracing::error!(%err, "cannot install signal handlers; graceful shutdown disabled");
                return std::future::pending().await;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
            _ = int.recv() => tracing::info!("SIGINT received, shutting down"),
        }
    }
    #[cfg(not(unix))]
    {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(%err, "cannot listen for Ctrl-C; graceful shutdown disabled");
            std::future::pending::<()>().await;
        }
        tracing::info!("Ctrl-C received, shutting down");
    }
}
