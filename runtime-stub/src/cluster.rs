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

fn loopback(address: &str) -> bool {
    if address.starts_with("inproc://") {
        return true;
    }
    let Some(rest) = address.strip_prefix("tcp://") else { return false };
    let host = rest.rsplit_once(':').map_or(rest, |(h, _)| h);
    host == "localhost" || host == "[::1]" || host.starts_with("127.")
}

impl Cluster {
    /// Read and check a cluster file.
    pub fn load(path: &Path, allow_remote: bool) -> Result<Cluster, String> {
        let text = shardc_ir::files::read_text(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let c: Cluster = toml::from_str(&text).map_err(|e| format!("{}: {}", path.display(), e.message()))?;
        c.check(allow_remote).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(c)
    }

    /// Every address is loopback unless `allow_remote`.
    pub fn check(&self, allow_remote: bool) -> Result<(), String> {
        for (who, addr) in
            std::iter::once(("client", &self.client)).chain(self.devices.iter().map(|(k, v)| (k.as_str(), v)))
        {
            if !allow_remote && !loopback(addr) {
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
