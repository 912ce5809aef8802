//! Helpers for tests that run `shardc-run` processes on loopback.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::{meta, root};

/// The `shardc-run` binary beside `shardc`.
pub fn shardc_run() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_shardc")).with_file_name("shardc-run");
    assert!(p.exists(), "{} is missing: build the workspace (cargo test --workspace)", p.display());
    p
}

/// `shardc compile` for `loopback-3.toml`, throughput objective, with `extra` arguments.
pub fn compile(model: &Path, out: &Path, extra: &[&str]) {
    let st = super::shardc_command()
        .arg("compile")
        .arg(model)
        .args(extra)
        .args(["--devices", root().join("fixtures/devices/loopback-3.toml").to_str().unwrap()])
        .args(["--objective", "throughput", "--prompt-len", "16", "--max-context", "64", "-o"])
        .arg(out)
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
}

/// The secret file beside a cluster file (written by [`cluster`]).
pub fn secret_of(cluster: &Path) -> PathBuf {
    cluster.with_file_name("secret")
}

/// A cluster file on free-looking loopback ports, and a shared secret beside it
/// ([`secret_of`]); returns its path and the addresses.
pub fn cluster(dir: &Path, base: u16) -> (PathBuf, Vec<String>) {
    std::fs::write(dir.join("secret"), format!("secret of the test cluster at port {base}")).unwrap();
    let addrs: Vec<String> = (0..4).map(|i| format!("tcp://127.0.0.1:{}", base + i)).collect();
    let text = format!(
        "client = \"{}\"\n[devices]\ndev-a = \"{}\"\ndev-b = \"{}\"\ndev-c = \"{}\"\n",
        addrs[0], addrs[1], addrs[2], addrs[3]
    );
    let path = dir.join("cluster.toml");
    std::fs::write(&path, text).unwrap();
    (path, addrs)
}

/// A port range unlikely to clash with other tests, and below Linux's ephemeral ports
/// (32768 and up), which outgoing connections take: a device whose address an
/// outgoing connection holds cannot bind it, and its client waits in vain.
pub fn port_base(salt: u16) -> u16 {
    20000 + ((std::process::id() as u16).wrapping_mul(7).wrapping_add(salt * 101) % 12000)
}

pub struct Devices(pub Vec<Child>);

impl Drop for Devices {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `shardc-run serve` for dev-a, dev-b and dev-c, each with `extra` arguments.
pub fn serve(out: &Path, cluster: &Path, extra: &[&str]) -> Devices {
    serve_each(out, cluster, |_| extra.to_vec())
}

/// `shardc-run serve OUT --device DEVICE --cluster CLUSTER`, for the caller to add
/// flags to.
pub fn serve_command(out: &Path, device: &str, cluster: &Path) -> Command {
    let mut c = Command::new(shardc_run());
    c.arg("serve").arg(out).args(["--device", device, "--cluster", cluster.to_str().unwrap()]);
    c
}

/// One serving device with `extra` flags (and the cluster's secret unless they say
/// `--insecure` or give one), its stderr kept.
pub fn serve_device(out: &Path, device: &str, cluster: &Path, extra: &[&str]) -> Child {
    let mut c = serve_command(out, device, cluster);
    if !extra.iter().any(|a| *a == "--insecure" || *a == "--secret-file") {
        c.arg("--secret-file").arg(secret_of(cluster));
    }
    c.args(extra).stderr(Stdio::piped()).spawn().unwrap()
}

/// `shardc-run serve` for dev-a, dev-b and dev-c, each with the arguments `extra` gives it.
pub fn serve_each<'a>(out: &Path, cluster: &Path, extra: impl Fn(&str) -> Vec<&'a str>) -> Devices {
    Devices(["dev-a", "dev-b", "dev-c"].iter().map(|d| serve_device(out, d, cluster, &extra(d))).collect())
}

/// A fixture's prompt (comma-separated) and its PyTorch greedy tokens.
pub fn ids(name: &str) -> (String, Vec<i64>) {
    let m = meta(name);
    let ids: Vec<String> = m["input_ids"].as_array().unwrap().iter().map(|v| v.to_string()).collect();
    (ids.join(","), m["greedy_tokens"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect())
}

/// `shardc-run generate OUT --cluster CLUSTER --secret-file SECRET --input-ids PROMPT`,
/// for the caller to add flags to and run.
pub fn generate_command(out: &Path, cluster: &Path, prompt: &str) -> Command {
    let mut c = Command::new(shardc_run());
    c.arg("generate").arg(out).args(["--cluster", cluster.to_str().unwrap(), "--input-ids", prompt]);
    c.arg("--secret-file").arg(secret_of(cluster));
    c
}

/// Request 0's tokens in a `--json` generation report.
pub fn tokens_of(stdout: &[u8]) -> Vec<i64> {
    let report: serde_json::Value = serde_json::from_slice(stdout).unwrap();
    report["tokens"][0].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect()
}

/// `shardc-run local OUT`: the `n` tokens it generates for `ids` (it must succeed).
pub fn local_tokens(out: &Path, ids: &str, n: usize) -> Vec<i64> {
    let o = Command::new(shardc_run())
        .arg("local")
        .arg(out)
        .args(["--input-ids", ids, "--max-new-tokens", &n.to_string(), "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    tokens_of(&o.stdout)
}
