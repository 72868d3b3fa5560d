//! Which address a server publishes in etcd.
//!
//! A server usually listens on `0.0.0.0:9001`, which is useless to a
//! client. go-zero (`figureOutListenOn`) replaces an empty or `0.0.0.0` host
//! by the `POD_IP` environment variable (set by Kubernetes' downward API) or
//! else by the first IPv4 address of the first interface that is up and not
//! a loopback (`netx.InternalIp`). Any other host is published verbatim.

use std::net::Ipv4Addr;

use nix::ifaddrs::getifaddrs;
use nix::net::if_::InterfaceFlags;

use crate::DiscoveryError;

/// The environment variable go-zero reads first.
pub const POD_IP_ENV: &str = "POD_IP";

/// The `host:port` to register for a server listening on `listen_on`.
///
/// `0.0.0.0:9001` → `172.17.0.5:9001` (or `$POD_IP:9001`);
/// `10.0.0.7:9001` and `localhost:9001` → unchanged.
pub fn publish_address(listen_on: &str) -> Result<String, DiscoveryError> {
    let pod_ip = std::env::var(POD_IP_ENV).ok();
    figure_out_listen_on(listen_on, pod_ip.as_deref(), internal_ip)
}

/// go-zero's rule with its inputs made explicit (so it can be unit-tested).
fn figure_out_listen_on(
    listen_on: &str,
    pod_ip: Option<&str>,
    internal_ip: impl FnOnce() -> Option<Ipv4Addr>,
) -> Result<String, DiscoveryError> {
    // Like go-zero: split at ':' and look at the first field only, so
    // `[::]:9001` (host `[`) is published as is.
    let (host, rest) = listen_on.split_once(':').unwrap_or((listen_on, ""));
    if !host.is_empty() && host != "0.0.0.0" {
        return Ok(listen_on.to_string());
    }
    let ip = match pod_ip.filter(|ip| !ip.is_empty()) {
        Some(ip) => ip.to_string(),
        None => internal_ip()
            .ok_or_else(|| {
                DiscoveryError::NoPublishAddress(format!(
                    "{listen_on:?} listens on all interfaces, {POD_IP_ENV} is not set and no \
                     interface that is up has a non-loopback IPv4 address"
                ))
            })?
            .to_string(),
    };
    Ok(if rest.is_empty() { ip } else { format!("{ip}:{rest}") })
}

/// The first non-loopback IPv4 address of an interface that is up
/// (go-zero's `netx.InternalIp`), in the kernel's interface order.
pub fn internal_ip() -> Option<Ipv4Addr> {
    let addrs = match getifaddrs() {
        Ok(addrs) => addrs,
        Err(err) => {
            tracing::warn!(%err, "getifaddrs failed");
            return None;
        }
    };
    addrs
        .filter(|a| {
            a.flags.contains(InterfaceFlags::IFF_UP) && !a.flags.contains(InterfaceFlags::IFF_LOOPBACK)
        })
        .filter_map(|a| a.address.as_ref().and_then(|s| s.as_sockaddr_in()).map(|sin| sin.ip()))
        .find(|ip| !ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth0() -> Option<Ipv4Addr> {
        Some(Ipv4Addr::new(172, 17, 0, 5))
    }

    #[test]
    fn replaces_unspecified_hosts_like_go_zero() {
        assert_eq!(figure_out_listen_on("0.0.0.0:9001", None, eth0).unwrap(), "172.17.0.5:9001");
        assert_eq!(figure_out_listen_on(":9001", None, eth0).unwrap(), "172.17.0.5:9001");
        assert_eq!(figure_out_listen_on("0.0.0.0:9001", Some("10.1.2.3"), eth0).unwrap(), "10.1.2.3:9001");
        assert_eq!(figure_out_listen_on("0.0.0.0:9001", Some(""), eth0).unwrap(), "172.17.0.5:9001");
    }

    #[test]
    fn keeps_explicit_hosts() {
        assert_eq!(figure_out_listen_on("127.0.0.1:9001", Some("10.1.2.3"), eth0).unwrap(), "127.0.0.1:9001");
        assert_eq!(figure_out_listen_on("order-srv:9001", None, || None).unwrap(), "order-srv:9001");
    }

    #[test]
    fn refuses_to_publish_an_unreachable_address() {
        let err = figure_out_listen_on("0.0.0.0:9001", None, || None).unwrap_err();
        assert!(matches!(err, DiscoveryError::NoPublishAddress(_)), "{err}");
    }

    #[test]
    fn internal_ip_is_never_loopback() {
        if let Some(ip) = internal_ip() {
            assert!(!ip.is_loopback());
        }
    }
}
