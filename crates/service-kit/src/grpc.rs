//! Serving a tonic gRPC server the way a go-zero `zrpc` server runs.
//!
//! [`GrpcServer`] is the part `order-srv`, `stock-srv` and the coordinator
//! share, so none of them copies another:
//!
//! 1. [`GrpcServer::bind`] binds the listener first, so `ListenOn: …:0`
//!    works and [`GrpcServer::local_addr`] tells the real port;
//! 2. [`GrpcServer::add_service`] adds business services; each one is also
//!    reported SERVING by the standard `grpc.health.v1.Health` service;
//!    reflection (for `grpcurl`) is added when the settings ask for it;
//! 3. [`GrpcServer::run_until_stopped`] starts serving, registers in etcd
//!    (`<Key>/<lease id>` → `ip:port`) when configured, and only then
//!    reports the business services SERVING in health and calls the
//!    [`GrpcServer::on_ready`] hook (the binaries print their
//!    [readiness line](crate::ready) there). It then waits for the
//!    shutdown future, and stops in go-zero's order:
//!    * **deregister** (revoke the lease: the key vanishes, clients' watchers
//!      drop this address) and report NOT_SERVING;
//!    * wait a short grace period (go-zero's `WrapUpTime`, 1 s) so callers
//!      really stop picking this instance;
//!    * **drain**: stop accepting, let running calls finish, and give up
//!      after the drain timeout (go-zero force-exits after 5.5 s).
//!
//! With [`GrpcServer::with_metrics`] every call is counted under go-zero's
//! `rpc_server_*` names (see [`crate::metrics`]).
//!
//! A service adds its business services only after its tables exist (see
//! [`crate::service::build_branch_server`]), so a connection the kernel
//! accepts on the bound listener before serving starts waits for a server
//! that can answer it, never for one whose tables are missing.
//!
//! Draining first and deregistering second would be wrong: for the whole
//! drain, etcd would still advertise an instance that refuses connections.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use discovery::{DiscoveryError, EtcdConf, Registration};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::transport::Server;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::config::RpcServerConf;
use crate::metrics::Metrics;
use crate::ready::OnReady;

/// How a gRPC server behaves; built from the config or by hand.
#[derive(Debug, Clone)]
pub struct GrpcSettings {
    /// Server-side deadline for each call (go-zero's `Timeout`, 2 s).
    pub timeout: Duration,
    /// Largest request message a service decodes; services apply it with
    /// `max_decoding_message_size` when they are created.
    pub max_msg_size: usize,
    /// Offer gRPC reflection (go-zero's demo does in `dev`/`test` mode).
    pub reflection: bool,
    /// Pause between deregistering and draining (go-zero's `WrapUpTime`).
    pub deregister_grace: Duration,
    /// Longest wait for running calls after draining starts (go-zero's
    /// `WaitTime` is 5.5 s).
    pub drain_timeout: Duration,
}

impl Default for GrpcSettings {
    fn default() -> GrpcSettings {
        GrpcSettings {
            timeout: Duration::from_secs(2),
            max_msg_size: 4 * 1024 * 1024,
            reflection: false,
            deregister_grace: Duration::from_secs(1),
            drain_timeout: Duration::from_millis(5500),
        }
    }
}

impl GrpcSettings {
    /// The settings a go-zero `RpcServerConf` describes.
    pub fn from_conf(conf: &RpcServerConf) -> GrpcSettings {
        GrpcSettings {
            timeout: conf.call_timeout(),
            max_msg_size: conf.max_msg_size,
            reflection: conf.mode.serves_reflection(),
            ..GrpcSettings::default()
        }
    }
}

/// Why a gRPC server could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// `ListenOn` could not be bound (in use, bad address, permissions).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The etcd registration failed at start-up.
    #[error("cannot register in etcd: {0}")]
    Register(#[from] DiscoveryError),
    /// The reflection service could not be built.
    #[error("cannot build gRPC reflection: {0}")]
    Reflection(String),
    /// The transport failed while serving.
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The serving task panicked.
    #[error("gRPC server task failed: {0}")]
    Task(String),
    /// The HTTP branch server failed while serving.
    #[error("HTTP branch server failed: {0}")]
    Http(std::io::Error),
}

/// A bound, not yet serving gRPC server; see the module docs.
pub struct GrpcServer {
    /// Bound before serving so port 0 can be resolved and reported.
    listener: TcpListener,
    /// The real address (port 0 resolved).
    local_addr: SocketAddr,
    /// The configured host with the real port: what gets registered
    /// (`0.0.0.0` is replaced by the pod / interface IP at registration).
    advertise: String,
    /// Timeouts and limits.
    settings: GrpcSettings,
    /// Business services, health and reflection.
    routes: Routes,
    /// Flips the health status of every service at start and at shutdown.
    health: HealthReporter,
    /// Names of the business services, for the health status.
    services: Vec<&'static str>,
    /// Where to register, if anywhere.
    etcd: Option<EtcdConf>,
    /// Called once serving and registered.
    on_ready: Option<OnReady>,
    /// Where every call is counted (`rpc_server_*`), if anywhere.
    metrics: Option<Metrics>,
}

impl GrpcServer {
    /// Binds `listen_on` (`0.0.0.0:9001`, `127.0.0.1:0`) and prepares the
    /// health (and, if asked, reflection) services.
    pub async fn bind(listen_on: &str, settings: GrpcSettings) -> Result<GrpcServer, ServeError> {
        let bind_error = |source| ServeError::Bind { addr: listen_on.to_string(), source };
        let listener = TcpListener::bind(listen_on).await.map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        let host = listen_on.rsplit_once(':').map(|(host, _)| host).unwrap_or("0.0.0.0");
        let advertise = format!("{host}:{}", local_addr.port());

        let (health, health_service) = tonic_health::server::health_reporter();
        // The overall status starts SERVING in tonic-health; a probe must
        // not hear that before the server is registered and ready.
        health.set_service_status("", ServingStatus::NotServing).await;
        let mut routes = Routes::new(health_service);
        if settings.reflection {
            let reflection = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .build_v1()
                .map_err(|err| ServeError::Reflection(err.to_string()))?;
            routes = routes.add_service(reflection);
        }
        Ok(GrpcServer {
            listener,
            local_addr,
            advertise,
            settings,
            routes,
            health,
            services: Vec::new(),
            etcd: None,
            on_ready: None,
            metrics: None,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The settings this server was bound with.
    pub fn settings(&self) -> &GrpcSettings {
        &self.settings
    }

    /// Adds a tonic service (e.g. `OrderServer::new(…)`); it is reported
    /// SERVING by the health service once the server runs.
    pub fn add_service<S>(mut self, service: S) -> GrpcServer
    where
        S: tonic::codegen::Service<tonic::codegen::http::Request<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.services.push(S::NAME);
        self.routes = self.routes.add_service(service);
        self
    }

    /// Registers in etcd when the server runs (`None`: no registration).
    pub fn register_in(mut self, etcd: Option<EtcdConf>) -> GrpcServer {
        self.etcd = etcd;
        self
    }

    /// Counts every call in `metrics` (go-zero's `rpc_server_*`, see
    /// [`Metrics::instrument_grpc`]); handlers find `metrics` in their
    /// request's extensions.
    pub fn with_metrics(mut self, metrics: Metrics) -> GrpcServer {
        self.metrics = Some(metrics);
        self
    }

    /// Calls `hook` once the server serves and is registered (if
    /// configured): the moment it is ready for traffic.
    pub fn on_ready(mut self, hook: impl FnOnce() + Send + 'static) -> GrpcServer {
        self.on_ready = Some(Box::new(hook));
        self
    }

    /// Serves until `shutdown` resolves, then deregisters and drains (see
    /// the module docs). Returns early with an error if the registration
    /// fails at start-up or the transport fails.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let GrpcServer {
            listener,
            local_addr,
            advertise,
            settings,
            routes,
            health,
            services,
            etcd,
            on_ready,
            metrics,
        } = self;
        let routes = match &metrics {
            Some(metrics) => metrics.instrument_grpc(routes),
            None => routes,
        };

        let (drain_tx, drain_rx) = oneshot::channel::<()>();
        let server = Server::builder()
            .timeout(settings.timeout)
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .add_routes(routes)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                let _ = drain_rx.await;
            });
        let mut serving = tokio::spawn(server);
        tracing::info!(%local_addr, "gRPC server listening");

        let registration = match &etcd {
            Some(conf) => match Registration::register(conf, &advertise).await {
                Ok(registration) => Some(registration),
                Err(err) => {
                    serving.abort();
                    return Err(err.into());
                }
            },
            None => None,
        };
        health.set_service_status("", ServingStatus::Serving).await;
        for name in &services {
            health.set_service_status(*name, ServingStatus::Serving).await;
        }
        if let Some(hook) = on_ready {
            hook();
        }

        tokio::select! {
            () = shutdown => {}
            finished = &mut serving => return flatten(finished),
        }

        // 1. Disappear from discovery first, and tell health checkers.
        health.set_service_status("", ServingStatus::NotServing).await;
        for name in &services {
            health.set_service_status(*name, ServingStatus::NotServing).await;
        }
        if let Some(registration) = registration {
            let key = registration.key();
            match registration.deregister().await {
                Ok(()) => tracing::info!(%key, "deregistered from etcd"),
                Err(err) => {
                    tracing::warn!(%key, %err, "deregistration failed; the key expires with its lease")
                }
            }
            tokio::time::sleep(settings.deregister_grace).await;
        }

        // 2. Then drain: no new connections, running calls finish.
        let _ = drain_tx.send(());
        match tokio::time::timeout(settings.drain_timeout, &mut serving).await {
            Ok(finished) => {
                tracing::info!("gRPC server drained");
                flatten(finished)
            }
            Err(_) => {
                tracing::warn!(timeout = ?settings.drain_timeout, "calls still running after the drain timeout; closing");
                serving.abort();
                Ok(())
            }
        }
    }
}

fn flatten(
    finished: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> Result<(), ServeError> {
    match finished {
        Ok(result) => result.map_err(ServeError::from),
        Err(err) => Err(ServeError::Task(err.to_string())),
    }
}
