//! The one error type of the HTTP boundary, and its JSON form.
//!
//! Every error answer is JSON, `{"error": "...", "field": "...", "gid": "..."}`
//! (`field` and `gid` only when they apply), with the status go-zero's
//! `httpx` would pick: 400 bad input, 404 unknown gid, 413 body too large,
//! 503 coordinator unreachable or request timed out, 502 an answer from the
//! coordinator we cannot use. Internal causes go to the log, not to clients.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// What can go wrong in a request; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiError {
    /// Malformed JSON, a missing or mistyped field, a value out of range.
    #[error("{message}")]
    BadRequest {
        /// The offending field, if one is to blame.
        field: Option<&'static str>,
        /// What is wrong, for the client.
        message: String,
    },
    /// The body exceeds `MaxBytes`.
    #[error("request body larger than {limit} bytes")]
    PayloadTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// No such saga.
    #[error("{0}")]
    NotFound(String),
    /// The coordinator cannot be reached, or the outcome is unknown: retry.
    #[error("{message}")]
    Unavailable {
        /// The saga's gid, when one was already issued.
        gid: Option<String>,
        /// What happened, for the client.
        message: String,
    },
    /// The coordinator answered something unusable.
    #[error("{message}")]
    BadGateway {
        /// The saga's gid, when one was already issued.
        gid: Option<String>,
        /// What happened, for the client.
        message: String,
    },
}

impl ApiError {
    /// A 400 blaming `field`.
    pub fn bad_field(field: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::BadRequest { field: Some(field), message: message.into() }
    }

    /// A 400 about the body as a whole.
    pub fn bad_body(message: impl Into<String>) -> ApiError {
        ApiError::BadRequest { field: None, message: message.into() }
    }

    /// The field a 400 blames.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            ApiError::BadRequest { field, .. } => *field,
            _ => None,
        }
    }

    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::BadGateway { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    fn gid(&self) -> Option<&str> {
        match self {
            ApiError::Unavailable { gid, .. } | ApiError::BadGateway { gid, .. } => gid.as_deref(),
            _ => None,
        }
    }
}

/// The JSON body of every error answer.
#[derive(Debug, Serialize)]
struct ErrorBody<'a> {
    error: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gid: Option<&'a str>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: self.to_string(), field: self.field(), gid: self.gid() };
        (self.status(), Json(body)).into_response()
    }
}
