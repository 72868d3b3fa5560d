//! dtm's gRPC API (`/dtmgimp.Dtm/*`), as `dtmgrpc` calls it.

use std::future::Future;
use std::time::Duration;

use discovery::ChannelCache;
use dtm_protocol::{Gid, Topic};
use proto::dtmgimp::DtmTopicRequest;
use proto::dtmgimp::dtm_client::DtmClient as RawDtmClient;
use tonic::transport::Channel;

use crate::branch::BranchCaller;
use crate::{ClientError, RegisterBranch, TransRequest};

/// A client of dtm's gRPC port (36790), reached at `host:port` or through
/// etcd (`etcd://127.0.0.1:2379/dtmservice`, where dtm registers itself).
///
/// The channel is looked up in a shared [`ChannelCache`] on every call (a map
/// lookup and a handle clone), so a coordinator that registers after we
/// start, or moves, is found without restarting.
#[derive(Debug, Clone)]
pub struct GrpcDtm {
    /// `host:port` or `etcd://hosts/key`.
    address: String,
    /// Where channels (and etcd resolvers) are kept.
    channels: ChannelCache,
    /// Deadline of each call to dtm.
    timeout: Duration,
    /// For the calls the application makes to branches itself (TCC try).
    branches: BranchCaller,
    /// `authorization: Bearer …` for a coordinator that requires a token
    /// (our `AuthToken`; dtm has none).
    token: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl GrpcDtm {
    /// A client for `address` (validated now, dialled lazily).
    pub fn new(address: &str, channels: ChannelCache, timeout: Duration) -> Result<GrpcDtm, ClientError> {
        discovery::Target::parse(address).map_err(ClientError::from_discovery)?;
        let branches = BranchCaller::new(channels.clone())?;
        Ok(GrpcDtm { address: address.to_string(), channels, timeout, branches, token: None })
    }

    /// Sends `authorization: Bearer <token>` with every call to the
    /// coordinator (not to branches).
    pub fn with_token(mut self, token: &str) -> Result<GrpcDtm, ClientError> {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClientError::InvalidArgument("the token must be printable ASCII".into()))?;
        self.token = Some(value);
        Ok(self)
    }

    /// The coordinator's address as configured.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// `NewGid`: a fresh gid from dtm.
    pub async fn new_gid(&self) -> Result<Gid, ClientError> {
        let mut client = self.client().await?;
        let reply = self.call(client.new_gid(self.request(()))).await?;
        Gid::new(reply.gid).map_err(|err| ClientError::Other(format!("dtm returned a bad gid: {err}")))
    }

    /// `Submit`: hands the transaction to dtm.
    pub async fn submit(&self, request: &TransRequest) -> Result<(), ClientError> {
        let mut client = self.client().await?;
        self.call(client.submit(self.trans_request(request))).await
    }

    /// `Prepare`: registers a TCC or 2-phase message as `prepared`.
    pub async fn prepare(&self, request: &TransRequest) -> Result<(), ClientError> {
        let mut client = self.client().await?;
        self.call(client.prepare(self.trans_request(request))).await
    }

    /// `Abort`: rolls back a prepared TCC (cancels) or drops a prepared message.
    pub async fn abort(&self, request: &TransRequest) -> Result<(), ClientError> {
        let mut client = self.client().await?;
        self.call(client.abort(self.trans_request(request))).await
    }

    /// `RegisterBranch`: adds a TCC branch's confirm/cancel ops.
    pub async fn register_branch(&self, branch: &RegisterBranch) -> Result<(), ClientError> {
        let mut client = self.client().await?;
        self.call(client.register_branch(self.request(branch.to_grpc()))).await
    }

    /// `Subscribe`: `url` receives every message sent to `topic` from now on.
    pub async fn subscribe(&self, topic: &Topic, url: &str, remark: &str) -> Result<(), ClientError> {
        let mut client = self.client().await?;
        self.call(client.subscribe(self.request(topic_request(topic, url, remark)))).await
    }

    /// `Unsubscribe`.
    pub async fn unsubscribe(&self, topic: &Topic, url: &str) -> Result<(), ClientError> {
        let mut client = self.client().await?;
        self.call(client.unsubscribe(self.request(topic_request(topic, url, "")))).await
    }

    /// `DeleteTopic`.
    pub async fn delete_topic(&self, topic: &Topic) -> Result<(), ClientError> {
        let mut client = self.client().await?;
        self.call(client.delete_topic(self.request(topic_request(topic, "", "")))).await
    }

    /// The caller for branch calls made by the application.
    pub(crate) fn branches(&self) -> &BranchCaller {
        &self.branches
    }

    async fn client(&self) -> Result<RawDtmClient<Channel>, ClientError> {
        let channel = self.channels.get(&self.address).await.map_err(ClientError::from_discovery)?;
        Ok(RawDtmClient::new(channel))
    }

    /// A transaction's message with its trace context as metadata.
    fn trans_request(&self, request: &TransRequest) -> tonic::Request<proto::dtmgimp::DtmRequest> {
        let mut grpc = self.request(request.to_grpc());
        if let Some(trace) = &request.trace {
            trace.insert_metadata(grpc.metadata_mut());
        }
        grpc
    }

    /// Wraps a message with our deadline (also sent as `grpc-timeout`).
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.timeout);
        if let Some(token) = &self.token {
            request.metadata_mut().insert("authorization", token.clone());
        }
        request
    }

    /// Enforces the deadline locally too: with no live instance a balanced
    /// channel waits, and an unreachable peer may take long to refuse.
    async fn call<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, ClientError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(ClientError::from_status(&status)),
            Err(_) => Err(ClientError::Unavailable(format!(
                "no answer from dtm at {} within {:?}",
                self.address, self.timeout
            ))),
        }
    }
}

/// dtm's `DtmTopicRequest`.
fn topic_request(topic: &Topic, url: &str, remark: &str) -> DtmTopicRequest {
    DtmTopicRequest { topic: topic.as_str().to_string(), url: url.to_string(), remark: remark.to_string() }
}
