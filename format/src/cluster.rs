//! `cluster.toml`: where each device (and the client) listens.
//!
//! ```toml
//! client = "tcp://127.0.0.1:5600"
//! [devices]
//! dev-a = "tcp://127.0.0.1:5601"
//! dev-b = "tcp://127.0.0.1:5602"
//! ```
//!
//! Addresses must be on loopback (`127.0.0.0/8`, `localhost`, `[::1]`) or in-process
//! (`inproc://`) unless the caller allows others explicitly.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// Where everyone listens.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub client: String,
    pub devices: BTreeMap<String, String>,
}

/// Where a `tcp://` address listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    Ip(std::net::IpAddr),
    /// A name, resolved when it is used.
    Name(String),
    /// `*`: every interface.
    Any,
}

/// A parsed address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    Inproc(String),
    Tcp { host: Host, port: u16 },
}

/// Parse `inproc://NAME` or `tcp://HOST:PORT` (HOST an IPv4 literal, `[IPv6]`, `*` or a
/// DNS name).
pub fn parse_address(address: &str) -> Result<Address, String> {
    if let Some(name) = address.strip_prefix("inproc://") {
        if name.is_empty() {
            return Err(format!("{address}: no name after inproc://"));
        }
        return Ok(Address::Inproc(name.to_string()));
    }
    let Some(rest) = address.strip_prefix("tcp://") else {
        return Err(format!("{address}: not a tcp:// or inproc:// address"));
    };
    let (host, port) = rest.rsplit_once(':').ok_or_else(|| format!("{address}: no port (tcp://HOST:PORT)"))?;
    let port: u16 = port.parse().map_err(|_| format!("{address}: `{port}` is not a port number"))?;
    let host = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Host::Ip(std::net::IpAddr::V6(v6.parse().map_err(|_| format!("{address}: `{v6}` is not an IPv6 address"))?))
    } else if let Ok(ip) = host.parse::<std::net::Ipv4Addr>() {
        Host::Ip(std::net::IpAddr::V4(ip))
    } else if host == "*" {
        Host::Any
    } else if !host.is_empty()
        && host.len() <= 253
        && host
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    {
        Host::Name(host.to_ascii_lowercase())
    } else {
        return Err(format!("{address}: `{host}` is not an IP address or a host name"));
    };
    Ok(Address::Tcp { host, port })
}

/// Whether `address` stays on this machine: `inproc://`, or `tcp://HOST:PORT` whose
/// host is a loopback IP literal (`127.0.0.0/8`, `[::1]`), `localhost`, or a name that
/// resolves to loopback addresses only. Hosts are parsed, never prefix-matched
/// (`127.attacker.example` is a name, and resolves where it resolves).
pub fn loopback(address: &str) -> Result<bool, String> {
    Ok(match parse_address(address)? {
        Address::Inproc(_) => true,
        Address::Tcp { host: Host::Ip(std::net::IpAddr::V4(ip)), .. } => ip.is_loopback(),
        Address::Tcp { host: Host::Ip(std::net::IpAddr::V6(ip)), .. } => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Address::Tcp { host: Host::Any, .. } => false,
        Address::Tcp { host: Host::Name(name), .. } if name == "localhost" => true,
        Address::Tcp { host: Host::Name(name), port } => {
            use std::net::ToSocketAddrs;
            match (name.as_str(), port).to_socket_addrs() {
                Ok(addrs) => {
                    let addrs: Vec<_> = addrs.collect();
                    !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback())
                }
                Err(_) => false,
            }
        }
    })
}

impl Cluster {
    /// Read and check a cluster file.
    pub fn load(path: &Path, allow_remote: bool) -> Result<Cluster, String> {
        let text = crate::read_text(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        Cluster::parse(&text, allow_remote).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parse and check the text of a cluster file.
    pub fn parse(text: &str, allow_remote: bool) -> Result<Cluster, String> {
        let c: Cluster = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text.as_bytes()[..s.start.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1);
            match line {
                Some(l) => format!("line {l}: {}", e.message()),
                None => e.message().to_string(),
            }
        })?;
        c.check(allow_remote)?;
        Ok(c)
    }

    /// Device names are plain names, addresses are distinct, and every address is
    /// loopback unless `allow_remote`.
    pub fn check(&self, allow_remote: bool) -> Result<(), String> {
        let mut seen = std::collections::BTreeMap::new();
        for name in self.devices.keys() {
            crate::names::check_name(name).map_err(|e| format!("[devices]: {e}"))?;
        }
        for (who, addr) in
            std::iter::once(("client", &self.client)).chain(self.devices.iter().map(|(k, v)| (k.as_str(), v)))
        {
            if let Some(other) = seen.insert(addr.as_str(), who) {
                return Err(format!("`{other}` and `{who}` both listen on {addr}"));
            }
            parse_address(addr).map_err(|e| format!("`{who}`: {e}"))?;
            if !allow_remote && !loopback(addr).map_err(|e| format!("`{who}`: {e}"))? {
                return Err(format!(
                    "`{who}` listens on {addr}, which is not loopback (pass --allow-remote to use other addresses)"
                ));
            }
        }
        Ok(())
    }

    /// The address of a device or `client`.
    pub fn address(&self, who: &str) -> Option<&str> {
        if who == "client" {
            Some(&self.client)
        } else {
            self.devices.get(who).map(String::as_str)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::loopback;

    #[test]
    fn addresses_are_parsed_not_prefix_matched() {
        for a in ["tcp://127.0.0.1:5600", "tcp://127.9.8.7:1", "tcp://[::1]:5600", "tcp://localhost:5600", "inproc://x"]
        {
            assert_eq!(loopback(a), Ok(true), "{a}");
        }
        for a in [
            "tcp://127.attacker.example:5600",
            "tcp://127.0.0.1.attacker.example:5600",
            "tcp://10.0.0.1:5600",
            "tcp://*:5600",
            "tcp://[::2]:5600",
            "tcp://0.0.0.0:5600",
        ] {
            assert_eq!(loopback(a), Ok(false), "{a}");
        }
        for a in
            ["tcp://127.0.0.1", "tcp://127.0.0.1:http", "udp://127.0.0.1:1", "tcp://[zz]:1", "tcp://a b:1", "tcp://:1"]
        {
            assert!(loopback(a).is_err(), "{a}");
        }
    }
}
