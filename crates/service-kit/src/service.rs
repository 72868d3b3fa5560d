//! The listeners of one demo service: gRPC always, dtm-style HTTP branches
//! when `HttpListenOn` is configured.
//!
//! Shutdown order: the gRPC server deregisters from etcd and drains first
//! (see [`crate::grpc`]); the HTTP branches keep serving meanwhile — the
//! coordinator may still be delivering a compensation over HTTP — and are
//! drained last, within their own drain timeout.

use std::future::Future;
use std::net::SocketAddr;

use tokio::sync::watch;

use crate::http_branch::HttpBranchServer;
use crate::{GrpcServer, ServeError};

/// A bound, not yet serving service.
pub struct ServiceServer {
    /// The gRPC server (business services, health, registration).
    grpc: GrpcServer,
    /// The HTTP branches, if configured.
    http: Option<HttpBranchServer>,
}

impl ServiceServer {
    /// A service with only its gRPC listener.
    pub fn grpc(grpc: GrpcServer) -> ServiceServer {
        ServiceServer { grpc, http: None }
    }

    /// Adds HTTP branches.
    pub fn with_http(mut self, http: HttpBranchServer) -> ServiceServer {
        self.http = Some(http);
        self
    }

    /// The gRPC address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.grpc.local_addr()
    }

    /// The HTTP address, if HTTP branches are served.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(HttpBranchServer::local_addr)
    }

    /// Serves both until `shutdown` resolves, then stops gRPC (deregister,
    /// drain) and then HTTP. Returns the first error of either.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let Some(http) = self.http else {
            return self.grpc.run_until_stopped(shutdown).await;
        };
        let drain_timeout = http.drain_timeout();
        let (stop, mut stopped) = watch::channel(false);
        let mut http_task = tokio::spawn(http.run_until_stopped(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }));
        let grpc = self.grpc.run_until_stopped(shutdown).await;
        let _ = stop.send(true);
        let http = match tokio::time::timeout(drain_timeout, &mut http_task).await {
            Ok(Ok(result)) => result,
            Ok(Err(err)) => Err(ServeError::Task(err.to_string())),
            Err(_) => {
                tracing::warn!(timeout = ?drain_timeout, "HTTP branch calls still running after the drain timeout; closing");
                http_task.abort();
                Ok(())
            }
        };
        grpc.and(http)
    }
}
