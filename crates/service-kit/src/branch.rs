//! The frame around every saga branch handler of `order-srv` and `stock-srv`.
//!
//! Each handler does the same four things around its business SQL, so they
//! live here once:
//!
//! 1. read dtm's gRPC metadata (`dtm-gid`, `dtm-trans_type`,
//!    `dtm-branch_id`, `dtm-op`) into a [`BranchBarrier`]; missing or
//!    malformed metadata is the caller's mistake → `InvalidArgument`;
//! 2. open a span carrying the gid, branch and op, so every log line of the
//!    call (the barrier's included) says which saga it belongs to; it is the
//!    server span of the call, a child of the coordinator's branch-call span
//!    when the call carries a `traceparent` ([`crate::trace`]);
//! 3. run the handler, which validates its request and calls
//!    [`BranchBarrier::call_with_pool`];
//! 4. log the outcome, count it in the service's [`Metrics`]
//!    (`barrier_outcomes_total`: applied, duplicate, null compensation, …)
//!    and map it onto dtm's codes through [`BranchError::into_status`]:
//!    success → OK, business failure → `Aborted("FAILURE")` (the saga
//!    rolls back), anything else → a retryable code (database down ⇒
//!    `Unavailable`, dtm retries).

use std::future::Future;

use barrier::{BranchBarrier, BranchError, Outcome};
use tonic::metadata::MetadataMap;
use tracing::Instrument;

use crate::metrics::{BarrierOutcome, Metrics};

/// Runs one branch call (see the module docs). `method` is the gRPC path,
/// e.g. `/pb.stock/deduct`, for the logs. `metrics` is the service's, from
/// the request's extensions (`extensions.get()`, put there by
/// [`Metrics::instrument_grpc`]); `None` counts nothing.
pub async fn run_branch<F, Fut, T>(
    method: &'static str,
    metadata: &MetadataMap,
    metrics: Option<&Metrics>,
    handler: F,
) -> Result<(), tonic::Status>
where
    F: FnOnce(BranchBarrier) -> Fut,
    Fut: Future<Output = Result<Outcome<T>, BranchError>>,
{
    let barrier = match BranchBarrier::from_grpc(metadata) {
        Ok(barrier) => barrier,
        Err(err) => {
            tracing::warn!(method, %err, "branch call without valid dtm metadata");
            return Err(tonic::Status::invalid_argument(format!(
                "{method} is a saga branch: dtm metadata (dtm-gid, dtm-trans_type, dtm-branch_id, dtm-op) is required: {err}"
            )));
        }
    };
    let span = tracing::info_span!(
        "branch",
        otel.name = method,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        method,
        gid = %barrier.gid(),
        branch_id = %barrier.branch_id(),
        op = %barrier.op(),
        trace_id = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    crate::trace::continue_from(&span, dtm_protocol::TraceContext::from_metadata(metadata).as_ref());
    let op = barrier.op().as_str();
    let result = async move {
        let result = handler(barrier).await;
        if let Some(metrics) = metrics {
            metrics.record_barrier(op, BarrierOutcome::of(&result));
        }
        match result {
            Ok(Outcome::Ran(_)) => {
                tracing::info!("branch done");
                Ok(())
            }
            Ok(Outcome::Skipped(why)) => {
                tracing::info!(skipped = %why, "branch skipped by the barrier; answering success");
                Ok(())
            }
            Err(err) => Err(err.into_status()),
        }
    }
    .instrument(span.clone())
    .await;
    match &result {
        Ok(()) => crate::trace::record_outcome(&span, "success", true),
        Err(status) if status.code() == tonic::Code::Aborted => {
            crate::trace::record_outcome(&span, "failure", true);
        }
        Err(status) => crate::trace::record_outcome(&span, &format!("{:?}", status.code()), false),
    }
    result
}

/// `value > 0`, or `InvalidArgument` naming `field`.
pub fn require_positive(field: &str, value: i64) -> Result<(), BranchError> {
    if value > 0 {
        Ok(())
    } else {
        Err(BranchError::InvalidArgument(format!("{field} must be positive, got {value}")))
    }
}

/// A quantity (`num`): positive and small enough for the `int` column it
/// is stored in.
pub fn quantity(field: &str, value: i64) -> Result<i32, BranchError> {
    require_positive(field, value)?;
    i32::try_from(value).map_err(|_| {
        BranchError::InvalidArgument(format!("{field} must be at most {}, got {value}", i32::MAX))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        assert!(require_positive("goodsId", 1).is_ok());
        let Err(BranchError::InvalidArgument(message)) = require_positive("goodsId", 0) else { panic!() };
        assert!(message.contains("goodsId"), "{message}");
        assert_eq!(quantity("num", 5).unwrap(), 5);
        assert!(matches!(quantity("num", -1), Err(BranchError::InvalidArgument(_))));
        assert!(matches!(quantity("num", i64::from(i32::MAX) + 1), Err(BranchError::InvalidArgument(_))));
    }

    #[tokio::test]
    async fn missing_metadata_is_invalid_argument_and_the_handler_never_runs() {
        let status = run_branch("/pb.order/create", &MetadataMap::new(), None, |_| async {
            panic!("handler must not run");
            #[allow(unreachable_code)]
            Ok::<Outcome<()>, BranchError>(Outcome::Ran(()))
        })
        .await
        .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("dtm-gid"), "{}", status.message());
    }

    #[tokio::test]
    async fn failures_become_aborted_and_database_errors_retryable() {
        let mut metadata = MetadataMap::new();
        for (key, value) in
            [("dtm-gid", "g1"), ("dtm-trans_type", "saga"), ("dtm-branch_id", "01"), ("dtm-op", "action")]
        {
            metadata.insert(key, value.parse().unwrap());
        }
        let metrics = Metrics::new();
        let status = run_branch("/x", &metadata, Some(&metrics), |barrier| async move {
            assert_eq!(barrier.gid().as_str(), "g1");
            Err::<Outcome<()>, _>(BranchError::failure("no stock"))
        })
        .await
        .unwrap_err();
        assert_eq!((status.code(), status.message()), (tonic::Code::Aborted, "FAILURE"));

        let status = run_branch("/x", &metadata, Some(&metrics), |_| async {
            Err::<Outcome<()>, _>(BranchError::from(sqlx::Error::PoolTimedOut))
        })
        .await
        .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unavailable);
        let text = metrics.encode();
        for counted in [
            r#"barrier_outcomes_total{op="action",outcome="failure"} 1"#,
            r#"barrier_outcomes_total{op="action",outcome="error"} 1"#,
        ] {
            assert!(text.contains(counted), "missing {counted:?} in\n{text}");
        }
    }
}
