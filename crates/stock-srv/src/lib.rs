//! `stock-srv`: the demo's stock service, a gRPC server on `:9002`.
//!
//! It owns the `stock` table (seeded with goods 1 = 100 units) and offers
//! the saga's second branch:
//!
//! | gRPC path | saga op | effect (inside dtm's barrier) |
//! |---|---|---|
//! | `/pb.stock/deduct` | action | `num = num - ?` if enough is left, else `Aborted("FAILURE")` |
//! | `/pb.stock/deductRollback` | compensate | `num = num + ?`, once, and only if the deduction committed |
//!
//! The layout follows what goctl generates:
//!
//! | here | go-zero |
//! |---|---|
//! | `main.rs` | `stock.go` (`-f etc/stock.yaml`) |
//! | [`Config`] | `internal/config/config.go` (`zrpc.RpcServerConf` + `DB`) |
//! | [`server`] | `internal/server/stockServer.go` |
//! | [`logic`] | `internal/logic/deductLogic.go`, `deductRollbackLogic.go` |
//! | [`model`] | `internal/model/stockmodel.go` |
//! | [`build`] | `internal/svc/serviceContext.go` + `zrpc.MustNewServer` |
//!
//! Start-up and shutdown are `order-srv`'s, from `service-kit`: database and
//! tables prepared, `ListenOn` bound, `stock.rpc/<lease>` registered in etcd
//! while serving, deregistered before draining.
//!
//! **HTTP flavour.** With `HttpListenOn` set, the same branches are also
//! served as dtm HTTP branches ([`http`]: `POST /api/stock/deduct`, `/api/stock/deductRollback`, JSON bodies,
//! dtm's query parameters), so a saga may use `http://` branch URLs. The
//! HTTP listener is not registered in etcd; it stops after the gRPC server
//! has deregistered and drained.

pub mod http;
pub mod logic;
pub mod model;
pub mod server;

use barrier::BarrierDatabase;
use proto::stock::StockServer;
use service_kit::http::HttpServeLimits;
use service_kit::http_branch::HttpBranchServer;
use service_kit::{BusinessDb, GrpcServer, GrpcSettings, ServiceServer, StartError};
use sqlx::Pool;

use crate::model::StockModel;
use crate::server::StockService;

/// The YAML of `etc/stock-srv.yaml`: go-zero's `RpcServerConf` plus `DB`.
pub type Config = service_kit::RpcServerConf;

/// A bound, ready-to-run stock service: `local_addr()`,
/// `run_until_stopped(shutdown)`.
pub type Server = ServiceServer;

/// Builds the service from its configuration: database ready (the seed row
/// inserted only if missing), port bound (port 0 allowed), not yet serving.
pub async fn build(config: &Config) -> Result<Server, StartError> {
    let settings = GrpcSettings::from_conf(config);
    let max_msg_size = settings.max_msg_size;
    let db = BusinessDb::connect(&config.db, config.db_acquire_timeout()).await?;
    let grpc = GrpcServer::bind(&config.listen_on, settings).await?.register_in(config.etcd.clone());
    let timeout = config.call_timeout();
    let (grpc, routes) = match db {
        BusinessDb::MySql(pool) => {
            (grpc.add_service(service(pool.clone(), max_msg_size).await?), http::router(pool, timeout))
        }
        BusinessDb::Postgres(pool) => {
            (grpc.add_service(service(pool.clone(), max_msg_size).await?), http::router(pool, timeout))
        }
        BusinessDb::Sqlite(pool) => {
            (grpc.add_service(service(pool.clone(), max_msg_size).await?), http::router(pool, timeout))
        }
    };
    let server = ServiceServer::grpc(grpc);
    Ok(match config.http_listen_on() {
        Some(listen_on) => {
            let limits = HttpServeLimits { drain_timeout: timeout, ..HttpServeLimits::default() };
            server.with_http(HttpBranchServer::bind(listen_on, routes, max_msg_size, limits).await?)
        }
        None => server,
    })
}

/// The tonic service for one engine, after creating (and seeding) its table.
async fn service<DB: StockModel + BarrierDatabase>(
    pool: Pool<DB>,
    max_msg_size: usize,
) -> Result<StockServer<StockService<DB>>, sqlx::Error> {
    barrier::schema::ensure_stock_table(&pool).await?;
    Ok(StockServer::new(StockService::new(pool)).max_decoding_message_size(max_msg_size))
}
