//! Distributed tracing in the coordinator: where a transaction's trace
//! context comes from, where it is kept, and how branch calls continue it.
//!
//! * **In.** `submit`, `prepare` and `abort` read the W3C `traceparent` /
//!   `tracestate` of the request (gRPC metadata or HTTP header) and open a
//!   server span ([`api_span`]) as its child.
//! * **Kept.** The context of that span — or, with tracing off, the
//!   incoming one unchanged — is stored with the transaction, in dtm's
//!   `trans_global.ext_data` column: dtm defines it for "extra data"
//!   (`TransGlobalExt` in dtm's `dtmsvr/storage/trans.go`, a
//!   `{"headers":{…}}` object) and never fills it, so we add no column to
//!   dtm's tables and a dtm reading our rows sees a value of its own shape
//!   ([`to_ext_data`], [`from_ext_data`]).
//! * **Out.** Every processing pass — the submit's own, a retry an hour
//!   later, a recovery pass of another coordinator after a crash — is a
//!   span ([`pass_span`]) under the stored context, and each branch call in
//!   it a client span ([`branch_span`]) that sends its own `traceparent` to
//!   the branch. So one trace shows the whole saga, however many passes it
//!   took.
//!
//! The mechanics (parenting, injection, the off switch) are
//! `service_kit::trace`'s, shared with the services.

use dtm_protocol::{BranchCall, TraceContext};
use serde::{Deserialize, Serialize};
use tracing::Span;

/// dtm's `TransGlobalExt`: the `ext_data` column's JSON.
#[derive(Debug, Default, Serialize, Deserialize)]
struct TransGlobalExt {
    /// Headers of the request that created the transaction; we keep the
    /// trace context's two.
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
}

/// The `ext_data` value for a transaction created with `trace` (empty
/// without one, as dtm leaves it).
pub fn to_ext_data(trace: Option<&TraceContext>) -> String {
    let Some(trace) = trace else { return String::new() };
    let mut ext = TransGlobalExt::default();
    ext.headers.insert(dtm_protocol::trace::TRACEPARENT.into(), trace.traceparent().into());
    if let Some(state) = trace.tracestate() {
        ext.headers.insert(dtm_protocol::trace::TRACESTATE.into(), state.into());
    }
    // A map of strings always serializes.
    serde_json::to_string(&ext).unwrap_or_default()
}

/// The trace context stored in `ext_data`, if any; an empty, foreign or
/// malformed value (dtm's rows, a hand edit) is simply no context.
pub fn from_ext_data(ext_data: &str) -> Option<TraceContext> {
    if ext_data.trim().is_empty() {
        return None;
    }
    let ext: TransGlobalExt = serde_json::from_str(ext_data).ok()?;
    let parent = ext.headers.get(dtm_protocol::trace::TRACEPARENT)?;
    TraceContext::parse(parent, ext.headers.get(dtm_protocol::trace::TRACESTATE).map(String::as_str))
}

/// The server span of an API call that creates or moves a transaction
/// (`submit`, `prepare`, `abort`), child of the caller's context; returns
/// the span and the context to store with the transaction.
pub fn api_span(
    api: &'static str,
    gid: &str,
    incoming: Option<&TraceContext>,
) -> (Span, Option<TraceContext>) {
    let span = tracing::info_span!(
        "dtm api",
        otel.name = api,
        otel.kind = "server",
        gid,
        trace_id = tracing::field::Empty,
    );
    service_kit::trace::continue_from(&span, incoming);
    let stored = service_kit::trace::outgoing(&span, incoming);
    (span, stored)
}

/// The span of one processing pass over transaction `gid`, child of its
/// stored context — not of whatever span is current: the poller's passes
/// have none, and the submit's own pass belongs to the transaction's
/// trace as much as a retry does.
pub fn pass_span(gid: &dtm_protocol::Gid, stored: Option<&TraceContext>) -> Span {
    let span = tracing::info_span!(parent: None, "pass", gid = %gid, trace_id = tracing::field::Empty);
    service_kit::trace::continue_from(&span, stored);
    span
}

/// The client span of one branch call, child of the current span (the
/// pass), and the `traceparent` to send with the call: the span's own, or
/// with tracing off the stored one unchanged.
pub fn branch_span(
    call: &BranchCall,
    url: &str,
    protocol: &'static str,
    stored: Option<&TraceContext>,
) -> (Span, Option<TraceContext>) {
    let span = tracing::info_span!(
        "branch call",
        otel.name = format!("{} {}", call.op, short_url(url)),
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        gid = %call.gid,
        branch_id = %call.branch_id,
        op = %call.op,
        url,
        protocol,
        outcome = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    service_kit::trace::join_current(&span, stored);
    let outgoing = service_kit::trace::outgoing(&span, stored);
    (span, outgoing)
}

/// A branch URL without its host part, for span names: `/pb.order/create`
/// rather than `etcd://…/order.rpc/pb.order/create` (the whole URL is the
/// `url` attribute).
fn short_url(url: &str) -> &str {
    let path_start = url.find("://").map_or(0, |i| i + 3);
    url[path_start..].find('/').map_or(url, |i| &url[path_start + i..])
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn ext_data_is_dtms_headers_object_and_reads_back() {
        let trace = TraceContext::parse(PARENT, Some("k=v")).unwrap();
        let ext = to_ext_data(Some(&trace));
        assert_eq!(ext, format!(r#"{{"headers":{{"traceparent":"{PARENT}","tracestate":"k=v"}}}}"#));
        assert_eq!(from_ext_data(&ext), Some(trace));
        assert_eq!(to_ext_data(None), "");
        for foreign in ["", "{}", "null", "not json", r#"{"headers":{"traceparent":"bad"}}"#] {
            assert_eq!(from_ext_data(foreign), None, "{foreign}");
        }
    }

    #[test]
    fn span_names_use_the_method_path() {
        assert_eq!(
            short_url("etcd://127.0.0.1:2379/order.rpc/pb.order/create"),
            "/order.rpc/pb.order/create"
        );
        assert_eq!(short_url("127.0.0.1:9001/pb.order/create"), "/pb.order/create");
        assert_eq!(short_url("http://h:1/api/order/create"), "/api/order/create");
    }
}
