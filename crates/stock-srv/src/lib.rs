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
//! | [`schema`] | the `stock` table's DDL and seed (goctl's `.sql` next to the model) |
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
pub mod schema;
pub mod server;

use proto::stock::StockServer;
use service_kit::{BranchParts, GrpcServer, ServiceServer, StartError};
use sqlx::Pool;

use crate::model::StockModel;
use crate::server::StockService;

/// The YAML of `etc/stock-srv.yaml`: go-zero's `RpcServerConf` plus `DB`.
pub type Config = service_kit::RpcServerConf;

/// A bound, ready-to-run stock service: `local_addr()`,
/// `run_until_stopped(shutdown)`.
pub type Server = ServiceServer;

/// Builds the service from its configuration: database ready, port bound
/// (port 0 allowed), not yet serving. The shared steps are
/// [`service_kit::build_branch_server`]; this service adds [`StockParts`].
pub async fn build(config: &Config) -> Result<Server, StartError> {
    service_kit::build_branch_server::<StockParts>(config).await
}

/// This service's tonic service and HTTP routes, on any supported engine.
pub struct StockParts;

impl<DB: StockModel + schema::StockDdl> BranchParts<DB> for StockParts {
    async fn prepare(pool: &Pool<DB>) -> Result<(), sqlx::Error> {
        schema::ensure_stock_table(pool).await
    }

    fn add_grpc(server: GrpcServer, pool: Pool<DB>, max_msg_size: usize) -> GrpcServer {
        server.add_service(StockServer::new(StockService::new(pool)).max_decoding_message_size(max_msg_size))
    }

    fn http_routes(pool: Pool<DB>, timeout: std::time::Duration) -> axum::Router {
        http::router(pool, timeout)
    }

    /// Stock rows carry no gid (a deduction is `num = num - n`): the admin
    /// endpoint shows the goods as they stand, the first 20, beside the
    /// barrier rows that say which branch of the gid ran. `?` (the gid) is
    /// bound and unused, as the endpoint binds it to every query.
    fn admin_queries() -> Vec<service_kit::admin::AdminQuery> {
        vec![service_kit::admin::AdminQuery {
            name: "stock (now, first 20 goods)",
            sql: "select goods_id, num from stock where ? <> '' order by goods_id limit 20",
        }]
    }
}
