//! Putting the coordinator together: store, engine, two listeners, discovery.
//!
//! The life of a coordinator process, in order:
//!
//! 1. [`Coordinator::build`] opens the store (creating its tables), builds
//!    the engine and **binds** both listeners. Port 0 works: tests read the
//!    real ports back with [`Coordinator::http_addr`] / [`Coordinator::grpc_addr`].
//! 2. [`Coordinator::run_until_stopped`] starts serving HTTP and gRPC and the
//!    recovery poller, and only *then* registers `dtmservice/<lease id>` in
//!    etcd — a client that finds us there can connect at once — and, when
//!    asked ([`Coordinator::announce_ready`], the binary), prints its
//!    [readiness line](service_kit::ready).
//! 3. When the `shutdown` future resolves (SIGINT/SIGTERM in `main`):
//!    deregister first (revoke the lease, so clients stop choosing us),
//!    mark gRPC health NOT_SERVING, stop accepting, let in-flight requests
//!    finish, then shut the engine down (it finishes or releases the
//!    transactions it holds, so another instance can take them over at once).
//!
//! Branch URLs of the form `etcd://hosts/<key>/pkg.Svc/Method` are resolved
//! through etcd by the discovery crate's [`discovery::ChannelCache`] (one
//! etcd client per cluster, one watched key prefix per service).
//!
//! Each listener accepts at most `MaxConnections` connections at a time
//! ([`LimitedListener`]); further clients wait in the kernel's accept queue.
//! HTTP clients must send a request head within 10 s (slowloris), and a
//! drain after shutdown lasts at most `ApiTimeout`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use service_kit::listener::LimitedListener;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::alert::AlertSettings;
use crate::api::grpc::{BearerInterceptor, DtmService};
use crate::api::http::{HttpLimits, HttpState, router};
use crate::attempts::AttemptSettings;
use crate::config::{Config, RegistrationTarget};
use crate::engine::{Engine, EngineHooks, EngineSettings};
use crate::metrics::Metrics;

/// Why the coordinator could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is unusable (caught at build time).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The store could not be opened or migrated.
    #[error("cannot open the store ({store}): {message}")]
    Store {
        /// Loggable description of the store (no password).
        store: String,
        /// The store's error.
        message: String,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address we tried.
        addr: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Registration in etcd failed at start-up.
    #[error("cannot register in etcd: {0}")]
    Discovery(#[from] discovery::DiscoveryError),
    /// A server task failed while running.
    #[error("{0} server failed: {1}")]
    Serve(&'static str, String),
}

/// A built, bound, not-yet-running coordinator.
pub struct Coordinator {
    /// The configuration it was built from (registration, limits, auth).
    config: Config,
    /// The transaction engine shared by both APIs and the poller.
    engine: Engine,
    /// Metrics shared by the APIs and the engine observer.
    metrics: Arc<Metrics>,
    /// Bound HTTP listener (dtm's 36789).
    http: TcpListener,
    /// Bound gRPC listener (dtm's 36790).
    grpc: TcpListener,
    /// Called once serving and registered (the binary prints its
    /// readiness line there).
    on_ready: Option<service_kit::ready::OnReady>,
}

impl Coordinator {
    /// Opens the store, builds the engine, binds both listeners.
    pub async fn build(config: Config) -> Result<Coordinator, ServerError> {
        config.validate()?;
        let metrics = Arc::new(Metrics::new());
        let store = crate::store::open(config.store.url().expose(), config.store.max_open_conns)
            .await
            .map_err(|e| ServerError::Store { store: config.store.describe(), message: e.to_string() })?;
        let hooks = EngineHooks {
            observer: metrics.clone(),
            resolver: Some(Arc::new(discovery::ChannelCache::new())),
            checkpoint: None,
        };
        let engine = Engine::new(store, engine_settings(&config), hooks)
            .map_err(|e| ServerError::Serve("branch client", e.to_string()))?;
        let http = bind(&config.listen_host, config.http_port).await?;
        let grpc = bind(&config.listen_host, config.grpc_port).await?;
        tracing::info!(
            store = %config.store.describe(),
            http = %local(&http),
            grpc = %local(&grpc),
            "coordinator built"
        );
        Ok(Coordinator { config, engine, metrics, http, grpc, on_ready: None })
    }

    /// The bound HTTP address (the real port when configured with 0).
    pub fn http_addr(&self) -> SocketAddr {
        local(&self.http)
    }

    /// The bound gRPC address.
    pub fn grpc_addr(&self) -> SocketAddr {
        local(&self.grpc)
    }

    /// Prints the [readiness line](service_kit::ready) `ready coordinator
    /// pid=… http=… grpc=…` once both APIs serve and the registration in
    /// etcd (if configured) is done. The binary calls this.
    pub fn announce_ready(self) -> Coordinator {
        let addrs = [("http", self.http_addr()), ("grpc", self.grpc_addr())];
        self.on_ready(move || service_kit::ready::announce("coordinator", &addrs))
    }

    /// Calls `hook` once both APIs serve and the registration in etcd (if
    /// configured) is done.
    pub fn on_ready(mut self, hook: impl FnOnce() + Send + 'static) -> Coordinator {
        self.on_ready = Some(Box::new(hook));
        self
    }

    /// The engine (for in-process tests and embedding).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Serves until `shutdown` resolves, then shuts down gracefully (see the
    /// module docs for the order). Returns an error if a server fails.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let Coordinator { config, engine, metrics, http, grpc, on_ready } = self;
        let stop_accepting = CancellationToken::new();
        // Everything that can fail is built before anything is spawned.
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| ServerError::Serve("grpc", format!("reflection: {e}")))?;
        let registration_target =
            config.micro_service.registration()?.map(|target| with_bound_port(target, local(&grpc).port()));
        engine.spawn_poller();

        let mut http_task = spawn_http(&config, &engine, &metrics, http, stop_accepting.clone());

        // gRPC.
        let (health, health_service) = tonic_health::server::health_reporter();
        let dtm =
            proto::dtmgimp::dtm_server::DtmServer::new(DtmService::new(engine.clone(), metrics.clone()))
                .max_decoding_message_size(config.max_body_bytes)
                .max_encoding_message_size(config.max_body_bytes);
        health.set_serving::<proto::dtmgimp::dtm_server::DtmServer<DtmService>>().await;
        let dtm = tonic::service::interceptor::InterceptedService::new(
            dtm,
            BearerInterceptor::new(config.auth_token().cloned()),
        );
        let incoming = LimitedListener::new(grpc, config.max_connections).into_stream();
        let token = stop_accepting.clone();
        let grpc_server = tonic::transport::Server::builder()
            .timeout(config.api_timeout())
            .layer(
                tower::ServiceBuilder::new()
                    .load_shed()
                    .layer(tower::limit::GlobalConcurrencyLimitLayer::new(config.max_concurrent_requests)),
            )
            .add_service(health_service)
            .add_service(reflection)
            .add_service(dtm)
            .serve_with_incoming_shutdown(incoming, token.cancelled_owned());
        let mut grpc_task: JoinHandle<io::Result<()>> =
            tokio::spawn(async move { grpc_server.await.map_err(io::Error::other) });

        // Announce ourselves only now that both listeners serve.
        let registration = match registration_target {
            Some(target) => match register(&target).await {
                Ok(registration) => Some(registration),
                Err(e) => {
                    stop_accepting.cancel();
                    let _ = tokio::join!(http_task, grpc_task);
                    engine.shutdown().await;
                    return Err(e);
                }
            },
            None => None,
        };
        if let Some(hook) = on_ready {
            hook();
        }

        // Run until told to stop, or until a server dies on its own.
        let failure = tokio::select! {
            () = shutdown => None,
            result = &mut http_task => Some(("http", flatten(result))),
            result = &mut grpc_task => Some(("grpc", flatten(result))),
        };
        match &failure {
            None => tracing::info!("shutdown requested"),
            Some((which, result)) => tracing::error!(server = which, ?result, "server stopped unexpectedly"),
        }

        // 1. Disappear from discovery, so new clients go elsewhere.
        if let Some(registration) = registration {
            deregister(registration).await;
        }
        // 2. Stop accepting and drain in-flight requests.
        health.set_not_serving::<proto::dtmgimp::dtm_server::DtmServer<DtmService>>().await;
        stop_accepting.cancel();
        let (http_result, grpc_result) = match failure {
            Some(("http", result)) => (result, flatten(grpc_task.await)),
            Some((_, result)) => (flatten(http_task.await), result),
            None => (flatten(http_task.await), flatten(grpc_task.await)),
        };
        // 3. Finish or release the transactions this instance holds.
        engine.shutdown().await;
        tracing::info!("coordinator stopped");
        http_result.map_err(|e| ServerError::Serve("http", e.to_string()))?;
        grpc_result.map_err(|e| ServerError::Serve("grpc", e.to_string()))?;
        Ok(())
    }
}

/// Starts the HTTP API (dtm's `/api/dtmsvr`, metrics, health) on `listener`;
/// it stops accepting when `stop_accepting` is cancelled, then drains.
fn spawn_http(
    config: &Config,
    engine: &Engine,
    metrics: &Arc<Metrics>,
    listener: TcpListener,
    stop_accepting: CancellationToken,
) -> JoinHandle<io::Result<()>> {
    let state = HttpState {
        engine: engine.clone(),
        metrics: metrics.clone(),
        auth_token: config.auth_token().cloned(),
        // Validated by `Config::validate` before the servers are built.
        service_admins: crate::api::admin::ServiceAdmins::new(config.service_admins().unwrap_or_default()),
        counts: crate::api::admin::CountsCache::default(),
    };
    let limits = HttpLimits {
        max_body_bytes: config.max_body_bytes,
        max_concurrent_requests: config.max_concurrent_requests,
        timeout: config.api_timeout(),
    };
    let app = router(state, limits);
    let http_limits = service_kit::http::HttpServeLimits {
        max_connections: config.max_connections,
        drain_timeout: config.api_timeout(),
        ..Default::default()
    };
    tokio::spawn(service_kit::http::serve(listener, app, stop_accepting.cancelled_owned(), http_limits))
}

/// Removes our key from etcd; a failure only logs (the key expires with its lease).
async fn deregister(registration: discovery::Registration) {
    let key = registration.key();
    match registration.deregister().await {
        Ok(()) => tracing::info!(%key, "deregistered from etcd"),
        Err(e) => tracing::warn!(%key, error = %e, "deregistration failed; the key expires with its lease"),
    }
}

/// The engine's knobs from the configuration.
fn engine_settings(config: &Config) -> EngineSettings {
    let secs = Duration::from_secs;
    EngineSettings {
        retry_interval: secs(config.retry_interval),
        timeout_to_fail: secs(config.timeout_to_fail),
        request_timeout: secs(config.request_timeout),
        max_retry_interval: secs(config.max_retry_interval),
        trans_cron_interval: secs(config.trans_cron_interval),
        lease_duration: secs(config.retry_interval),
        alert: AlertSettings {
            retry_limit: config.alert_retry_limit,
            // Validated by `Config::validate` before the engine is built.
            webhook: config.alert_web_hook().ok().flatten(),
            // Alerts of other coordinators and of a previous run are found
            // as fast as due transactions are.
            poll_interval: secs(config.trans_cron_interval),
            ..AlertSettings::default()
        },
        attempts: AttemptSettings {
            record: config.attempts_record,
            max_per_transaction: config.attempts_per_transaction,
            max_age: secs(config.attempts_max_age),
        },
        ..EngineSettings::default()
    }
}

/// An `EndPoint` whose port is 0 (`127.0.0.1:0`, with `GrpcPort: 0`)
/// publishes the port the gRPC listener actually got: a coordinator started
/// on any free port is still found in etcd. Any other end point is kept
/// verbatim (behind NAT or a Kubernetes Service it differs on purpose).
fn with_bound_port(mut target: RegistrationTarget, grpc_port: u16) -> RegistrationTarget {
    if let Some(host) = target.end_point.strip_suffix(":0") {
        target.end_point = format!("{host}:{grpc_port}");
    }
    target
}

/// Registers `<key>/<lease id>` → EndPoint (verbatim) under a 10 s lease.
async fn register(target: &RegistrationTarget) -> Result<discovery::Registration, ServerError> {
    let conf = discovery::EtcdConf::new(target.hosts.clone(), target.key.clone());
    // The discovery crate logs the key and value once registered.
    Ok(discovery::Registration::register_value(&conf, target.end_point.clone()).await?)
}

/// Joins a task result and the server's own result.
fn flatten(result: Result<io::Result<()>, tokio::task::JoinError>) -> io::Result<()> {
    result.map_err(io::Error::other).and_then(|r| r)
}

async fn bind(host: &str, port: u16) -> Result<TcpListener, ServerError> {
    let addr = format!("{host}:{port}");
    TcpListener::bind(&addr).await.map_err(|source| ServerError::Bind { addr, source })
}

fn local(listener: &TcpListener) -> SocketAddr {
    // A bound TCP listener always has a local address.
    listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_end_point_on_port_0_publishes_the_bound_port_and_others_stay_verbatim() {
        let target = |end_point: &str| RegistrationTarget {
            hosts: vec!["127.0.0.1:2379".into()],
            key: "dtmservice".into(),
            end_point: end_point.into(),
        };
        assert_eq!(with_bound_port(target("127.0.0.1:0"), 40123).end_point, "127.0.0.1:40123");
        assert_eq!(with_bound_port(target("dtm:36790"), 40123).end_point, "dtm:36790");
        assert_eq!(with_bound_port(target("dtm:10"), 40123).end_point, "dtm:10");
    }
}
