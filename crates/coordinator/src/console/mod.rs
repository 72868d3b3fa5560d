//! The web console under `/admin`: three hand-written files (HTML, CSS,
//! JavaScript) compiled into the binary with `include_str!`, so `cargo
//! build` needs no Node toolchain and the console always matches the
//! coordinator it is served by.
//!
//! The pages hold no data: the script fetches everything from the
//! documented JSON API ([`crate::api::admin`], dtm's `/api/dtmsvr`), with
//! the bearer token the user typed on its login form, kept in the tab's
//! `sessionStorage` and sent as an `Authorization` header — never in a URL,
//! never in a cookie. The pages themselves are public (they are the same
//! for everyone); the API behind them is what `AuthToken` guards.
//!
//! Safety, in the script and in the headers sent here:
//!
//! * every value that comes from the store — gids, payloads, error texts,
//!   URLs — is written with `textContent` (or as an attribute value), never
//!   parsed as HTML: a gid `<img src=x onerror=…>` is shown as those
//!   characters;
//! * a strict Content-Security-Policy allows scripts, styles and `fetch`
//!   from this origin only, no inline script or style, no framing, no forms
//!   posted anywhere, no plugins; so even a mistake in the script could not
//!   load or run foreign code;
//! * actions are POSTs with a JSON body and the bearer header, which a
//!   foreign page cannot make a browser send (no CSRF).

use axum::Router;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// The console's single page.
const INDEX: &str = include_str!("index.html");
/// Its behaviour.
const SCRIPT: &str = include_str!("console.js");
/// Its looks.
const STYLE: &str = include_str!("console.css");

/// The Content-Security-Policy of every console file.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The console's routes (public: the files hold no data).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/admin", get(|| async { Redirect::permanent("/admin/") }))
        .route("/admin/", get(|| async { file("text/html; charset=utf-8", INDEX) }))
        .route("/admin/console.js", get(|| async { file("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/admin/console.css", get(|| async { file("text/css; charset=utf-8", STYLE) }))
}

/// One embedded file with the console's security headers.
fn file(content_type: &'static str, body: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP)),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (HeaderName::from_static("cross-origin-opener-policy"), HeaderValue::from_static("same-origin")),
    ];
    (headers, body).into_response()
}
