//! The gRPC face of the service (go-zero's `internal/server/stockServer.go`):
//! one method → one logic function, wrapped by the branch frame. The
//! request's extensions carry the service's `Metrics` (put there by the
//! gRPC server's metrics middleware), where the frame counts the barrier's
//! outcome.

use proto::stock::{DEDUCT_PATH, DEDUCT_ROLLBACK_PATH, DeductReq, DeductResp, Stock};
use service_kit::branch::run_branch;
use sqlx::Pool;
use tonic::{Request, Response, Status};

use crate::logic;
use crate::model::StockModel;

/// `pb.stock` on the business database of engine `DB`.
#[derive(Debug)]
pub struct StockService<DB: StockModel> {
    /// The business pool; each branch call takes one transaction from it.
    pool: Pool<DB>,
}

impl<DB: StockModel> StockService<DB> {
    /// A service on `pool` (tables already created).
    pub fn new(pool: Pool<DB>) -> StockService<DB> {
        StockService { pool }
    }
}

#[tonic::async_trait]
impl<DB: StockModel> Stock for StockService<DB> {
    async fn deduct(&self, request: Request<DeductReq>) -> Result<Response<DeductResp>, Status> {
        let (metadata, extensions, req) = request.into_parts();
        run_branch(DEDUCT_PATH, &metadata, extensions.get(), |barrier| {
            logic::deduct(&self.pool, barrier, &req)
        })
        .await?;
        Ok(Response::new(DeductResp {}))
    }

    async fn deduct_rollback(&self, request: Request<DeductReq>) -> Result<Response<DeductResp>, Status> {
        let (metadata, extensions, req) = request.into_parts();
        run_branch(DEDUCT_ROLLBACK_PATH, &metadata, extensions.get(), |barrier| {
            logic::deduct_rollback(&self.pool, barrier, &req)
        })
        .await?;
        Ok(Response::new(DeductResp {}))
    }
}
