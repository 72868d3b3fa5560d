//! The two branch operations (go-zero's `internal/logic/createLogic.go` and
//! `createRollbackLogic.go`), as the article describes them, on the barrier.

use barrier::{BranchBarrier, BranchError, Outcome};
use proto::order::CreateReq;
use service_kit::branch::{quantity, require_positive};
use service_kit::trace::sql_span;
use sqlx::Pool;
use tracing::Instrument;

use crate::model::{NewOrder, OrderModel};

/// Checks a `CreateReq` and returns the quantity as stored.
fn validate(req: &CreateReq) -> Result<i32, BranchError> {
    require_positive("userId", req.user_id)?;
    require_positive("goodsId", req.goods_id)?;
    quantity("num", req.num)
}

/// Saga action `/pb.order/create`: insert the order (`row_state` 0) with
/// this saga's gid, inside the barrier.
///
/// A database error is retryable (the coordinator calls again; the barrier
/// makes the retry harmless). Creating an order has no business failure:
/// it never answers `Aborted`.
pub async fn create<DB: OrderModel>(
    pool: &Pool<DB>,
    mut barrier: BranchBarrier,
    req: &CreateReq,
) -> Result<Outcome<()>, BranchError> {
    let num = validate(req)?;
    let gid = barrier.gid().as_str().to_string();
    let order = NewOrder { user_id: req.user_id, goods_id: req.goods_id, num, gid: &gid };
    barrier
        .call_with_pool(pool, async |conn| {
            DB::insert(conn, &order).instrument(sql_span("INSERT", "order")).await?;
            tracing::info!(user_id = order.user_id, goods_id = order.goods_id, num, "order created");
            Ok(())
        })
        .await
}

/// Saga compensation `/pb.order/createRollback`: mark the order of *this*
/// saga (by gid) as rolled back (`row_state` -1), inside the barrier.
///
/// If `create` never committed, the barrier skips this (null compensation)
/// and nothing is touched; if this runs twice, the second is skipped.
pub async fn create_rollback<DB: OrderModel>(
    pool: &Pool<DB>,
    mut barrier: BranchBarrier,
    req: &CreateReq,
) -> Result<Outcome<()>, BranchError> {
    validate(req)?;
    let gid = barrier.gid().as_str().to_string();
    barrier
        .call_with_pool(pool, async |conn| {
            let cancelled = DB::cancel_by_gid(conn, &gid).instrument(sql_span("UPDATE", "order")).await?;
            tracing::info!(cancelled, "order rolled back");
            Ok(())
        })
        .await
}
