//! dtm's HTTP API (`/api/dtmsvr/*`), as `dtmcli` calls it.

use std::time::Duration;

use dtm_protocol::{Gid, Topic};
use serde::Deserialize;

use crate::branch::BranchCaller;
use crate::kv::{KvPage, KvRows};
use crate::{ClientError, QueryResult, RegisterBranch, TransRequest};

/// A client of dtm's HTTP port, e.g. `http://127.0.0.1:36789/api/dtmsvr`.
#[derive(Debug, Clone)]
pub struct HttpDtm {
    /// Base URL without trailing `/`.
    base: String,
    /// Reused connection pool.
    client: reqwest::Client,
    /// For the calls the application makes to branches itself (TCC try);
    /// gRPC branches of an HTTP-driven transaction work too.
    branches: BranchCaller,
}

#[derive(Deserialize)]
struct GidReply {
    gid: String,
}

impl HttpDtm {
    /// A client for the base URL `base` (…`/api/dtmsvr`), with `timeout`
    /// per request.
    pub fn new(base: &str, timeout: Duration) -> Result<HttpDtm, ClientError> {
        HttpDtm::with_channels(base, timeout, discovery::ChannelCache::new())
    }

    /// Same, with gRPC branches dialled through `channels`.
    pub fn with_channels(
        base: &str,
        timeout: Duration,
        channels: discovery::ChannelCache,
    ) -> Result<HttpDtm, ClientError> {
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ClientError::InvalidArgument(format!(
                "dtm HTTP address {base:?} must start with http(s)://"
            )));
        }
        HttpDtm::build(base, timeout, channels, None)
    }

    /// Same, sending `Authorization: Bearer <token>` with every call to the
    /// coordinator (our `AuthToken`; dtm has none).
    pub fn with_token(
        base: &str,
        timeout: Duration,
        channels: discovery::ChannelCache,
        token: &str,
    ) -> Result<HttpDtm, ClientError> {
        HttpDtm::build(base, timeout, channels, Some(token))
    }

    fn build(
        base: &str,
        timeout: Duration,
        channels: discovery::ChannelCache,
        token: Option<&str>,
    ) -> Result<HttpDtm, ClientError> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| ClientError::InvalidArgument("the token must be printable ASCII".into()))?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .default_headers(headers)
            .build()
            .map_err(|err| ClientError::InvalidArgument(err.to_string()))?;
        let branches = BranchCaller::new(channels)?;
        Ok(HttpDtm { base: base.trim_end_matches('/').to_string(), client, branches })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET /newGid`.
    pub async fn new_gid(&self) -> Result<Gid, ClientError> {
        let body = self.send(self.client.get(format!("{}/newGid", self.base))).await?;
        let reply: GidReply = serde_json::from_str(&body)
            .map_err(|err| ClientError::Other(format!("unreadable newGid reply {body:?}: {err}")))?;
        Gid::new(reply.gid).map_err(|err| ClientError::Other(format!("dtm returned a bad gid: {err}")))
    }

    /// `POST /submit` with dtm's JSON body.
    pub async fn submit(&self, request: &TransRequest) -> Result<(), ClientError> {
        self.post("submit", request.to_http_json()?, request.trace.as_ref()).await
    }

    /// `POST /prepare`: registers a TCC or 2-phase message as `prepared`.
    pub async fn prepare(&self, request: &TransRequest) -> Result<(), ClientError> {
        self.post("prepare", request.to_http_json()?, request.trace.as_ref()).await
    }

    /// `POST /abort`: rolls back a prepared TCC or drops a prepared message.
    pub async fn abort(&self, request: &TransRequest) -> Result<(), ClientError> {
        self.post("abort", request.to_http_json()?, request.trace.as_ref()).await
    }

    /// `POST /registerBranch` with dtm's flat string map.
    pub async fn register_branch(&self, branch: &RegisterBranch) -> Result<(), ClientError> {
        self.post("registerBranch", branch.to_http_json()?, None).await
    }

    /// The caller for branch calls made by the application.
    pub(crate) fn branches(&self) -> &BranchCaller {
        &self.branches
    }

    async fn post(
        &self,
        route: &str,
        body: String,
        trace: Option<&dtm_protocol::TraceContext>,
    ) -> Result<(), ClientError> {
        let mut post = self
            .client
            .post(format!("{}/{route}", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(trace) = trace {
            post = post.header(dtm_protocol::trace::TRACEPARENT, trace.traceparent());
            if let Some(state) = trace.tracestate() {
                post = post.header(dtm_protocol::trace::TRACESTATE, state);
            }
        }
        self.send(post).await.map(drop)
    }

    /// `GET /query?gid=…`: the transaction and its branches.
    pub async fn query(&self, gid: &Gid) -> Result<QueryResult, ClientError> {
        self.get_data("query", &[("gid", gid.as_str())]).await
    }

    /// `GET /subscribe?topic=…&url=…&remark=…`: `url` (an HTTP or gRPC
    /// branch URL) receives every message sent to `topic` from now on.
    pub async fn subscribe(&self, topic: &Topic, url: &str, remark: &str) -> Result<(), ClientError> {
        let query = [("topic", topic.as_str()), ("url", url), ("remark", remark)];
        self.send(self.client.get(format!("{}/subscribe", self.base)).query(&query)).await.map(drop)
    }

    /// `GET /unsubscribe?topic=…&url=…`.
    pub async fn unsubscribe(&self, topic: &Topic, url: &str) -> Result<(), ClientError> {
        let query = [("topic", topic.as_str()), ("url", url)];
        self.send(self.client.get(format!("{}/unsubscribe", self.base)).query(&query)).await.map(drop)
    }

    /// `DELETE /topic/{topic}`.
    pub async fn delete_topic(&self, topic: &Topic) -> Result<(), ClientError> {
        let mut url = reqwest::Url::parse(&self.base)
            .map_err(|err| ClientError::InvalidArgument(format!("dtm address {:?}: {err}", self.base)))?;
        url.path_segments_mut()
            .map_err(|()| ClientError::InvalidArgument(format!("dtm address {:?} has no path", self.base)))?
            .push("topic")
            .push(topic.as_str());
        self.send(self.client.delete(url)).await.map(drop)
    }

    /// `GET /queryKV?cat=…&key=…`: the row of `key`, or all of `cat`.
    pub async fn query_kv(&self, cat: &str, key: Option<&str>) -> Result<KvRows, ClientError> {
        self.get_data("queryKV", &[("cat", cat), ("key", key.unwrap_or_default())]).await
    }

    /// `GET /scanKV?cat=…&position=…&limit=…`: one page of `cat`, newest
    /// first; pass the page's `next_position` for the next one.
    pub async fn scan_kv(&self, cat: &str, position: &str, limit: u32) -> Result<KvPage, ClientError> {
        let limit = limit.to_string();
        self.get_data("scanKV", &[("cat", cat), ("position", position), ("limit", &limit)]).await
    }

    /// A `GET` whose answer is data: judged by the status only, since the
    /// data may well contain the word FAILURE (a rollback reason, a
    /// remark; dtm's body rule is for results).
    async fn get_data<T: serde::de::DeserializeOwned>(
        &self,
        route: &str,
        query: &[(&str, &str)],
    ) -> Result<T, ClientError> {
        let get = self.client.get(format!("{}/{route}", self.base)).query(query);
        let response = get.send().await.map_err(|err| ClientError::from_reqwest(&err))?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(|err| ClientError::from_reqwest(&err))?;
        if status != 200
            && let Some(err) = ClientError::from_http(status, &body)
        {
            return Err(err);
        }
        serde_json::from_str(&body)
            .map_err(|err| ClientError::Other(format!("unreadable {route} reply: {err}")))
    }

    /// Sends, reads the body, and applies dtm's result rules.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<String, ClientError> {
        let response = request.send().await.map_err(|err| ClientError::from_reqwest(&err))?;
        let status = response.status().as_u16();
        let body = response.text().await.map_err(|err| ClientError::from_reqwest(&err))?;
        match ClientError::from_http(status, &body) {
            Some(err) => Err(err),
            None => Ok(body),
        }
    }
}
