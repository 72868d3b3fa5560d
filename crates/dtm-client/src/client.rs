//! One client type for both of dtm's APIs.

use std::time::Duration;

use discovery::ChannelCache;
use dtm_protocol::{Gid, Topic};

use crate::branch::BranchCaller;
use crate::{ClientError, GrpcDtm, HttpDtm, KvPage, KvRows, QueryResult, RegisterBranch, Saga, TransRequest};

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
            Ok(DtmClient::Http(HttpDtm::with_channels(address, timeout, channels)?))
        } else {
            Ok(DtmClient::Grpc(GrpcDtm::new(address, channels, timeout)?))
        }
    }

    /// Same, authenticating with `token` (`Authorization: Bearer …`) when
    /// one is given: our coordinator's `AuthToken`. dtm itself has none.
    pub fn with_token(
        address: &str,
        channels: ChannelCache,
        timeout: Duration,
        token: Option<&str>,
    ) -> Result<DtmClient, ClientError> {
        let Some(token) = token else { return DtmClient::with_timeout(address, channels, timeout) };
        if address.starts_with("http://") || address.starts_with("https://") {
            Ok(DtmClient::Http(HttpDtm::with_token(address, timeout, channels, token)?))
        } else {
            Ok(DtmClient::Grpc(GrpcDtm::new(address, channels, timeout)?.with_token(token)?))
        }
    }

    /// A fresh gid from dtm (`NewGid` / `GET newGid`).
    pub async fn new_gid(&self) -> Result<Gid, ClientError> {
        match self {
            DtmClient::Grpc(dtm) => dtm.new_gid().await,
            DtmClient::Http(dtm) => dtm.new_gid().await,
        }
    }

    /// The coordinator's address as configured: what TCC try calls send as
    /// `dtm`, so that a nested branch reaches the same coordinator.
    pub fn address(&self) -> &str {
        match self {
            DtmClient::Grpc(dtm) => dtm.address(),
            DtmClient::Http(dtm) => dtm.base(),
        }
    }

    /// Submits a saga. With `wait_result`, `Ok` means it succeeded and
    /// [`ClientError::Failure`] that it was rolled back.
    pub async fn submit(&self, saga: &Saga) -> Result<(), ClientError> {
        self.submit_request(&saga.request()?).await
    }

    /// `submit` of any transaction type ([`crate::Tcc`] and [`crate::Msg`]
    /// call it for you).
    pub async fn submit_request(&self, request: &TransRequest) -> Result<(), ClientError> {
        match self {
            DtmClient::Grpc(dtm) => dtm.submit(request).await,
            DtmClient::Http(dtm) => dtm.submit(request).await,
        }
    }

    /// `prepare`: stores a TCC or 2-phase message as `prepared`.
    pub async fn prepare_request(&self, request: &TransRequest) -> Result<(), ClientError> {
        match self {
            DtmClient::Grpc(dtm) => dtm.prepare(request).await,
            DtmClient::Http(dtm) => dtm.prepare(request).await,
        }
    }

    /// `abort`: cancels a prepared TCC, or fails a prepared message.
    pub async fn abort_request(&self, request: &TransRequest) -> Result<(), ClientError> {
        match self {
            DtmClient::Grpc(dtm) => dtm.abort(request).await,
            DtmClient::Http(dtm) => dtm.abort(request).await,
        }
    }

    /// `registerBranch`: adds a TCC branch to a prepared transaction.
    pub async fn register_branch(&self, branch: &RegisterBranch) -> Result<(), ClientError> {
        match self {
            DtmClient::Grpc(dtm) => dtm.register_branch(branch).await,
            DtmClient::Http(dtm) => dtm.register_branch(branch).await,
        }
    }

    /// Calls the application makes to branches (try, check-back).
    pub(crate) fn branches(&self) -> &BranchCaller {
        match self {
            DtmClient::Grpc(dtm) => dtm.branches(),
            DtmClient::Http(dtm) => dtm.branches(),
        }
    }

    /// The transaction and its branches. dtm has no gRPC query, so this
    /// needs an HTTP client ([`ClientError::InvalidArgument`] otherwise).
    pub async fn query(&self, gid: &Gid) -> Result<QueryResult, ClientError> {
        self.http_only("query")?.query(gid).await
    }

    /// Subscribes `url` (an HTTP or gRPC branch URL) to `topic`: every
    /// message sent to the topic from now on reaches it
    /// ([`crate::Msg::add_topic_json`]). dtm answers FAILURE ("this url
    /// exists") for a URL already subscribed.
    pub async fn subscribe(&self, topic: &Topic, url: &str, remark: &str) -> Result<(), ClientError> {
        match self {
            DtmClient::Grpc(dtm) => dtm.subscribe(topic, url, remark).await,
            DtmClient::Http(dtm) => dtm.subscribe(topic, url, remark).await,
        }
    }

    /// Removes `url` from `topic`'s subscribers.
    pub async fn unsubscribe(&self, topic: &Topic, url: &str) -> Result<(), ClientError> {
        match self {
            DtmClient::Grpc(dtm) => dtm.unsubscribe(topic, url).await,
            DtmClient::Http(dtm) => dtm.unsubscribe(topic, url).await,
        }
    }

    /// Deletes `topic` with its subscribers (messages already sent keep theirs).
    pub async fn delete_topic(&self, topic: &Topic) -> Result<(), ClientError> {
        match self {
            DtmClient::Grpc(dtm) => dtm.delete_topic(topic).await,
            DtmClient::Http(dtm) => dtm.delete_topic(topic).await,
        }
    }

    /// dtm's `queryKV` (HTTP only, like `query`): the row of `key` in
    /// `cat`, or all of `cat`. A topic's subscribers: `query_kv("topics",
    /// Some(name))`, then [`crate::KvRow::subscribers`].
    pub async fn query_kv(&self, cat: &str, key: Option<&str>) -> Result<KvRows, ClientError> {
        self.http_only("queryKV")?.query_kv(cat, key).await
    }

    /// dtm's `scanKV` (HTTP only): one page of `cat`, newest first.
    pub async fn scan_kv(&self, cat: &str, position: &str, limit: u32) -> Result<KvPage, ClientError> {
        self.http_only("scanKV")?.scan_kv(cat, position, limit).await
    }

    /// The HTTP client, for what dtm offers over HTTP only.
    fn http_only(&self, api: &str) -> Result<&HttpDtm, ClientError> {
        match self {
            DtmClient::Http(dtm) => Ok(dtm),
            DtmClient::Grpc(dtm) => Err(ClientError::InvalidArgument(format!(
                "dtm has no gRPC {api} API; use its HTTP address instead of {}",
                dtm.address()
            ))),
        }
    }
}
