//! go-zero's configuration blocks, field for field.
//!
//! A go-zero service YAML has an `Etcd:` block on the server side and
//! `OrderRpcConf: { Etcd: {...} }` / `Endpoints:` / `Target:` on the client
//! side. These structs parse the same YAML (PascalCase keys), refuse unknown
//! keys (a typo such as `Host:` instead of `Hosts:` must not silently mean
//! "no etcd"), and build the same target strings as go-zero ≤ v1.10.1.

use std::time::Duration;

use serde::Deserialize;

use crate::DiscoveryError;

/// go-zero's `discov.EtcdConf`: where to register (server) or look up
/// (client) a service in etcd.
///
/// The TLS fields of go-zero (`CertFile`, …) are not supported: an unknown
/// key is an error, so a TLS configuration fails loudly instead of being
/// silently ignored.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct EtcdConf {
    /// etcd client endpoints, `host:port` (e.g. `127.0.0.1:2379`).
    pub hosts: Vec<String>,
    /// The service key, e.g. `order.rpc`. Instances live under `<Key>/<id>`.
    /// One path segment: dtm's go-zero driver cannot parse a key with `/`.
    pub key: String,
    /// etcd user (auth), used only together with `Pass`.
    #[serde(default)]
    pub user: Option<String>,
    /// etcd password.
    #[serde(default)]
    pub pass: Option<String>,
    /// A fixed instance id: the key becomes `<Key>/<ID>` instead of
    /// `<Key>/<lease id>`. go-zero only uses it when it is > 0.
    #[serde(default, rename = "ID")]
    pub id: Option<i64>,
}

impl EtcdConf {
    /// A configuration with just hosts and key.
    pub fn new(hosts: Vec<String>, key: impl Into<String>) -> EtcdConf {
        EtcdConf { hosts, key: key.into(), user: None, pass: None, id: None }
    }

    /// Checks what go-zero's `EtcdConf.Validate` checks, plus the key shape
    /// that dtm's URL parsing needs.
    pub fn validate(&self) -> Result<(), DiscoveryError> {
        if self.hosts.is_empty() || self.hosts.iter().any(|h| h.trim().is_empty()) {
            return Err(DiscoveryError::Config("empty etcd hosts (Etcd.Hosts)".into()));
        }
        if let Some(bad) = self.hosts.iter().find(|h| h.contains(',') || h.contains('/')) {
            return Err(DiscoveryError::Config(format!(
                "etcd host {bad:?} must be a single host:port (Etcd.Hosts is a list)"
            )));
        }
        if self.key.is_empty() {
            return Err(DiscoveryError::Config("empty etcd key (Etcd.Key)".into()));
        }
        if self.key.contains('/') || self.key.contains('?') {
            return Err(DiscoveryError::Config(format!(
                "etcd key {:?} must be one path segment without '/' or '?'",
                self.key
            )));
        }
        if self.user.is_some() != self.pass.is_some() {
            return Err(DiscoveryError::Config("Etcd.User and Etcd.Pass must be set together".into()));
        }
        Ok(())
    }

    /// `(user, password)` if both are set, as go-zero's `HasAccount`.
    pub fn account(&self) -> Option<(String, String)> {
        match (&self.user, &self.pass) {
            (Some(user), Some(pass)) if !user.is_empty() => Some((user.clone(), pass.clone())),
            _ => None,
        }
    }

    /// The fixed instance id, if configured and positive (go-zero ignores ≤ 0).
    pub fn fixed_id(&self) -> Option<i64> {
        self.id.filter(|id| *id > 0)
    }

    /// go-zero's `BuildDiscovTarget(hosts, key)` (≤ v1.10.1):
    /// `etcd://h1:2379,h2:2379/order.rpc`.
    pub fn target(&self) -> String {
        format!("etcd://{}/{}", self.hosts.join(","), self.key)
    }
}

fn default_non_block() -> bool {
    true
}

fn default_timeout_ms() -> u64 {
    2000
}

/// go-zero's `zrpc.RpcClientConf`: how a client finds a gRPC service.
///
/// Exactly one way is used, in go-zero's priority order: `Endpoints`
/// (direct, no etcd), else `Target` (verbatim), else `Etcd`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct RpcClientConf {
    /// Resolve through etcd (the demo's choice).
    #[serde(default)]
    pub etcd: Option<EtcdConf>,
    /// Fixed `host:port` list, no discovery.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// A ready-made target string (`etcd://…`, `direct:///…`).
    #[serde(default)]
    pub target: Option<String>,
    /// go-zero ≥ 1.5 default `true`: do not block startup until a connection
    /// is up. Our channels always connect lazily; `false` makes the service
    /// wait for at least one instance at startup (see the service kit).
    #[serde(default = "default_non_block")]
    pub non_block: bool,
    /// Per-call deadline in milliseconds (go-zero's client timeout
    /// interceptor), default 2000.
    #[serde(default = "default_timeout_ms")]
    pub timeout: u64,
}

impl RpcClientConf {
    /// A configuration that resolves `etcd` (defaults for the rest).
    pub fn from_etcd(etcd: EtcdConf) -> RpcClientConf {
        RpcClientConf {
            etcd: Some(etcd),
            endpoints: Vec::new(),
            target: None,
            non_block: default_non_block(),
            timeout: default_timeout_ms(),
        }
    }

    /// A configuration with a fixed endpoint list (defaults for the rest).
    pub fn from_endpoints(endpoints: Vec<String>) -> RpcClientConf {
        RpcClientConf {
            etcd: None,
            endpoints,
            target: None,
            non_block: default_non_block(),
            timeout: default_timeout_ms(),
        }
    }

    /// go-zero's `BuildTarget()` as of v1.4.2 … v1.10.1:
    /// `Endpoints` → `direct:///h1:p,h2:p`; `Target` → as is;
    /// `Etcd` → `etcd://h1:2379,h2:2379/<Key>`.
    ///
    /// The legacy etcd form matters: saga step URLs are this string plus
    /// `/pb.order/create`, and dtm's go-zero driver only splits that form.
    pub fn build_target(&self) -> Result<String, DiscoveryError> {
        if !self.endpoints.is_empty() {
            if let Some(bad) = self.endpoints.iter().find(|e| e.trim().is_empty() || e.contains(',')) {
                return Err(DiscoveryError::Config(format!("bad entry {bad:?} in Endpoints")));
            }
            return Ok(format!("direct:///{}", self.endpoints.join(",")));
        }
        if let Some(target) = self.target.as_deref().filter(|t| !t.is_empty()) {
            return Ok(target.to_string());
        }
        match &self.etcd {
            Some(etcd) => {
                etcd.validate()?;
                Ok(etcd.target())
            }
            None => Err(DiscoveryError::Config("rpc client needs one of Endpoints, Target or Etcd".into())),
        }
    }

    /// The per-call deadline as a [`Duration`].
    pub fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_demos_yaml_blocks() {
        let yaml = "Etcd:\n  Hosts:\n  - 127.0.0.1:2379\n  Key: order.rpc\nTimeout: 5000\n";
        let conf: RpcClientConf = serde_yaml_ng::from_str(yaml).unwrap();
        assert_eq!(conf.etcd.as_ref().unwrap().hosts, vec!["127.0.0.1:2379"]);
        assert!(conf.non_block, "NonBlock defaults to true");
        assert_eq!(conf.call_timeout(), Duration::from_secs(5));
        assert_eq!(conf.build_target().unwrap(), "etcd://127.0.0.1:2379/order.rpc");

        let server: EtcdConf =
            serde_yaml_ng::from_str("Hosts: [a:2379, b:2379]\nKey: stock.rpc\nID: 7\nUser: u\nPass: p\n")
                .unwrap();
        assert_eq!(server.fixed_id(), Some(7));
        assert_eq!(server.account(), Some(("u".into(), "p".into())));
        assert_eq!(server.target(), "etcd://a:2379,b:2379/stock.rpc");
    }

    #[test]
    fn build_target_follows_go_zeros_priority() {
        let mut conf =
            RpcClientConf::from_etcd(EtcdConf::new(vec!["h1:2379".into(), "h2:2379".into()], "order.rpc"));
        assert_eq!(conf.build_target().unwrap(), "etcd://h1:2379,h2:2379/order.rpc");
        conf.target = Some("etcd://x:2379/other.rpc".into());
        assert_eq!(conf.build_target().unwrap(), "etcd://x:2379/other.rpc");
        conf.endpoints = vec!["127.0.0.1:9001".into(), "127.0.0.1:9011".into()];
        assert_eq!(conf.build_target().unwrap(), "direct:///127.0.0.1:9001,127.0.0.1:9011");
        conf.endpoints = vec![];
        assert_eq!(
            RpcClientConf::from_endpoints(vec!["a:1".into()]).build_target().unwrap(),
            "direct:///a:1"
        );
    }

    #[test]
    fn rejects_typos_and_bad_values_clearly() {
        let typo = serde_yaml_ng::from_str::<EtcdConf>("Host: [a:2379]\nKey: k\n").unwrap_err();
        assert!(typo.to_string().contains("unknown field `Host`"), "{typo}");
        let tls = serde_yaml_ng::from_str::<EtcdConf>("Hosts: [a:2379]\nKey: k\nCertFile: x\n").unwrap_err();
        assert!(tls.to_string().contains("CertFile"), "{tls}");
        for (conf, needle) in [
            (EtcdConf::new(vec![], "k"), "hosts"),
            (EtcdConf::new(vec!["a:1".into()], ""), "key"),
            (EtcdConf::new(vec!["a:1".into()], "a/b"), "one path segment"),
            (EtcdConf::new(vec!["a:1,b:1".into()], "k"), "single host"),
        ] {
            let err = conf.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
        let mut half = EtcdConf::new(vec!["a:1".into()], "k");
        half.user = Some("u".into());
        assert!(half.validate().is_err());
        let none = RpcClientConf { etcd: None, ..RpcClientConf::from_endpoints(vec![]) };
        assert!(none.build_target().unwrap_err().to_string().contains("Endpoints, Target or Etcd"));
    }
}
