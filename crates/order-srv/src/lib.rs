//! `order-srv`: the demo's order service, a gRPC server on `:9001`.
//!
//! It owns the `order` table and offers the saga's first branch:
//!
//! | gRPC path | saga op | effect (inside dtm's barrier) |
//! |---|---|---|
//! | `/pb.order/create` | action | insert `order(user_id, goods_id, num, row_state=0, gid)` |
//! | `/pb.order/createRollback` | compensate | `row_state = -1` for the order of *this* gid |
//!
//! The layout follows what goctl generates, so a go-zero user finds each
//! file where they expect it:
//!
//! | here | go-zero |
//! |---|---|
//! | `main.rs` | `order.go` (`-f etc/order.yaml`) |
//! | [`Config`] | `internal/config/config.go` (`zrpc.RpcServerConf` + `DB`) |
//! | [`server`] | `internal/server/orderServer.go` |
//! | [`logic`] | `internal/logic/createLogic.go`, `createRollbackLogic.go` |
//! | [`model`] | `internal/model/ordermodel.go` |
//! | [`schema`] | the `order` table's DDL (goctl's `.sql` next to the model) |
//! | [`build`] | `internal/svc/serviceContext.go` + `zrpc.MustNewServer` |
//!
//! Start-up ([`build`]): connect the business database (MySQL, PostgreSQL
//! or SQLite from `DB.DataSource`), create the `order` and barrier tables
//! if missing, bind `ListenOn`, add health (and reflection in `dev`/`test`).
//! [`Server::run_until_stopped`] then registers `order.rpc/<lease>` in etcd
//! (if `Etcd` is configured), serves, and on shutdown deregisters before
//! draining.
//!
//! **HTTP flavour.** With `HttpListenOn` set, the same branches are also
//! served as dtm HTTP branches ([`http`]: `POST /api/order/create`, `/api/order/createRollback`, JSON bodies,
//! dtm's query parameters), so a saga may use `http://` branch URLs. The
//! HTTP listener is not registered in etcd; it stops after the gRPC server
//! has deregistered and drained.

pub mod http;
pub mod logic;
pub mod model;
pub mod schema;
pub mod server;

use proto::order::OrderServer;
use service_kit::{BranchParts, GrpcServer, ServiceServer, StartError};
use sqlx::Pool;

use crate::model::OrderModel;
use crate::server::OrderService;

/// The YAML of `etc/order-srv.yaml`: go-zero's `RpcServerConf` plus `DB`.
pub type Config = service_kit::RpcServerConf;

/// A bound, ready-to-run order service: `local_addr()`,
/// `run_until_stopped(shutdown)`.
pub type Server = ServiceServer;

/// Builds the service from its configuration: database ready, port bound
/// (port 0 allowed), not yet serving. The shared steps are
/// [`service_kit::build_branch_server`]; this service adds [`OrderParts`].
pub async fn build(config: &Config) -> Result<Server, StartError> {
    service_kit::build_branch_server::<OrderParts>(config).await
}

/// This service's tonic service and HTTP routes, on any supported engine.
pub struct OrderParts;

impl<DB: OrderModel + schema::OrderDdl> BranchParts<DB> for OrderParts {
    async fn prepare(pool: &Pool<DB>) -> Result<(), sqlx::Error> {
        schema::ensure_order_table(pool).await
    }

    fn add_grpc(server: GrpcServer, pool: Pool<DB>, max_msg_size: usize) -> GrpcServer {
        server.add_service(OrderServer::new(OrderService::new(pool)).max_decoding_message_size(max_msg_size))
    }

    fn http_routes(pool: Pool<DB>, timeout: std::time::Duration) -> axum::Router {
        http::router(pool, timeout)
    }

    fn admin_queries() -> Vec<service_kit::admin::AdminQuery> {
        vec![service_kit::admin::AdminQuery { name: "order", sql: <DB as OrderModel>::ADMIN_SQL }]
    }
}
