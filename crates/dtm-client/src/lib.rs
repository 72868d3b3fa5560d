//! A client of dtm's coordinator API — the Rust counterpart of dtm's Go
//! `dtmgrpc` and `dtmcli` packages — usable against our coordinator or a
//! real dtm server.
//!
//! How the parts fit:
//!
//! * [`Saga`] builds a saga: steps (action URL, compensation URL, payload)
//!   and options ([`TransOptions`]: `wait_result`, timeouts, retry limits,
//!   branch headers, concurrency with branch orders);
//! * [`TransRequest`] is what any transaction type sends to dtm, with the
//!   two encodings dtm accepts ([`TransRequest::to_grpc`],
//!   [`TransRequest::to_http_json`]);
//! * [`DtmClient`] talks to dtm over gRPC ([`GrpcDtm`], `host:port` or
//!   `etcd://…/dtmservice` resolved through [`discovery`]) or HTTP
//!   ([`HttpDtm`], `http://host:36789/api/dtmsvr`): `new_gid`, `submit`, and
//!   over HTTP `query`;
//! * [`ClientError`] sorts every outcome into what a caller acts on:
//!   `Failure` (rolled back → HTTP 409), `Unavailable` (→ 503), ….
//!
//! TCC and 2-phase messages will sit next to [`saga`] as `tcc` and `msg`,
//! building the same [`TransRequest`] and adding `prepare`, `abort` and
//! `registerBranch` calls to the two transports.
//!
//! # The article's quick order
//!
//! order-api creates the order row and deducts the stock in one saga; if the
//! stock service answers FAILURE (not enough stock), dtm compensates the
//! order. Both services are found in etcd by go-zero target, and so is dtm.
//!
//! ```no_run
//! use discovery::ChannelCache;
//! use dtm_client::{ClientError, DtmClient, Saga};
//! use proto::order::{CreateReq, CREATE_PATH, CREATE_ROLLBACK_PATH};
//! use proto::stock::{DeductReq, DEDUCT_PATH, DEDUCT_ROLLBACK_PATH};
//!
//! # async fn quick_order() -> Result<(), ClientError> {
//! let channels = ChannelCache::new();
//! let dtm = DtmClient::new("etcd://127.0.0.1:2379/dtmservice", channels)?;
//!
//! // What RpcClientConf::build_target() gives for the two services.
//! let order_rpc = "etcd://127.0.0.1:2379/order.rpc";
//! let stock_rpc = "etcd://127.0.0.1:2379/stock.rpc";
//!
//! let gid = dtm.new_gid().await?;
//! let saga = Saga::new(gid)
//!     .add(
//!         format!("{order_rpc}{CREATE_PATH}"),
//!         format!("{order_rpc}{CREATE_ROLLBACK_PATH}"),
//!         &CreateReq { user_id: 1, goods_id: 1, num: 1 },
//!     )
//!     .add(
//!         format!("{stock_rpc}{DEDUCT_PATH}"),
//!         format!("{stock_rpc}{DEDUCT_ROLLBACK_PATH}"),
//!         &DeductReq { goods_id: 1, num: 1 },
//!     )
//!     .wait_result(true);
//!
//! match dtm.submit(&saga).await {
//!     Ok(()) => println!("order placed"),
//!     Err(ClientError::Failure(reason)) => println!("rolled back: {reason}"), // → 409
//!     Err(ClientError::Unavailable(why)) => println!("try again later: {why}"), // → 503
//!     Err(other) => return Err(other),
//! }
//! # Ok(()) }
//! ```

pub mod client;
pub mod error;
pub mod grpc;
pub mod http;
pub mod query;
pub mod saga;
pub mod trans;

pub use client::{DEFAULT_TIMEOUT, DtmClient};
pub use error::ClientError;
pub use grpc::GrpcDtm;
pub use http::HttpDtm;
pub use query::{Branch, BranchStatus, QueryResult, TransStatus, Transaction};
pub use saga::Saga;
pub use trans::{TransOptions, TransRequest};
