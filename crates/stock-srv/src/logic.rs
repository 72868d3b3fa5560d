//! The two branch operations (go-zero's `internal/logic/deductLogic.go` and
//! `deductRollbackLogic.go`), as the article describes them, on the barrier.

use barrier::{BranchBarrier, BranchError, Outcome};
use proto::stock::DeductReq;
use service_kit::branch::{quantity, require_positive};
use service_kit::trace::sql_span;
use sqlx::Pool;
use tracing::Instrument;

use crate::model::StockModel;

/// Checks a `DeductReq` and returns the quantity as stored.
fn validate(req: &DeductReq) -> Result<i32, BranchError> {
    require_positive("goodsId", req.goods_id)?;
    quantity("num", req.num)
}

/// Saga action `/pb.stock/deduct`: subtract `num` units, inside the barrier.
///
/// Not enough stock, or no stock row for the goods, is the saga's business
/// failure: `BranchError::failure` → `Aborted("FAILURE")`, and dtm rolls the
/// saga back. The barrier transaction rolls back too, barrier row included,
/// so the later `deductRollback` is a null compensation. Every other error
/// (database down, deadlock) is retryable and never `Aborted`: the Go demo's
/// note "数据库不会错误不需要dtm回滚,就让他一直重试".
pub async fn deduct<DB: StockModel>(
    pool: &Pool<DB>,
    mut barrier: BranchBarrier,
    req: &DeductReq,
) -> Result<Outcome<()>, BranchError> {
    let num = validate(req)?;
    let goods_id = req.goods_id;
    barrier
        .call_with_pool(pool, async |conn| {
            if DB::deduct(&mut *conn, goods_id, num).instrument(sql_span("UPDATE", "stock")).await? == 1 {
                tracing::info!(goods_id, num, "stock deducted");
                return Ok(());
            }
            let reason = match DB::find_num(conn, goods_id).instrument(sql_span("SELECT", "stock")).await? {
                None => format!("unknown goods {goods_id}"),
                Some(left) => format!("insufficient stock for goods {goods_id}: {left} left, {num} wanted"),
            };
            Err(BranchError::failure(reason))
        })
        .await
}

/// Saga compensation `/pb.stock/deductRollback`: add back the `num` units
/// this saga deducted, inside the barrier.
///
/// The barrier guarantees it happens at most once per saga, and not at all
/// when `deduct` never committed (null compensation: the failed deduction
/// rolled back its barrier row). A compensation must not fail, so it has no
/// business failure; database errors are retried.
pub async fn deduct_rollback<DB: StockModel>(
    pool: &Pool<DB>,
    mut barrier: BranchBarrier,
    req: &DeductReq,
) -> Result<Outcome<()>, BranchError> {
    let num = validate(req)?;
    let goods_id = req.goods_id;
    barrier
        .call_with_pool(pool, async |conn| {
            let restored = DB::add(conn, goods_id, num).instrument(sql_span("UPDATE", "stock")).await?;
            tracing::info!(goods_id, num, restored, "stock restored");
            Ok(())
        })
        .await
}
