//! Target strings: what a client dials, and how dtm splits a branch URL.
//!
//! go-zero and dtm pass services around as strings:
//!
//! | string                                   | meaning                               |
//! |------------------------------------------|---------------------------------------|
//! | `127.0.0.1:9001`                         | one fixed instance                    |
//! | `127.0.0.1:9001,127.0.0.1:9011`          | a fixed list (our shorthand)          |
//! | `direct:///127.0.0.1:9001,127.0.0.1:9011`| a fixed list (go-zero `Endpoints`)    |
//! | `etcd://h1:2379,h2:2379/order.rpc`       | every value under `order.rpc/` in etcd|
//! | `etcd:///h1:2379,h2:2379?key=order.rpc`  | the same, go-zero ≥ v1.10.2 spelling  |
//!
//! A saga step URL is a target plus a gRPC method path:
//! `etcd://127.0.0.1:2379/order.rpc/pb.order/create`. [`parse_server_method`]
//! splits it exactly like dtm's go-zero driver.

use std::fmt;

use crate::DiscoveryError;

/// A parsed target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A fixed list of `host:port` addresses.
    Direct(Vec<String>),
    /// Every instance registered in etcd under `<key>/`.
    Etcd(EtcdTarget),
}

/// The etcd part of a target: which cluster, which service key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EtcdTarget {
    /// etcd endpoints (`host:port`), in the order written.
    pub hosts: Vec<String>,
    /// Service key, e.g. `order.rpc` (instances are `order.rpc/<id>`).
    pub key: String,
}

impl EtcdTarget {
    /// The host list sorted and comma-joined: go-zero shares one etcd
    /// client per such string, and so do we.
    pub fn cluster_id(&self) -> String {
        let mut hosts = self.hosts.clone();
        hosts.sort();
        hosts.join(",")
    }
}

impl Target {
    /// Parses any of the forms in the module docs.
    pub fn parse(target: &str) -> Result<Target, DiscoveryError> {
        let bad = |reason: &str| DiscoveryError::Config(format!("bad target {target:?}: {reason}"));
        let Some((scheme, rest)) = target.split_once("://") else {
            return Ok(Target::Direct(split_hosts(target).ok_or_else(|| bad("empty host list"))?));
        };
        match scheme {
            "direct" => {
                let list = rest.trim_start_matches('/');
                Ok(Target::Direct(split_hosts(list).ok_or_else(|| bad("empty host list"))?))
            }
            "etcd" | "discov" => {
                let (authority, path_and_query) = match rest.find(['/', '?']) {
                    Some(i) => rest.split_at(i),
                    None => (rest, ""),
                };
                let (path, query) = path_and_query.split_once('?').unwrap_or((path_and_query, ""));
                let (hosts, key) = if !authority.is_empty() {
                    // Legacy form: hosts in the authority, key in the path.
                    (authority, path.trim_start_matches('/'))
                } else {
                    // go-zero ≥ v1.10.2: hosts in the path, key in `?key=`.
                    let key = query.split('&').find_map(|kv| kv.strip_prefix("key=")).unwrap_or("");
                    (path.trim_start_matches('/'), key)
                };
                let hosts = split_hosts(hosts).ok_or_else(|| bad("no etcd hosts"))?;
                if key.is_empty() || key.contains('/') {
                    return Err(bad("the service key must be exactly one path segment"));
                }
                Ok(Target::Etcd(EtcdTarget { hosts, key: key.to_string() }))
            }
            other => Err(bad(&format!("unsupported scheme {other:?} (direct, etcd, discov)"))),
        }
    }
}

impl fmt::Display for Target {
    /// The canonical spelling: `direct:///a,b` or the legacy `etcd://hosts/key`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Direct(list) => write!(f, "direct:///{}", list.join(",")),
            Target::Etcd(etcd) => write!(f, "etcd://{}/{}", etcd.hosts.join(","), etcd.key),
        }
    }
}

impl std::str::FromStr for Target {
    type Err = DiscoveryError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Target::parse(s)
    }
}

/// Splits `a,b,c`, dropping blanks; `None` if nothing is left.
fn split_hosts(list: &str) -> Option<Vec<String>> {
    let hosts: Vec<String> =
        list.split(',').map(str::trim).filter(|h| !h.is_empty()).map(str::to_string).collect();
    (!hosts.is_empty()).then_some(hosts)
}

/// Splits a branch URL into `(server, method)` exactly as dtm's go-zero
/// driver (`dtmdriver-gozero` `ParseServerMethod`):
///
/// * no `//` in the URL: split at the first `/`
///   (`localhost:9001/pb.order/create` → `localhost:9001`, `/pb.order/create`);
/// * otherwise the server is `scheme://host/<first path segment>` and the
///   method is the rest (`etcd://h:2379/order.rpc/pb.order/create` →
///   `etcd://h:2379/order.rpc`, `/pb.order/create`). For consul/nacos URLs
///   with a query, the query up to its first `/` is dropped first, as dtm does.
///
/// Unlike Go, a URL without a method part is an error instead of a method
/// equal to the whole path.
pub fn parse_server_method(url: &str) -> Result<(String, String), DiscoveryError> {
    let bad = |reason: &str| DiscoveryError::Config(format!("bad branch url {url:?}: {reason}"));
    if !url.contains("//") {
        let sep = url.find('/').ok_or_else(|| bad("no '/' found"))?;
        let (server, method) = url.split_at(sep);
        if server.is_empty() || method.len() < 2 {
            return Err(bad("expected host:port/package.Service/Method"));
        }
        return Ok((server.to_string(), method.to_string()));
    }
    let mut uri = url.to_string();
    if (url.contains("consul") || url.contains("nacos")) && url.contains('?') {
        let (head, query) = url.split_once('?').unwrap_or((url, ""));
        let sep = query.find('/').ok_or_else(|| bad("no '/' found"))?;
        uri = format!("{head}{}", &query[sep..]);
    }
    let (scheme, rest) = uri.split_once("://").ok_or_else(|| bad("expected scheme://"))?;
    let (host, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => return Err(bad("no path after the host")),
    };
    // `path` starts with '/'; the first segment after it is the service key.
    let index = path[1..].find('/').map(|i| i + 1).ok_or_else(|| bad("no method after the service key"))?;
    let (key, method) = path.split_at(index);
    if key.len() < 2 || method.len() < 2 {
        return Err(bad("expected scheme://hosts/key/package.Service/Method"));
    }
    Ok((format!("{scheme}://{host}{key}"), method.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_the_articles_etcd_urls_like_dtm() {
        let (server, method) =
            parse_server_method("etcd://127.0.0.1:2379/order.rpc/pb.order/create").unwrap();
        assert_eq!(server, "etcd://127.0.0.1:2379/order.rpc");
        assert_eq!(method, "/pb.order/create");
        let (server, method) =
            parse_server_method("etcd://127.0.0.1:2379/stock.rpc/pb.stock/deductRollback").unwrap();
        assert_eq!(server, "etcd://127.0.0.1:2379/stock.rpc");
        assert_eq!(method, "/pb.stock/deductRollback");
        let (server, method) =
            parse_server_method("etcd://10.0.4.11:2379,10.0.4.12:2379/trans.rpc/trans.TransSvc/TransOut")
                .unwrap();
        assert_eq!(server, "etcd://10.0.4.11:2379,10.0.4.12:2379/trans.rpc");
        assert_eq!(method, "/trans.TransSvc/TransOut");
    }

    #[test]
    fn splits_direct_urls_at_the_first_slash() {
        let (server, method) = parse_server_method("localhost:9001/pb.order/create").unwrap();
        assert_eq!((server.as_str(), method.as_str()), ("localhost:9001", "/pb.order/create"));
        assert!(parse_server_method("localhost:9001").is_err());
        assert!(parse_server_method("etcd://127.0.0.1:2379/order.rpc").is_err());
    }

    #[test]
    fn strips_the_query_of_consul_urls_like_dtm() {
        let (server, method) =
            parse_server_method("consul://127.0.0.1:8500/order.rpc?wait=14s/pb.order/create").unwrap();
        assert_eq!(server, "consul://127.0.0.1:8500/order.rpc");
        assert_eq!(method, "/pb.order/create");
    }

    #[test]
    fn parses_every_target_form() {
        let etcd = Target::Etcd(EtcdTarget {
            hosts: vec!["h1:2379".into(), "h2:2379".into()],
            key: "order.rpc".into(),
        });
        assert_eq!(Target::parse("etcd://h1:2379,h2:2379/order.rpc").unwrap(), etcd);
        assert_eq!(Target::parse("discov://h1:2379,h2:2379/order.rpc").unwrap(), etcd);
        assert_eq!(Target::parse("etcd:///h1:2379,h2:2379?key=order.rpc").unwrap(), etcd);
        assert_eq!(etcd.to_string(), "etcd://h1:2379,h2:2379/order.rpc");
        let direct = Target::Direct(vec!["a:1".into(), "b:2".into()]);
        assert_eq!(Target::parse("direct:///a:1,b:2").unwrap(), direct);
        assert_eq!(Target::parse("a:1,b:2").unwrap(), direct);
        assert_eq!(direct.to_string(), "direct:///a:1,b:2");
        assert!(Target::parse("etcd://h1:2379/").is_err());
        assert!(Target::parse("etcd://h1:2379/a/b").is_err());
        assert!(Target::parse("consul://h:8500/order.rpc").is_err());
        assert!(Target::parse("direct:///").is_err());
    }

    #[test]
    fn cluster_id_ignores_host_order() {
        let a = EtcdTarget { hosts: vec!["b:1".into(), "a:1".into()], key: "k".into() };
        let b = EtcdTarget { hosts: vec!["a:1".into(), "b:1".into()], key: "x".into() };
        assert_eq!(a.cluster_id(), b.cluster_id());
    }
}
