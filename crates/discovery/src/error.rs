//! The one error type of this crate.

/// Everything that can go wrong while registering, resolving or dialling.
///
/// Callers mostly log these; the variants exist so that a configuration
/// mistake (fix the YAML) is told apart from an outage (retry later).
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// A configuration value is missing or malformed (bad `Etcd` block,
    /// unparsable target URL, …). Retrying will not help.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// An etcd request failed (etcd down, auth refused, lease not found, …).
    #[error("etcd {context}: {source}")]
    Etcd {
        /// What we were doing, e.g. `"grant lease"`.
        context: &'static str,
        /// The client's error.
        #[source]
        source: etcd_client::Error,
    },

    /// An etcd request did not answer in time.
    #[error("etcd {0}: timed out")]
    Timeout(&'static str),

    /// No address to publish could be worked out (`0.0.0.0` listener, no
    /// `POD_IP`, and no non-loopback IPv4 interface that is up).
    #[error("cannot figure out the address to publish: {0}")]
    NoPublishAddress(String),

    /// The target resolved to zero live instances.
    #[error("no live instance of {0}")]
    NoInstances(String),

    /// A resolved address is not a valid gRPC endpoint.
    #[error("invalid endpoint {address}: {source}")]
    Endpoint {
        /// The offending `host:port`.
        address: String,
        /// tonic's error.
        #[source]
        source: tonic::transport::Error,
    },
}

impl DiscoveryError {
    /// Wraps an etcd error with what we were doing.
    pub(crate) fn etcd(context: &'static str) -> impl FnOnce(etcd_client::Error) -> DiscoveryError {
        move |source| DiscoveryError::Etcd { context, source }
    }
}
