//! go-zero compatible service discovery over etcd, for tonic.
//!
//! The Go demo's services find each other — and dtm finds them — through
//! etcd, in go-zero's format: each instance of `order.rpc` is one key
//! `order.rpc/<lease id>` whose value is `ip:port`, kept alive by a 10 s
//! lease. Rust and Go services can be mixed only if both sides use exactly
//! this format, so this crate reproduces it:
//!
//! * [`config`] — go-zero's `Etcd:` and RPC client YAML blocks and
//!   [`RpcClientConf::build_target`] (`etcd://h1:2379,h2:2379/order.rpc`);
//! * [`Registration`] — the server side: lease, key, keepalive,
//!   re-registration, revoke on shutdown; [`publish_address`] decides what
//!   `0.0.0.0:9001` is published as;
//! * [`Resolver`] — the client side: prefix get + watch, the live address set;
//! * [`balanced_channel`] — a tonic [`Channel`](tonic::transport::Channel)
//!   spread over the live instances of a target ([`rpc_client_channel`]
//!   takes a whole [`RpcClientConf`]);
//! * [`ChannelCache`] and [`parse_server_method`] — what a dtm coordinator
//!   needs to call branch URLs such as
//!   `etcd://127.0.0.1:2379/order.rpc/pb.order/create`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), discovery::DiscoveryError> {
//! use discovery::{EtcdConf, Registration, balanced_channel};
//!
//! // Server: register, serve, and deregister *before* draining.
//! let conf = EtcdConf::new(vec!["127.0.0.1:2379".into()], "order.rpc");
//! let registration = Registration::register(&conf, "0.0.0.0:9001").await?;
//! // … serve until SIGTERM …
//! registration.deregister().await?;
//!
//! // Client: one channel over every live order.rpc instance.
//! let channel = balanced_channel("etcd://127.0.0.1:2379/order.rpc").await?;
//! # drop(channel);
//! # Ok(()) }
//! ```

pub mod address;
pub mod balance;
pub mod cache;
pub mod config;
pub mod error;
pub mod etcd;
pub mod registration;
pub mod resolver;
pub mod target;

pub use address::publish_address;
pub use balance::{balanced_channel, direct_channel, rpc_client_channel};
pub use cache::ChannelCache;
pub use config::{EtcdConf, RpcClientConf};
pub use error::DiscoveryError;
pub use registration::{LEASE_TTL_SECS, Registration};
pub use resolver::Resolver;
pub use target::{EtcdTarget, Target, parse_server_method};
