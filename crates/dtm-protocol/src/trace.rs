//! [`TraceContext`]: W3C trace context (`traceparent`, `tracestate`) as it
//! travels with a saga, from the client's submit through the coordinator to
//! every branch call.
//!
//! dtm's protocol has no trace context of its own; the W3C headers ride
//! beside dtm's values, as HTTP headers or gRPC metadata of the same name
//! (gRPC metadata keys are HTTP/2 headers, so one spelling serves both).
//! This module only *carries* the context: it validates the `traceparent`
//! syntax of the W3C Trace Context recommendation (section "traceparent
//! Header") so that a malformed header is dropped at the edge rather than
//! stored and forwarded, and it never starts or ends a span — that is the
//! job of whoever has a tracer (service-kit's `trace` module).

use tonic::metadata::{MetadataMap, MetadataValue};

/// The W3C header naming the caller's span: `00-<trace-id>-<span-id>-<flags>`.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C header with vendor-specific trace state (forwarded verbatim).
pub const TRACESTATE: &str = "tracestate";

/// Longest `tracestate` kept: the W3C recommendation allows 32 entries of at
/// most 256 bytes each; we keep the whole context within what dtm's 1024-byte
/// `ext_data` column can hold beside it.
pub const MAX_TRACESTATE_LEN: usize = 512;

/// A validated W3C trace context: the `traceparent` and, when present, the
/// `tracestate` that goes with it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// `00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>`.
    traceparent: String,
    /// Opaque vendor data, forwarded unchanged.
    tracestate: Option<String>,
}

impl TraceContext {
    /// A context from the two header values; `None` when `traceparent` is
    /// missing or malformed (a bad `tracestate` is dropped alone, as the
    /// recommendation asks).
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<TraceContext> {
        let traceparent = traceparent.trim();
        if !valid_traceparent(traceparent) {
            return None;
        }
        let tracestate = tracestate
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.len() <= MAX_TRACESTATE_LEN && s.is_ascii())
            .map(str::to_string);
        Some(TraceContext { traceparent: traceparent.to_ascii_lowercase(), tracestate })
    }

    /// The context in gRPC metadata (`traceparent`, `tracestate`), if any.
    pub fn from_metadata(metadata: &MetadataMap) -> Option<TraceContext> {
        let parent = metadata.get(TRACEPARENT)?.to_str().ok()?;
        let state = metadata.get(TRACESTATE).and_then(|v| v.to_str().ok());
        TraceContext::parse(parent, state)
    }

    /// The context in HTTP headers, if any.
    pub fn from_headers(headers: &http::HeaderMap) -> Option<TraceContext> {
        let parent = headers.get(TRACEPARENT)?.to_str().ok()?;
        let state = headers.get(TRACESTATE).and_then(|v| v.to_str().ok());
        TraceContext::parse(parent, state)
    }

    /// Writes `traceparent` (and `tracestate`) into gRPC metadata,
    /// replacing what was there.
    pub fn insert_metadata(&self, metadata: &mut MetadataMap) {
        // Both values were checked to be ASCII without control characters.
        if let Ok(value) = MetadataValue::try_from(self.traceparent.as_str()) {
            metadata.insert(TRACEPARENT, value);
        }
        if let Some(state) = &self.tracestate
            && let Ok(value) = MetadataValue::try_from(state.as_str())
        {
            metadata.insert(TRACESTATE, value);
        }
    }

    /// The `traceparent` value.
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// The `tracestate` value, if any.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// The 32-hex-digit trace id: what log lines carry as `trace_id`.
    pub fn trace_id(&self) -> &str {
        &self.traceparent[3..35]
    }

    /// The 16-hex-digit id of the caller's span.
    pub fn parent_span_id(&self) -> &str {
        &self.traceparent[36..52]
    }
}

/// `traceparent` syntax (W3C Trace Context, version `00`, and the
/// forward-compatible rule for higher versions: the first four fields as
/// in `00`): `vv-tttt…(32)-pppp…(16)-ff`, lowercase or uppercase hex, trace
/// and parent ids not all zero, version `ff` invalid.
fn valid_traceparent(value: &str) -> bool {
    let bytes = value.as_bytes();
    if bytes.len() < 55 || bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
        return false;
    }
    let hex = |range: std::ops::Range<usize>| value[range].bytes().all(|b| b.is_ascii_hexdigit());
    let zero = |range: std::ops::Range<usize>| value[range].bytes().all(|b| b == b'0');
    let version = &value[0..2];
    hex(0..2)
        && !version.eq_ignore_ascii_case("ff")
        && hex(3..35)
        && !zero(3..35)
        && hex(36..52)
        && !zero(36..52)
        && hex(53..55)
        // Version 00 is exactly 55 characters; later versions may append
        // `-…` fields, which we keep but do not interpret.
        && (bytes.len() == 55 || (version != "00" && bytes[55] == b'-'))
        && value.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_w3c_example_parses_and_names_its_ids() {
        let context = TraceContext::parse(PARENT, Some("rojo=00f067aa0ba902b7")).unwrap();
        assert_eq!(context.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.parent_span_id(), "00f067aa0ba902b7");
        assert_eq!(context.tracestate(), Some("rojo=00f067aa0ba902b7"));
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert_eq!(TraceContext::parse(bad, None), None, "{bad:?}");
        }
        // A later version may carry more fields.
        assert!(TraceContext::parse(&format!("01{}-x", &PARENT[2..]), None).is_some());
    }

    #[test]
    fn metadata_round_trip() {
        let context = TraceContext::parse(PARENT, Some("a=b")).unwrap();
        let mut metadata = MetadataMap::new();
        context.insert_metadata(&mut metadata);
        assert_eq!(TraceContext::from_metadata(&metadata), Some(context));
    }
}
