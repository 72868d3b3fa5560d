//! The four servers of the quick-order saga in one process.
//!
//! [`System::start`] builds them from the very `etc/*.yaml` files the
//! separate binaries use ([`service_kit::shipped`]), filling their
//! `${VAR}`s from an [`Options`]-derived table instead of the process
//! environment:
//!
//! ```text
//!  order-api :8889 ──gRPC──▶ coordinator :36790 ──gRPC──▶ order-srv :9001  (order.db)
//!                                │ (coordinator.db)   └──▶ stock-srv :9002  (stock.db)
//! ```
//!
//! Two things differ from the distributed deployment, both the way
//! go-zero-looklook's dev mode does it: the services are given direct
//! addresses (`Endpoints`) instead of etcd, and the databases are SQLite
//! files in one data folder. [`Options::etcd`] and [`Databases::MySql`]
//! switch either back.
//!
//! Start order: coordinator, branch services, order-api (each bound before
//! the next is configured, so port 0 works everywhere). Stop order is the
//! reverse of the data flow: order-api stops taking orders, then the
//! coordinator finishes or releases its leased sagas, then the branch
//! services drain. Sagas still running at that point are durable in the
//! coordinator's store and finish after the next start.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use service_kit::shipped;
use sqlx::Connection;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The ports of the four servers. 0 lets the OS pick (tests, `demo`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// order-api's HTTP port (the article's 8889).
    pub api: u16,
    /// The coordinator's HTTP API (dtm's 36789).
    pub coordinator_http: u16,
    /// The coordinator's gRPC API (dtm's 36790).
    pub coordinator_grpc: u16,
    /// order-srv (the article's 9001).
    pub order_srv: u16,
    /// stock-srv (the article's 9002).
    pub stock_srv: u16,
}

impl Ports {
    /// The ports of the article and of dtm.
    pub const USUAL: Ports = Ports {
        api: 8889,
        coordinator_http: 36789,
        coordinator_grpc: 36790,
        order_srv: 9001,
        stock_srv: 9002,
    };
    /// Any free ports.
    pub const ANY: Ports =
        Ports { api: 0, coordinator_http: 0, coordinator_grpc: 0, order_srv: 0, stock_srv: 0 };
}

/// Where the three databases live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Databases {
    /// `coordinator.db`, `order.db` and `stock.db` in this folder (created
    /// if missing; kept between runs).
    Sqlite(PathBuf),
    /// One MySQL/MariaDB server, given as a sqlx URL without a database
    /// (`mysql://root:pw@127.0.0.1:3306`): the databases `dtm`,
    /// `dtm-gozero-order`, `dtm-gozero-stock` and `dtm_barrier` on it.
    MySql(String),
}

/// What to start.
#[derive(Debug, Clone)]
pub struct Options {
    /// The interface every server binds to. Loopback by default: the
    /// coordinator calls whatever URL a saga names, so it must not be
    /// reachable from other machines unless you mean it.
    pub host: IpAddr,
    /// The ports.
    pub ports: Ports,
    /// The databases.
    pub databases: Databases,
    /// etcd hosts (`127.0.0.1:2379,…`): register the services in go-zero's
    /// format and resolve them through etcd, as the distributed deployment
    /// does. `None`: direct addresses.
    pub etcd: Option<String>,
    /// The coordinator's base retry interval in seconds (its lease length
    /// too); the config file's default is dtm's 10.
    pub retry_interval: Option<u64>,
    /// A bearer token the coordinator requires on both APIs (`AuthToken`);
    /// order-api is given it too (`DtmToken`).
    pub auth_token: Option<String>,
}

impl Options {
    /// SQLite in `data_dir`, the usual ports on loopback, no etcd.
    pub fn sqlite(data_dir: impl Into<PathBuf>) -> Options {
        Options {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            ports: Ports::USUAL,
            databases: Databases::Sqlite(data_dir.into()),
            etcd: None,
            retry_interval: None,
            auth_token: None,
        }
    }
}

/// The addresses the servers actually bound.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    /// order-api (HTTP).
    pub api: SocketAddr,
    /// Coordinator, HTTP API.
    pub coordinator_http: SocketAddr,
    /// Coordinator, gRPC API.
    pub coordinator_grpc: SocketAddr,
    /// order-srv (gRPC).
    pub order_srv: SocketAddr,
    /// stock-srv (gRPC).
    pub stock_srv: SocketAddr,
}

/// One running server: how to stop it and how to learn how it ended.
struct Running {
    /// Which server, for messages.
    name: &'static str,
    /// Cancelled to start its graceful shutdown.
    stop: CancellationToken,
    /// Its serving task; resolves when it has shut down (or failed).
    task: JoinHandle<anyhow::Result<()>>,
}

/// The quick-order system, running in this process.
pub struct System {
    /// Where each server listens.
    pub addrs: Addrs,
    /// The order service's database URL (for reading rows in `demo`).
    pub order_db: String,
    /// The stock service's database URL.
    pub stock_db: String,
    /// The servers in stop order: order-api, coordinator, stock-srv, order-srv.
    running: Vec<Running>,
}

/// A `${VAR}` table for the config files.
struct Vars(HashMap<&'static str, String>);

impl Vars {
    fn lookup(&self) -> impl Fn(&str) -> Option<String> + '_ {
        |name| self.0.get(name).cloned()
    }
}

impl System {
    /// Builds and starts the four servers; returns once each of them has
    /// reported itself ready (serving, and registered when etcd is used).
    ///
    /// Each server is bound before the next is configured, and the next is
    /// given the addresses actually bound, so port 0 works everywhere; that
    /// is why the `${VAR}` table grows step by step.
    pub async fn start(options: &Options) -> anyhow::Result<System> {
        let urls = DatabaseUrls::prepare(&options.databases).await?;
        let mut vars = Vars::common(options, &urls);
        // The services first: the coordinator's console is told where
        // their admin endpoints listen.
        let ((order, ready_order), (stock, ready_stock)) =
            build_branch_services(options, &urls, &mut vars).await?;
        let admins = [("order-srv", order.admin_addr()), ("stock-srv", stock.admin_addr())]
            .into_iter()
            .filter_map(|(name, addr)| Some(format!("{name}=http://{}", addr?)))
            .collect::<Vec<_>>()
            .join(",");
        let (coordinator, ready_coordinator) = build_coordinator(options, &vars, admins).await?;
        let (api, ready_api) =
            build_order_api(options, &mut vars, &coordinator, order.local_addr(), stock.local_addr()).await?;
        let system = System {
            addrs: Addrs {
                api: api.local_addr(),
                coordinator_http: coordinator.http_addr(),
                coordinator_grpc: coordinator.grpc_addr(),
                order_srv: order.local_addr(),
                stock_srv: stock.local_addr(),
            },
            order_db: urls.order,
            stock_db: urls.stock,
            running: serve(api, coordinator, stock, order),
        };
        system
            .until_ready([
                ("coordinator", ready_coordinator),
                ("order-srv", ready_order),
                ("stock-srv", ready_stock),
                ("order-api", ready_api),
            ])
            .await
    }

    /// Waits for each server's readiness, in start order. Ready means
    /// serving and registered (with etcd), as each server reports it — not
    /// merely bound.
    async fn until_ready(self, signals: [(&'static str, Ready); 4]) -> anyhow::Result<System> {
        for (name, ready) in signals {
            if ready.await.is_err() {
                // It ended before it was ready; stopping says why.
                let cause = self.stop().await.err().unwrap_or_else(|| anyhow!("{name} stopped by itself"));
                return Err(cause.context(format!("{name} never became ready")));
            }
        }
        Ok(self)
    }

    /// Serves until `shutdown` resolves (or a server fails), then stops
    /// everything gracefully. A server failing is an error.
    pub async fn run_until_stopped(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let failed = futures::future::select_all(self.running.iter_mut().map(|r| Box::pin(&mut r.task)));
        tokio::select! {
            () = shutdown => self.stop().await,
            (result, index, _) = failed => {
                let name = self.running[index].name;
                self.running.remove(index);
                let cause = match result {
                    Ok(Ok(())) => anyhow!("{name} stopped by itself"),
                    Ok(Err(err)) => err.context(format!("{name} failed")),
                    Err(join) => anyhow!("{name} panicked: {join}"),
                };
                // Bring the rest down cleanly before reporting.
                let _ = self.stop().await;
                Err(cause)
            }
        }
    }

    /// Stops the servers one after the other (order-api first), each
    /// gracefully.
    pub async fn stop(self) -> anyhow::Result<()> {
        let mut first_error = None;
        for server in self.running {
            server.stop.cancel();
            let outcome = match server.task.await {
                Ok(result) => result,
                Err(join) => Err(anyhow!("panicked: {join}")),
            };
            if let Err(err) = outcome {
                tracing::error!(server = server.name, "{err:#}");
                first_error.get_or_insert(err.context(format!("{} did not stop cleanly", server.name)));
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// Completed by a server's `on_ready` hook; an error if the server ended first.
type Ready = tokio::sync::oneshot::Receiver<()>;

impl Vars {
    /// The values known before any server is bound: the mode, the
    /// coordinator's address, retry interval and store, the token (the
    /// coordinator's `AUTH_TOKEN`, order-api's `DTM_TOKEN`). Everything not
    /// in the table keeps the default written in the file.
    fn common(options: &Options, urls: &DatabaseUrls) -> Vars {
        let mut vars = Vars(HashMap::new());
        vars.0.insert("MODE", "dev".into());
        vars.0.insert("LISTEN_HOST", options.host.to_string());
        vars.0.insert("HTTP_PORT", options.ports.coordinator_http.to_string());
        vars.0.insert("GRPC_PORT", options.ports.coordinator_grpc.to_string());
        // A learner's first order, trouble or not, shows its branch calls in
        // the console (servers record only troubled transactions by default).
        vars.0.insert("ATTEMPTS_RECORD", "all".into());
        if let Some(seconds) = options.retry_interval {
            vars.0.insert("RETRY_INTERVAL", seconds.to_string());
            vars.0.insert("MAX_RETRY_INTERVAL", (seconds * 6).to_string());
        }
        if let Some(token) = &options.auth_token {
            vars.0.insert("AUTH_TOKEN", token.clone());
            vars.0.insert("DTM_TOKEN", token.clone());
        }
        for (name, value) in &urls.coordinator_store {
            vars.0.insert(name, value.clone());
        }
        vars
    }
}

/// The coordinator, bound: it must be up before anyone submits. It
/// registers in etcd only when etcd is used.
async fn build_coordinator(
    options: &Options,
    vars: &Vars,
    service_admins: String,
) -> anyhow::Result<(coordinator::server::Coordinator, Ready)> {
    let mut config = coordinator::config::Config::from_sources(
        Some((Path::new("etc/coordinator.yaml"), shipped::COORDINATOR.text)),
        vars.lookup(),
    )
    .context("etc/coordinator.yaml")?;
    if let Some(etcd) = &options.etcd {
        // Published as `dtmservice/<lease>`: Go clients find it as
        // `etcd://<hosts>/dtmservice`, as in the article.
        config.micro_service.driver = coordinator::config::GOZERO_DRIVER.into();
        config.micro_service.target = format!("etcd://{etcd}/dtmservice");
    } else {
        // The file registers in etcd by default (the article's setup);
        // direct addresses need no registration.
        config.micro_service = coordinator::config::MicroServiceConfig::default();
    }
    // The console shows each gid's rows in the services' databases.
    config.service_admin_urls = service_admins;
    // With port 0 the coordinator publishes the port it gets.
    config.micro_service.end_point = reachable(options.host, options.ports.coordinator_grpc);
    let (on_ready, ready) = ready_signal();
    let coordinator = coordinator::server::Coordinator::build(config)
        .await
        .context("starting the coordinator")?
        .on_ready(on_ready);
    Ok((coordinator, ready))
}

/// The branch services, bound, each on its own database; without etcd
/// they register nowhere.
async fn build_branch_services(
    options: &Options,
    urls: &DatabaseUrls,
    vars: &mut Vars,
) -> anyhow::Result<((order_srv::Server, Ready), (stock_srv::Server, Ready))> {
    let host = options.host;
    vars.0.insert("ORDER_SRV_LISTEN_ON", SocketAddr::new(host, options.ports.order_srv).to_string());
    vars.0.insert("STOCK_SRV_LISTEN_ON", SocketAddr::new(host, options.ports.stock_srv).to_string());
    vars.0.insert("ORDER_DSN", urls.order.clone());
    vars.0.insert("STOCK_DSN", urls.stock.clone());
    vars.0.insert("ETCD_HOSTS", options.etcd.clone().unwrap_or_default());
    let mut order_config: order_srv::Config = service_kit::config::parse_yaml(
        Path::new("etc/order-srv.yaml"),
        shipped::ORDER_SRV.text,
        vars.lookup(),
    )?;
    let mut stock_config: stock_srv::Config = service_kit::config::parse_yaml(
        Path::new("etc/stock-srv.yaml"),
        shipped::STOCK_SRV.text,
        vars.lookup(),
    )?;
    if options.etcd.is_none() {
        order_config.etcd = None;
        stock_config.etcd = None;
    }
    // The read-only admin endpoints, for the coordinator's console: on
    // loopback whatever `--host` says (only the coordinator, in this
    // process, asks them).
    order_config.admin_listen_on = Some("127.0.0.1:0".into());
    stock_config.admin_listen_on = Some("127.0.0.1:0".into());
    let (order_ready, ready_order) = ready_signal();
    let (stock_ready, ready_stock) = ready_signal();
    let order = order_srv::build(&order_config).await.context("starting order-srv")?.on_ready(order_ready);
    let stock = stock_srv::build(&stock_config).await.context("starting stock-srv")?.on_ready(stock_ready);
    Ok(((order, ready_order), (stock, ready_stock)))
}

/// order-api, bound and pointed at what was just bound: the
/// coordinator (through etcd when it is used) and, without etcd, the
/// branch services' addresses.
async fn build_order_api(
    options: &Options,
    vars: &mut Vars,
    coordinator: &coordinator::server::Coordinator,
    order_addr: SocketAddr,
    stock_addr: SocketAddr,
) -> anyhow::Result<(order_api::Server, Ready)> {
    let host = options.host;
    vars.0.insert("ORDER_API_HOST", host.to_string());
    vars.0.insert("ORDER_API_LISTEN_PORT", options.ports.api.to_string());
    vars.0.insert(
        "DTM_SERVER",
        match &options.etcd {
            Some(etcd) => format!("etcd://{etcd}/dtmservice"),
            None => reachable(host, coordinator.grpc_addr().port()),
        },
    );
    vars.0.insert(
        "DTM_HTTP_SERVER",
        format!("http://{}/api/dtmsvr", reachable(host, coordinator.http_addr().port())),
    );
    let mut config: order_api::Config = service_kit::config::parse_yaml(
        Path::new("etc/order-api.yaml"),
        shipped::ORDER_API.text,
        vars.lookup(),
    )?;
    if options.etcd.is_none() {
        direct(&mut config.order_rpc_conf, reachable(host, order_addr.port()));
        direct(&mut config.stock_rpc_conf, reachable(host, stock_addr.port()));
    }
    let (on_ready, ready) = ready_signal();
    let api = order_api::build(config).await.context("starting order-api")?.on_ready(on_ready);
    Ok((api, ready))
}

/// Spawns the four bound servers, and returns them in stop order:
/// order-api first, so no new order arrives while the rest shut down.
fn serve(
    api: order_api::Server,
    coordinator: coordinator::server::Coordinator,
    stock: stock_srv::Server,
    order: order_srv::Server,
) -> Vec<Running> {
    vec![
        spawn("order-api", |stop| async move {
            api.run_until_stopped(stop.cancelled_owned()).await.map_err(anyhow::Error::from)
        }),
        spawn("coordinator", |stop| async move {
            coordinator.run_until_stopped(stop.cancelled_owned()).await.map_err(anyhow::Error::from)
        }),
        spawn("stock-srv", |stop| async move {
            stock.run_until_stopped(stop.cancelled_owned()).await.map_err(anyhow::Error::from)
        }),
        spawn("order-srv", |stop| async move {
            order.run_until_stopped(stop.cancelled_owned()).await.map_err(anyhow::Error::from)
        }),
    ]
}

/// A hook for a server's `on_ready` and the receiver it completes.
fn ready_signal() -> (impl FnOnce() + Send + 'static, Ready) {
    let (sender, receiver) = tokio::sync::oneshot::channel();
    (
        move || {
            let _ = sender.send(());
        },
        receiver,
    )
}

fn spawn<F, Fut>(name: &'static str, serve: F) -> Running
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let stop = CancellationToken::new();
    let task = tokio::spawn(serve(stop.clone()));
    Running { name, stop, task }
}

/// An address other processes on this machine can dial: a wildcard bind
/// is reached through loopback.
fn reachable(host: IpAddr, port: u16) -> String {
    let host = if host.is_unspecified() { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { host };
    SocketAddr::new(host, port).to_string()
}

/// Turns a go-zero `RpcClientConf` into `Endpoints: [addr]` (no discovery),
/// keeping its timeouts.
fn direct(conf: &mut discovery::RpcClientConf, addr: String) {
    conf.etcd = None;
    conf.target = None;
    conf.endpoints = vec![addr];
}

/// The URLs of the three databases, created as needed.
struct DatabaseUrls {
    /// order-srv's `DB.DataSource`.
    order: String,
    /// stock-srv's `DB.DataSource`.
    stock: String,
    /// The coordinator's `Store` block, as `STORE_*` variables.
    coordinator_store: Vec<(&'static str, String)>,
}

impl DatabaseUrls {
    async fn prepare(databases: &Databases) -> anyhow::Result<DatabaseUrls> {
        match databases {
            Databases::Sqlite(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create the data folder {}", dir.display()))?;
                let file = |name: &str| dir.join(name).display().to_string();
                Ok(DatabaseUrls {
                    order: format!("sqlite://{}?mode=rwc", file("order.db")),
                    stock: format!("sqlite://{}?mode=rwc", file("stock.db")),
                    coordinator_store: vec![
                        ("STORE_DRIVER", "sqlite".into()),
                        ("STORE_DB", file("coordinator.db")),
                    ],
                })
            }
            Databases::MySql(server) => {
                let url = url::Url::parse(server).with_context(|| format!("--mysql {server}: not a URL"))?;
                if url.scheme() != "mysql" || !matches!(url.path(), "" | "/") {
                    anyhow::bail!(
                        "--mysql wants a server URL without a database, e.g. mysql://root@127.0.0.1:3306"
                    );
                }
                // The branch services create their own databases; the
                // coordinator expects an administrator to have made its.
                let mut conn = sqlx::MySqlConnection::connect(server)
                    .await
                    .with_context(|| format!("cannot connect to MySQL at {}", redact(&url)))?;
                sqlx::query("CREATE DATABASE IF NOT EXISTS dtm").execute(&mut conn).await?;
                let base = server.trim_end_matches('/');
                let password = url.password().unwrap_or_default();
                let password = percent_decode(password);
                Ok(DatabaseUrls {
                    order: format!("{base}/dtm-gozero-order"),
                    stock: format!("{base}/dtm-gozero-stock"),
                    coordinator_store: vec![
                        ("STORE_DRIVER", "mysql".into()),
                        ("STORE_HOST", url.host_str().unwrap_or("127.0.0.1").to_string()),
                        ("STORE_PORT", url.port().unwrap_or(3306).to_string()),
                        ("STORE_USER", percent_decode(url.username())),
                        ("STORE_PASSWORD", password),
                        ("STORE_DB", "dtm".into()),
                    ],
                })
            }
        }
    }
}

fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text).decode_utf8_lossy().into_owned()
}

fn redact(url: &url::Url) -> String {
    let mut url = url.clone();
    if url.password().is_some() {
        let _ = url.set_password(Some("***"));
    }
    url.to_string()
}
