//! A dtm-compatible transaction coordinator: sagas, TCC, XA, 2-phase
//! messages and workflows.
//!
//! Clients speak dtm's protocol to it — the HTTP API under `/api/dtmsvr`
//! and the gRPC service `dtmgimp.Dtm` — so dtm's SDKs, and the demo's
//! order-api, work unchanged. How the parts fit:
//!
//! * [`model`] — the validated request types both APIs produce
//!   ([`model::TransRequest::from_input`] is the single validation path);
//! * [`engine`] — the [`Engine`] facade the APIs call, the per-type
//!   processing rules (saga: [`engine::saga`]; TCC and messages in one
//!   sequence module; workflows: [`engine::workflow`]), retry timing
//!   ([`engine::retry`]) and the recovery poller;
//! * [`store`] — durable state behind the [`store::Store`] trait, with
//!   MySQL/MariaDB, PostgreSQL and SQLite implementations over dtm's own
//!   tables;
//! * [`branch`] — calls branches over HTTP and gRPC (raw payload
//!   pass-through, pooled connections);
//! * [`alert`] — dtm's retry alerts (`AlertRetryLimit`, `AlertWebHook`):
//!   counted in the store, delivered at least once, off the branch path;
//! * [`topics`] — dtm's message topics: subscribe/unsubscribe in the `kv`
//!   table under optimistic concurrency, `topic://name` message steps
//!   expanded into one branch per subscriber;
//! * [`trace`] — W3C trace context: read from the creating request, kept
//!   in dtm's `ext_data` column, continued by every branch call;
//! * `config`, `api`, `metrics`, `server` — configuration, the two APIs,
//!   Prometheus metrics and the process wiring used by the `coordinator` binary.
//!
//! Several coordinators may share one database: there is no leader. A pass
//! holds a lease on its transaction (a token in `owner`, an expiry in
//! `next_cron_time` on the database's clock) and every write it makes is
//! fenced by that token, so at most one pass drives a transaction at a time
//! ([`engine::lease`], the contract in [`store`]).

pub mod alert;
pub mod api;
pub mod attempts;
pub mod branch;
pub mod config;
pub mod console;
pub mod engine;
pub mod metrics;
pub mod model;
pub mod server;
pub mod store;
pub mod topics;
pub mod trace;

pub use engine::{Engine, EngineError, EngineHooks, EngineObserver, EngineSettings, TransDetail};
pub use model::{
    BranchStatus, BranchUrl, GlobalStatus, InvalidInput, Protocol, RegisterBranchRequest, Step, TransOptions,
    TransRequest, TransRequestInput,
};
pub use store::{ListFilter, Page, Store};
