//! `quickorder up`: the system on this machine, no external server needed.
//!
//! Starts the [`embedded`](crate::embedded) system on the usual ports,
//! prints what listens where and the `curl` lines to try, then the
//! [readiness line](service_kit::ready) `ready quickorder pid=… api=…` (port
//! flags may be 0: the line tells the ports chosen), and runs until
//! Ctrl-C (or SIGTERM). The SQLite files stay in the data folder, so the
//! stock sold and any saga still in flight survive a restart: the
//! coordinator picks unfinished sagas up again when it starts.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::embedded::{Addrs, Databases, Options, Ports, System};

/// `quickorder up` options.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Folder for the SQLite files (coordinator.db, order.db, stock.db).
    #[arg(long, default_value = "quickorder-data", env = "QUICKORDER_DATA")]
    pub data_dir: PathBuf,
    /// Delete the databases in the data folder first (stock back to 100).
    #[arg(long)]
    pub reset: bool,
    /// Interface to listen on. Keep loopback unless other machines must
    /// reach it: the coordinator calls whatever URLs a saga names.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// order-api's HTTP port.
    #[arg(long, default_value_t = Ports::USUAL.api)]
    pub api_port: u16,
    /// The coordinator's HTTP API port.
    #[arg(long, default_value_t = Ports::USUAL.coordinator_http)]
    pub coordinator_http_port: u16,
    /// The coordinator's gRPC API port.
    #[arg(long, default_value_t = Ports::USUAL.coordinator_grpc)]
    pub coordinator_grpc_port: u16,
    /// order-srv's gRPC port.
    #[arg(long, default_value_t = Ports::USUAL.order_srv)]
    pub order_port: u16,
    /// stock-srv's gRPC port.
    #[arg(long, default_value_t = Ports::USUAL.stock_srv)]
    pub stock_port: u16,
    /// Use this MySQL/MariaDB server instead of SQLite, e.g.
    /// `mysql://root:pw@127.0.0.1:3306` (databases dtm, dtm-gozero-order,
    /// dtm-gozero-stock and dtm_barrier are created on it).
    #[arg(long, value_name = "URL", env = "QUICKORDER_MYSQL")]
    pub mysql: Option<String>,
    /// Register and resolve the services through etcd (go-zero's format),
    /// e.g. `127.0.0.1:2379`, instead of direct addresses.
    #[arg(long, value_name = "HOSTS", env = "QUICKORDER_ETCD")]
    pub etcd: Option<String>,
    /// Require this bearer token on the coordinator's APIs (order-api sends it).
    #[arg(long, value_name = "TOKEN", env = "QUICKORDER_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
}

impl UpArgs {
    fn options(&self) -> Options {
        Options {
            host: self.host,
            ports: Ports {
                api: self.api_port,
                coordinator_http: self.coordinator_http_port,
                coordinator_grpc: self.coordinator_grpc_port,
                order_srv: self.order_port,
                stock_srv: self.stock_port,
            },
            databases: match &self.mysql {
                Some(url) => Databases::MySql(url.clone()),
                None => Databases::Sqlite(self.data_dir.clone()),
            },
            etcd: self.etcd.clone(),
            retry_interval: None,
            auth_token: self.auth_token.clone(),
        }
    }
}

/// Runs `quickorder up` until `shutdown` resolves.
pub async fn run(args: UpArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    if args.reset {
        reset(&args.data_dir)?;
    }
    let options = args.options();
    let system = System::start(&options).await?;
    let where_ = match &options.databases {
        Databases::Sqlite(dir) => format!("SQLite files in {}", dir.display()),
        Databases::MySql(_) => "MySQL".to_string(),
    };
    let discovery = if options.etcd.is_some() { "etcd" } else { "direct addresses" };
    let mut out = std::io::stdout().lock();
    write!(out, "{}", banner(&system.addrs, &where_, discovery))?;
    out.flush()?;
    drop(out);
    // For scripts and tests: one machine-readable line once every server
    // serves (and is registered, with etcd), naming the ports it got.
    let addrs = &system.addrs;
    service_kit::ready::announce(
        "quickorder",
        &[
            ("api", addrs.api),
            ("coordinator-http", addrs.coordinator_http),
            ("coordinator-grpc", addrs.coordinator_grpc),
            ("order-srv", addrs.order_srv),
            ("stock-srv", addrs.stock_srv),
        ],
    );
    let out = std::io::stdout().lock();
    drop(out);
    system.run_until_stopped(shutdown).await?;
    println!("quickorder stopped cleanly");
    Ok(())
}

/// What `up` prints once everything listens.
fn banner(addrs: &Addrs, storage: &str, discovery: &str) -> String {
    let api = format!("http://{}", addrs.api);
    let json = "-H 'Content-Type: application/json'";
    format!(
        "quickorder is up: the quick-order saga on {storage}, {discovery}\n\
         \n  order-api    {api}  POST /order/quickCreate, GET /order/status/{{gid}}, GET /healthz\
         \n  coordinator  {grpc} (gRPC dtmgimp.Dtm), http://{http}/api/dtmsvr\
         \n  console      http://{http}/admin/  (every transaction, its branch calls and its rows in both services)\
         \n  order-srv    {order} (gRPC /pb.order/create, /pb.order/createRollback)\
         \n  stock-srv    {stock} (gRPC /pb.stock/deduct, /pb.stock/deductRollback)\n\
         \nTry it (goods 1 starts with 100 units):\
         \n  curl -s -X POST {api}/order/quickCreate {json} -d '{{\"userId\":1,\"goodsId\":1,\"num\":1}}'\
         \n  curl -s -X POST {api}/order/quickCreate {json} -d '{{\"userId\":1,\"goodsId\":1,\"num\":500}}'   # more than in stock: compensated\
         \n  curl -s {api}/order/status/<gid from an answer above>\n\
         \nCtrl-C stops; the data stays (--reset starts over).\n",
        grpc = addrs.coordinator_grpc,
        http = addrs.coordinator_http,
        order = addrs.order_srv,
        stock = addrs.stock_srv,
    )
}

/// Deletes the three SQLite databases (and their WAL files) of a data
/// folder, nothing else: the folder may hold other things.
fn reset(dir: &Path) -> anyhow::Result<()> {
    for db in ["coordinator.db", "order.db", "stock.db"] {
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let path = dir.join(format!("{db}{suffix}"));
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(err).with_context(|| format!("cannot delete {}", path.display())),
            }
        }
    }
    Ok(())
}
