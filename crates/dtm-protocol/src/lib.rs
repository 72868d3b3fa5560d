//! The words of dtm's branch protocol, shared by everyone who speaks it: the
//! coordinator and the client SDK that call branches, the services and the
//! barrier that answer them, and the tools that stand in for either.
//!
//! How the parts fit:
//!
//! * [`types`] — [`Gid`], [`BranchId`], [`TransType`], [`Op`] and
//!   [`ProtocolError`]: the four values of every branch call, validated
//!   once, so that an unknown op or an unsendable gid is refused at the edge;
//!   and the statuses dtm reports for a transaction and its branches
//!   ([`GlobalStatus`], [`BranchStatus`]) and how branches are reached
//!   ([`Protocol`]);
//! * [`gid`] — dtm's gid format, and [`Gid::random`] to make one;
//! * [`call`] — [`BranchCall`]: those values (plus `dtm`, the coordinator's
//!   address) as the `dtm-*` gRPC metadata and the HTTP query parameters a
//!   branch call carries, written by the caller and read back
//!   ([`Received`]) by the branch;
//! * [`result`] — [`BranchResult`] and the `FAILURE` / `ONGOING` / `SUCCESS`
//!   markers: how a branch's answer is classified over gRPC and HTTP;
//! * [`codec`] — [`RawCodec`], the gRPC codec that sends a stored protobuf
//!   payload verbatim (dtm's `dtm_raw`);
//! * [`trace`] — [`TraceContext`], the W3C `traceparent`/`tracestate` that
//!   rides beside dtm's values on the submit and on every branch call;
//! * [`topic`] — [`Topic`] and [`Subscriber`]: message topics (`topic://name`
//!   steps) and who subscribed to them.
//!
//! Nothing here touches a database or a network: the crate sits at the
//! bottom of the workspace, and `barrier`, `dtm-client`, the coordinator,
//! the services and the tools build on it.

pub mod call;
pub mod codec;
pub mod gid;
pub mod result;
pub mod topic;
pub mod trace;
pub mod types;

pub use call::{BranchCall, Field, MetadataError, Received};
pub use codec::RawCodec;
pub use result::{BranchResult, FAILURE, ONGOING, SUCCESS};
pub use topic::{MSG_TOPIC_PREFIX, Subscriber, TOPICS_CAT, Topic};
pub use trace::TraceContext;
pub use types::{BranchId, BranchStatus, Gid, GlobalStatus, Op, Protocol, ProtocolError, TransType};
