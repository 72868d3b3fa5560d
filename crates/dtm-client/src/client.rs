//! One client type for both of dtm's APIs.

use std::time::Duration;

use barrier::Gid;
use discovery::ChannelCache;

use crate::{ClientError, GrpcDtm, HttpDtm, QueryResult, Saga};

/// Default deadline of one call to dtm. Generous because a `wait_result`
/// submit returns only after dtm has called every branch once.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A dtm client over gRPC or HTTP, chosen by the address:
///
/// * `http://host:36789/api/dtmsvr` → HTTP;
/// * `host:36790`, `etcd://127.0.0.1:2379/dtmservice` → gRPC (etcd
///   addresses are resolved through [`discovery`]).
///
/// Cheap to clone; keep one per process.
#[derive(Debug, Clone)]
pub enum DtmClient {
    /// `/dtmgimp.Dtm/*`.
    Grpc(GrpcDtm),
    /// `/api/dtmsvr/*`.
    Http(HttpDtm),
}

impl DtmClient {
    /// A client for `address` with [`DEFAULT_TIMEOUT`]; gRPC channels come
    /// from `channels` (share the process's cache).
    pub fn new(address: &str, channels: ChannelCache) -> Result<DtmClient, ClientError> {
        DtmClient::with_timeout(address, channels, DEFAULT_TIMEOUT)
    }

    /// Same, with a custom per-call deadline.
    pub fn with_timeout(
        address: &str,
        channels: ChannelCache,
        timeout: Duration,
    ) -> Result<DtmClient, ClientError> {
        if address.starts_with("http://") || address.starts_with("https://") {
            Ok(DtmClient::Http(HttpDtm::new(address, timeout)?))
        } else {
            Ok(DtmClient::Grpc(GrpcDtm::new(address, channels, timeout)?))
        }
    }

    /// A fresh gid from dtm (`NewGid` / `GET newGid`).
    pub async fn new_gid(&self) -> Result<Gid, ClientError> {
        match self {
            DtmClient::Grpc(dtm) => dtm.new_gid().await,
            DtmClient::Http(dtm) => dtm.new_gid().await,
        }
    }

    /// Submits a saga. With `wait_result`, `Ok` means it succeeded and
    /// [`ClientError::Failure`] that it was rolled back.
    pub async fn submit(&self, saga: &Saga) -> Result<(), ClientError> {
        let request = saga.request()?;
        match self {
            DtmClient::Grpc(dtm) => dtm.submit(&request).await,
            DtmClient::Http(dtm) => dtm.submit(&request).await,
        }
    }

    /// The transaction and its branches. dtm has no gRPC query, so this
    /// needs an HTTP client ([`ClientError::InvalidArgument`] otherwise).
    pub async fn query(&self, gid: &Gid) -> Result<QueryResult, ClientError> {
        match self {
            DtmClient::Http(dtm) => dtm.query(gid).await,
            DtmClient::Grpc(dtm) => Err(ClientError::InvalidArgument(format!(
                "dtm has no gRPC query API; use its HTTP address instead of {}",
                dtm.address()
            ))),
        }
    }
}
