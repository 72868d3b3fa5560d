//! dtm-style HTTP branches next to a service's gRPC branches.
//!
//! dtm calls an HTTP branch as `POST <url>?gid=…&trans_type=…&branch_id=…&op=…`
//! with the payload as a JSON body, and reads the answer by status code:
//!
//! | answer | status | body |
//! |---|---|---|
//! | success (also a barrier skip) | 200 | `{"dtm_result":"SUCCESS"}` |
//! | business failure (the saga rolls back) | 409 | `{"dtm_result":"FAILURE","message":…}` |
//! | not finished | 425 | `{"dtm_result":"ONGOING",…}` |
//! | malformed request (missing dtm parameter, bad JSON) | 400 | `{"message":…}` |
//! | anything else (database down, timeout) | 503 | `{"message":…}`: dtm retries |
//!
//! [`run_http_branch`] is the HTTP twin of [`crate::branch::run_branch`]:
//! query → [`BranchBarrier`], a span with the gid, the handler, the answer.
//! [`HttpBranchServer`] binds `HttpListenOn` and serves an axum router of
//! such handlers through [`crate::http::serve`] (connection cap, header
//! timeout, bounded drain); [`crate::ServiceServer`] runs it beside the gRPC
//! server. HTTP branches are not registered in etcd: dtm reaches them by URL.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use barrier::{BranchBarrier, BranchError, Outcome};
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::ServeError;
use crate::http::HttpServeLimits;
use crate::metrics::{BarrierOutcome, Metrics};

/// The body of a 200 answer (dtm's older SDKs look for `SUCCESS`).
pub const SUCCESS_BODY: &str = r#"{"dtm_result":"SUCCESS"}"#;

/// Runs one HTTP branch call: `query` is the raw query string, `headers`
/// the request's (for `traceparent`), `timeout` the server-side deadline
/// (503 after it; the local transaction rolls back when its future is
/// dropped). `path` names the route in the logs. `metrics` is the
/// service's (an `Option<Extension<Metrics>>` extractor finds it, put there
/// by [`Metrics::instrument_http`]); the barrier's outcome is counted there.
pub async fn run_http_branch<F, Fut, T>(
    path: &'static str,
    query: Option<&str>,
    headers: &axum::http::HeaderMap,
    timeout: Duration,
    metrics: Option<&Metrics>,
    handler: F,
) -> Response
where
    F: FnOnce(BranchBarrier) -> Fut,
    Fut: Future<Output = Result<Outcome<T>, BranchError>>,
{
    let barrier = match BranchBarrier::from_query(query.unwrap_or_default()) {
        Ok(barrier) => barrier,
        Err(err) => {
            tracing::warn!(path, %err, "branch call without valid dtm parameters");
            return BranchError::InvalidArgument(format!(
                "{path} is a dtm branch: the query parameters gid, trans_type, branch_id and op are required: {err}"
            ))
            .into_http()
            .into_response();
        }
    };
    let span = tracing::info_span!(
        "branch",
        otel.name = path,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.route = path,
        path,
        gid = %barrier.gid(),
        branch_id = %barrier.branch_id(),
        op = %barrier.op(),
        trace_id = tracing::field::Empty,
        outcome = tracing::field::Empty,
    );
    crate::trace::continue_from(&span, dtm_protocol::TraceContext::from_headers(headers).as_ref());
    let answer_span = span.clone();
    let op = barrier.op().as_str();
    let response = async move {
        let result = match tokio::time::timeout(timeout, handler(barrier)).await {
            Ok(result) => result,
            Err(_) => Err(BranchError::retry(format!("no result within {timeout:?}"))),
        };
        if let Some(metrics) = metrics {
            metrics.record_barrier(op, BarrierOutcome::of(&result));
        }
        match result {
            Ok(Outcome::Ran(_)) => {
                tracing::info!("branch done");
                (StatusCode::OK, SUCCESS_BODY).into_response()
            }
            Ok(Outcome::Skipped(why)) => {
                tracing::info!(skipped = %why, "branch skipped by the barrier; answering success");
                (StatusCode::OK, SUCCESS_BODY).into_response()
            }
            Err(err) => err.into_http().into_response(),
        }
    }
    .instrument(span)
    .await;
    let status = response.status();
    let outcome = match status.as_u16() {
        200 => "success",
        409 => "failure",
        425 => "ongoing",
        _ => "error",
    };
    crate::trace::record_outcome(&answer_span, outcome, status.as_u16() < 500 && status.as_u16() != 400);
    response
}

/// Parses a JSON request body; a malformed one is the caller's mistake (400).
pub fn json_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, BranchError> {
    serde_json::from_slice(body).map_err(|err| BranchError::InvalidArgument(format!("bad JSON body: {err}")))
}

/// A bound HTTP listener with its router, not yet serving.
pub struct HttpBranchServer {
    /// Bound before serving, so port 0 can be resolved and reported.
    listener: TcpListener,
    /// The real address.
    local_addr: SocketAddr,
    /// The branch routes.
    router: Router,
    /// Connection cap, header timeout, drain.
    limits: HttpServeLimits,
}

impl HttpBranchServer {
    /// Binds `listen_on` (`0.0.0.0:9011`, `127.0.0.1:0`) for `router`;
    /// request bodies above `max_body_bytes` get 413.
    pub async fn bind(
        listen_on: &str,
        router: Router,
        max_body_bytes: usize,
        limits: HttpServeLimits,
    ) -> Result<HttpBranchServer, ServeError> {
        let bind_error = |source| ServeError::Bind { addr: listen_on.to_string(), source };
        let listener = TcpListener::bind(listen_on).await.map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        let router = router.layer(DefaultBodyLimit::max(max_body_bytes));
        Ok(HttpBranchServer { listener, local_addr, router, limits })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// How long running calls may finish after shutdown.
    pub fn drain_timeout(&self) -> Duration {
        self.limits.drain_timeout
    }

    /// Serves until `shutdown` resolves, then drains within the limits.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        tracing::info!(local_addr = %self.local_addr, "HTTP branches listening");
        crate::http::serve(self.listener, self.router, shutdown, self.limits).await.map_err(ServeError::Http)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::to_bytes;
    use axum::http::HeaderMap;

    async fn answer(response: Response) -> (u16, String) {
        let status = response.status().as_u16();
        let body = to_bytes(response.into_body(), 1 << 16).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    const QUERY: &str = "gid=g1&trans_type=saga&branch_id=01&op=action";

    #[tokio::test]
    async fn outcomes_map_to_dtms_http_answers() {
        let second = Duration::from_secs(1);
        let none = HeaderMap::new();
        let ok = run_http_branch("/x", Some(QUERY), &none, second, None, |b| async move {
            assert_eq!(b.gid().as_str(), "g1");
            Ok::<_, BranchError>(Outcome::Ran(()))
        });
        assert_eq!(answer(ok.await).await, (200, SUCCESS_BODY.to_string()));
        let skipped = run_http_branch("/x", Some(QUERY), &none, second, None, |_| async {
            Ok::<Outcome<()>, _>(Outcome::Skipped(barrier::Skipped::Duplicate))
        });
        assert_eq!(answer(skipped.await).await.0, 200);
        let failure = run_http_branch("/x", Some(QUERY), &none, second, None, |_| async {
            Err::<Outcome<()>, _>(BranchError::failure("no stock"))
        });
        let (status, body) = answer(failure.await).await;
        assert_eq!(status, 409);
        assert!(body.contains("FAILURE"), "{body}");
        let retry = run_http_branch("/x", Some(QUERY), &none, second, None, |_| async {
            Err::<Outcome<()>, _>(BranchError::from(sqlx::Error::PoolTimedOut))
        });
        assert_eq!(answer(retry.await).await.0, 503);
        let slow = run_http_branch("/x", Some(QUERY), &none, Duration::from_millis(50), None, |_| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok::<_, BranchError>(Outcome::Ran(()))
        });
        assert_eq!(answer(slow.await).await.0, 503, "past the deadline: retry");
    }

    #[tokio::test]
    async fn missing_dtm_parameters_are_a_400_and_the_handler_never_runs() {
        let response = run_http_branch(
            "/api/order/create",
            Some("gid=g1"),
            &HeaderMap::new(),
            Duration::from_secs(1),
            None,
            |_| async {
                panic!("handler must not run");
                #[allow(unreachable_code)]
                Ok::<Outcome<()>, BranchError>(Outcome::Ran(()))
            },
        )
        .await;
        let (status, body) = answer(response).await;
        assert_eq!(status, 400);
        assert!(body.contains("trans_type"), "{body}");
        assert!(matches!(json_body::<serde_json::Value>(b"{"), Err(BranchError::InvalidArgument(_))));
    }
}
