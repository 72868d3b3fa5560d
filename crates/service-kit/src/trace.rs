//! W3C trace context in and out of a request's span: the three moves every
//! hop of the saga makes.
//!
//! 1. A request arrives with a `traceparent` ([`TraceContext`], parsed by
//!    `dtm_protocol`): [`continue_from`] makes the request's span its child
//!    and records the `trace_id` on it, so every log line inside says which
//!    trace it belongs to.
//! 2. The request calls on (order-api → coordinator, coordinator → branch):
//!    [`outgoing`] gives the context to send — the calling span's own when
//!    tracing is on, so the callee's spans hang under it.
//! 3. With tracing off (no `Telemetry.Endpoint`, see [`crate::telemetry`])
//!    both are nearly free: no OpenTelemetry context is built, the incoming
//!    `traceparent` is forwarded unchanged and its trace id still logged, so
//!    a process without an exporter does not break the trace of those that
//!    have one.
//!
//! Spans are ordinary `tracing` spans; tracing-opentelemetry's layer turns
//! them into OpenTelemetry spans. Its special fields name them:
//! `otel.name`, `otel.kind` (`server`, `client`), `otel.status_code`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use dtm_protocol::TraceContext;
use dtm_protocol::trace::{TRACEPARENT, TRACESTATE};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Set once the OpenTelemetry layer is installed ([`crate::telemetry::init_traced`]).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Marks span export as on, for the rest of the process.
pub(crate) fn set_enabled() {
    ENABLED.store(true, Ordering::Release);
}

/// Whether spans are exported by this process.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Acquire)
}

/// Makes `span` a child of `incoming` (when tracing is on) and records its
/// `trace_id` field (declare it `trace_id = tracing::field::Empty`). Call
/// before the span is entered. Without an incoming context, `span` keeps
/// its place in the current trace (a new trace when it has no parent).
pub fn continue_from(span: &Span, incoming: Option<&TraceContext>) {
    if enabled() {
        if let Some(incoming) = incoming {
            let parent = TraceContextPropagator::new().extract(&carrier(incoming));
            // Fails only for a span already started: the caller's mistake,
            // and the span then simply keeps its own parent.
            let _ = span.set_parent(parent);
        }
        let context = span.context();
        let span_context = context.span().span_context().clone();
        if span_context.is_valid() {
            span.record("trace_id", span_context.trace_id().to_string());
        }
    } else if let Some(incoming) = incoming {
        span.record("trace_id", incoming.trace_id());
    }
}

/// Records the `trace_id` of `span`, a child of the current span (which
/// continued `incoming`): the span's own trace when tracing is on,
/// `incoming`'s when off.
pub fn join_current(span: &Span, incoming: Option<&TraceContext>) {
    if enabled() {
        continue_from(span, None);
    } else if let Some(incoming) = incoming {
        span.record("trace_id", incoming.trace_id());
    }
}

/// The context to send on a call made inside `span`: `span`'s own when
/// tracing is on, otherwise `incoming` unchanged (pass-through).
pub fn outgoing(span: &Span, incoming: Option<&TraceContext>) -> Option<TraceContext> {
    if !enabled() {
        return incoming.cloned();
    }
    let mut map = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut map);
    match map.get(TRACEPARENT) {
        Some(parent) => TraceContext::parse(parent, map.get(TRACESTATE).map(String::as_str)),
        // A span filtered out by the log level has no context: keep the
        // caller's, so the trace is not cut.
        None => incoming.cloned(),
    }
}

/// Records how a client or server span ended: `otel.status_code` `ERROR`
/// when `ok` is false (declare `otel.status_code = tracing::field::Empty`).
pub fn record_outcome(span: &Span, outcome: &str, ok: bool) {
    span.record("outcome", outcome);
    if !ok {
        span.record("otel.status_code", "ERROR");
    }
}

/// A client span for one business SQL statement, named like
/// OpenTelemetry's database conventions (`UPDATE stock`), child of the
/// current span (the branch call).
pub fn sql_span(operation: &'static str, table: &'static str) -> Span {
    tracing::info_span!(
        "sql",
        otel.name = format!("{operation} {table}"),
        otel.kind = "client",
        db.operation.name = operation,
        db.collection.name = table,
    )
}

/// The two headers as the propagator's text map.
fn carrier(context: &TraceContext) -> HashMap<String, String> {
    let mut map = HashMap::from([(TRACEPARENT.to_string(), context.traceparent().to_string())]);
    if let Some(state) = context.tracestate() {
        map.insert(TRACESTATE.to_string(), state.to_string());
    }
    map
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_tracing_off_the_incoming_context_passes_through_unchanged() {
        // No subscriber, no exporter: the process-wide flag is off.
        let incoming =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", Some("k=v"));
        let span = tracing::info_span!("call", trace_id = tracing::field::Empty);
        continue_from(&span, incoming.as_ref());
        assert_eq!(outgoing(&span, incoming.as_ref()), incoming);
        assert_eq!(outgoing(&span, None), None);
    }
}
