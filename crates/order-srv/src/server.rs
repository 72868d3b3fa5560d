//! The gRPC face of the service (go-zero's `internal/server/orderServer.go`):
//! one method → one logic function, wrapped by the branch frame. The
//! request's extensions carry the service's `Metrics` (put there by the
//! gRPC server's metrics middleware), where the frame counts the barrier's
//! outcome.

use proto::order::{CREATE_PATH, CREATE_ROLLBACK_PATH, CreateReq, CreateResp, Order};
use service_kit::branch::run_branch;
use sqlx::Pool;
use tonic::{Request, Response, Status};

use crate::logic;
use crate::model::OrderModel;

/// `pb.order` on the business database of engine `DB`.
#[derive(Debug)]
pub struct OrderService<DB: OrderModel> {
    /// The business pool; each branch call takes one transaction from it.
    pool: Pool<DB>,
}

impl<DB: OrderModel> OrderService<DB> {
    /// A service on `pool` (tables already created).
    pub fn new(pool: Pool<DB>) -> OrderService<DB> {
        OrderService { pool }
    }
}

#[tonic::async_trait]
impl<DB: OrderModel> Order for OrderService<DB> {
    async fn create(&self, request: Request<CreateReq>) -> Result<Response<CreateResp>, Status> {
        let (metadata, extensions, req) = request.into_parts();
        run_branch(CREATE_PATH, &metadata, extensions.get(), |barrier| {
            logic::create(&self.pool, barrier, &req)
        })
        .await?;
        Ok(Response::new(CreateResp {}))
    }

    async fn create_rollback(&self, request: Request<CreateReq>) -> Result<Response<CreateResp>, Status> {
        let (metadata, extensions, req) = request.into_parts();
        run_branch(CREATE_ROLLBACK_PATH, &metadata, extensions.get(), |barrier| {
            logic::create_rollback(&self.pool, barrier, &req)
        })
        .await?;
        Ok(Response::new(CreateResp {}))
    }
}
