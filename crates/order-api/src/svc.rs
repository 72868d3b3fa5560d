//! What every request needs, built once at start-up (go-zero's
//! `internal/svc/serviceContext.go`).
//!
//! The demo's context also dialled order-srv and stock-srv, blocking start-up
//! until both were registered, but never called them: only the coordinator
//! does. Ours keeps just what the logic uses: two coordinator clients and the
//! branch URL prefixes.

use std::sync::Arc;

use discovery::ChannelCache;
use dtm_client::{ClientError, DtmClient};

use crate::config::{Config, TransMode, branch_base};
use crate::logic::BranchBases;

/// Shared by all requests; cheap to clone.
#[derive(Debug, Clone)]
pub struct ServiceContext {
    /// The configuration, for limits and waits.
    pub config: Arc<Config>,
    /// The coordinator's gRPC API: new gid, submit.
    pub dtm: DtmClient,
    /// The coordinator's HTTP API, for queries (dtm has no gRPC query).
    pub dtm_query: Option<DtmClient>,
    /// Where the two steps' branches are.
    pub branches: BranchBases,
    /// `TransMode: workflow`: the quick order as a workflow, and its
    /// callback (`crate::workflow`); `None` in saga mode.
    pub workflows: Option<dtm_client::workflow::Workflows>,
    /// This service's metrics: its HTTP requests (`http_server_*`) and its
    /// calls to the coordinator (`dtm_client_*`).
    pub metrics: service_kit::Metrics,
}

/// Why the context could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SvcError {
    /// A key of the YAML is unusable.
    #[error("{0}: {1}")]
    Config(String, String),
    /// A coordinator address is unusable.
    #[error("{key}: {source}")]
    Dtm {
        /// `DtmServer` or `DtmHttpServer`.
        key: &'static str,
        /// The client's complaint.
        source: ClientError,
    },
}

impl ServiceContext {
    /// Builds the clients. Nothing is dialled yet: order-api starts even if
    /// the coordinator is down, and answers 503 until it is up.
    pub fn new(config: Config) -> Result<ServiceContext, SvcError> {
        config.validate().map_err(|(key, message)| SvcError::Config(key, message))?;
        let channels = ChannelCache::new();
        let timeout = config.dtm_call_timeout().max(config.submit_wait());
        let token = (!config.dtm_token.is_empty()).then_some(config.dtm_token.expose());
        let dtm = DtmClient::with_token(&config.dtm_server, channels.clone(), timeout, token)
            .map_err(|source| SvcError::Dtm { key: "DtmServer", source })?;
        let dtm_query = match &config.dtm_http_server {
            Some(address) => Some(
                DtmClient::with_token(address, channels, config.dtm_call_timeout(), token)
                    .map_err(|source| SvcError::Dtm { key: "DtmHttpServer", source })?,
            ),
            None => None,
        };
        let base =
            |key: &str, conf| branch_base(conf).map_err(|err| SvcError::Config(key.into(), err.to_string()));
        let order_rpc = base("OrderRpcConf", &config.order_rpc_conf)?;
        let stock_rpc = base("StockRpcConf", &config.stock_rpc_conf)?;
        let http = |url: &Option<String>| url.as_deref().map(|u| u.trim_end_matches('/').to_string());
        let (order_http, stock_http) = (http(&config.order_http_url), http(&config.stock_http_url));
        let branches = BranchBases { order_rpc, stock_rpc, order_http, stock_http };
        let workflows = (config.trans_mode == TransMode::Workflow)
            .then(|| crate::workflow::workflows(&dtm, &branches, &config));
        Ok(ServiceContext {
            config: Arc::new(config),
            dtm,
            dtm_query,
            branches,
            workflows,
            metrics: service_kit::Metrics::new(),
        })
    }
}
