//! Faults over three `shardc-run serve` processes on loopback (issue 13): a killed
//! client, a restarted device, replayed messages, a device that stops answering, and
//! participants that do not share the secret. Each ends in the reference tokens or an
//! error naming the cause — never other tokens with exit status 0.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::fixture_dir;
use common::net::{
    cluster, compile, generate_command, ids, local_tokens, port_base, serve, serve_command, serve_device, serve_each,
    shardc_run, tokens_of,
};

fn llama32(dir: &Path) -> PathBuf {
    let out = dir.join("out");
    compile(&fixture_dir("llama32").join("hf"), &out, &[]);
    out
}

fn stderr_of(mut c: Child) -> String {
    let _ = c.kill();
    let _ = c.wait();
    let mut log = String::new();
    use std::io::Read;
    if let Some(mut e) = c.stderr.take() {
        let _ = e.read_to_string(&mut log);
    }
    log
}

/// Start a 40-token generation and kill the client (SIGKILL) 1.5 s into it.
fn kill_mid_generation(out: &Path, cluster_file: &Path, ids: &str) {
    let mut client = generate_command(out, cluster_file, ids)
        .args(["--max-new-tokens", "40", "--timeout", "10"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    client.kill().unwrap();
    client.wait().unwrap();
}

/// `n` tokens from the serving devices; the generation must succeed.
fn generate_tokens(out: &Path, cluster_file: &Path, ids: &str, n: usize) -> Vec<i64> {
    let gen =
        generate_command(out, cluster_file, ids).args(["--max-new-tokens", &n.to_string(), "--json"]).output().unwrap();
    assert!(gen.status.success(), "{}", String::from_utf8_lossy(&gen.stderr));
    tokens_of(&gen.stdout)
}

#[test]
fn a_killed_client_leaves_nothing_that_changes_the_next_generation() {
    let dir = tempfile::tempdir().unwrap();
    let out = llama32(dir.path());
    let (cluster_file, _) = cluster(dir.path(), port_base(71));
    let mut devices = serve(&out, &cluster_file, &["--slowdown", "10", "--session-timeout", "2"]);
    let (ids, expected) = ids("llama32");
    // Generation of request 0, killed mid-way (its KV cache is on the devices).
    kill_mid_generation(&out, &cluster_file, &ids);
    // The devices drop the quiet client's session after --session-timeout.
    std::thread::sleep(Duration::from_millis(3000));
    // The next generation (request 0 again) gives the reference tokens.
    assert_eq!(generate_tokens(&out, &cluster_file, &ids, 8), expected);
    // Killed again mid-way: the next session replaces it at once.
    kill_mid_generation(&out, &cluster_file, &ids);
    assert_eq!(generate_tokens(&out, &cluster_file, &ids, 8), expected);
    let log = stderr_of(devices.0.remove(0));
    assert!(log.contains("its client went quiet"), "{log}");
    assert!(log.contains("a new session started"), "{log}");
}

#[test]
fn a_device_restarted_mid_generation_is_named_or_the_tokens_are_exact() {
    let dir = tempfile::tempdir().unwrap();
    let out = llama32(dir.path());
    let (ids, _) = ids("llama32");
    let reference = local_tokens(&out, &ids, 40);
    let (cluster_file, _) = cluster(dir.path(), port_base(73));
    let mut devices = serve(&out, &cluster_file, &["--slowdown", "10"]);
    let gen = generate_command(&out, &cluster_file, &ids)
        .args(["--max-new-tokens", "40", "--timeout", "3", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    devices.0[1].kill().unwrap();
    devices.0[1].wait().unwrap();
    // The same device, back at once (its old session is gone).
    devices.0[1] = serve_device(&out, "dev-b", &cluster_file, &["--slowdown", "10"]);
    let restarted = Instant::now();
    let result = gen.wait_with_output().unwrap();
    assert!(restarted.elapsed() < Duration::from_secs(8), "took {:?}", restarted.elapsed());
    let stderr = String::from_utf8_lossy(&result.stderr);
    if result.status.success() {
        assert_eq!(tokens_of(&result.stdout), reference, "exit 0 must mean the reference tokens");
    } else {
        eprintln!("restart ended in: {stderr}");
        assert!(stderr.contains("dev-b"), "the error names the restarted device: {stderr}");
        assert!(!stderr.contains("dev-a") && !stderr.contains("dev-c"), "and no other: {stderr}");
    }
    // And the cluster serves the next generation exactly.
    assert_eq!(generate_tokens(&out, &cluster_file, &ids, 40), reference);
}

/// Forwards every message from `from` to `to`, sent twice (a replay of each), and keeps
/// them for replaying later.
struct Proxy {
    captured: Arc<Mutex<Vec<Vec<Vec<u8>>>>>,
    forwarded: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    ctx: zmq::Context,
    to: String,
}

impl Proxy {
    fn start(from: &str, to: &str) -> Proxy {
        let ctx = zmq::Context::new();
        let pull = ctx.socket(zmq::PULL).unwrap();
        pull.bind(from).unwrap();
        let push = ctx.socket(zmq::PUSH).unwrap();
        push.connect(to).unwrap();
        let captured = Arc::new(Mutex::new(Vec::new()));
        let forwarded = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, f, s) = (captured.clone(), forwarded.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if pull.poll(zmq::POLLIN, 50).unwrap() == 0 {
                    continue;
                }
                let parts = pull.recv_multipart(0).unwrap();
                push.send_multipart(parts.clone(), 0).unwrap();
                push.send_multipart(parts.clone(), 0).unwrap();
                f.fetch_add(1, Ordering::Relaxed);
                c.lock().unwrap().push(parts);
            }
        });
        Proxy { captured, forwarded, stop, thread: Some(thread), ctx, to: to.to_string() }
    }

    /// Send captured message `i` again.
    fn replay(&self, i: usize) {
        let push = self.ctx.socket(zmq::PUSH).unwrap();
        push.set_linger(2000).unwrap();
        push.connect(&self.to).unwrap();
        let parts = self.captured.lock().unwrap()[i].clone();
        push.send_multipart(parts, 0).unwrap();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn replayed_messages_are_dropped_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = llama32(dir.path());
    let (ids, expected) = ids("llama32");
    let (cluster_file, addrs) = cluster(dir.path(), port_base(75));
    // dev-b really listens elsewhere; everyone else reaches it through the proxy.
    let real = format!("tcp://127.0.0.1:{}", port_base(75) + 7);
    let own = dir.path().join("dev-b.toml");
    std::fs::write(&own, std::fs::read_to_string(&cluster_file).unwrap().replace(&addrs[2], &real)).unwrap();
    let proxy = Proxy::start(&addrs[2], &real);
    let mut devices = serve_each(&out, &cluster_file, |_| vec![]);
    // Restart dev-b on its own cluster file.
    let _ = devices.0[1].kill();
    let _ = devices.0[1].wait();
    devices.0[1] = serve_device(&out, "dev-b", &own, &[]);
    std::thread::sleep(Duration::from_millis(300));
    // Every message to dev-b arrives twice: the copies are dropped.
    assert_eq!(generate_tokens(&out, &cluster_file, &ids, 8), expected);
    let n = proxy.forwarded.load(Ordering::Relaxed);
    assert!(n >= 8, "only {n} messages went through the proxy");
    // Captured messages of the finished session, sent again: the open, a prefill step,
    // a decode step.
    for i in [0, 1, n / 2] {
        proxy.replay(i);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(generate_tokens(&out, &cluster_file, &ids, 8), expected);
    drop(proxy);
    let log = stderr_of(devices.0.remove(1));
    assert!(log.contains("dropped a replayed"), "{log}");
    assert!(log.contains("dropped a message of a session that ended"), "{log}");
}

#[test]
fn a_device_that_stops_answering_is_named_within_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let out = llama32(dir.path());
    let (cluster_file, _) = cluster(dir.path(), port_base(77));
    let devices = serve(&out, &cluster_file, &["--slowdown", "10"]);
    let (ids, _) = ids("llama32");
    let gen = generate_command(&out, &cluster_file, &ids)
        .args(["--max-new-tokens", "40", "--timeout", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // Frozen, not dead: its socket still accepts messages.
    let pid = devices.0[2].id().to_string();
    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let stopped = Instant::now();
    let result = gen.wait_with_output().unwrap();
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    assert!(stopped.elapsed() < Duration::from_secs(5), "took {:?}", stopped.elapsed());
    assert!(!result.status.success());
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(stderr.contains("device `dev-c`"), "{stderr}");
}

#[test]
fn participants_must_share_the_secret_or_all_say_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let out = llama32(dir.path());
    let (cluster_file, _) = cluster(dir.path(), port_base(79));
    // Neither a secret nor --insecure.
    let o = serve_command(&out, "dev-a", &cluster_file).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--secret-file FILE"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // A secret too short to be one.
    let short = dir.path().join("short");
    std::fs::write(&short, "pw").unwrap();
    let o = serve_command(&out, "dev-a", &cluster_file).arg("--secret-file").arg(&short).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("at least 16"));
    // Devices with the secret, a client without it: the client names them, quickly.
    let mut devices = serve(&out, &cluster_file, &[]);
    let (ids, expected) = ids("llama32");
    let started = Instant::now();
    let o = Command::new(shardc_run())
        .arg("generate")
        .arg(&out)
        .args(["--cluster", cluster_file.to_str().unwrap(), "--input-ids", &ids, "--insecure"])
        .args(["--start-timeout", "2"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("did not answer the session's opening") && err.contains("dev-a"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let log = stderr_of(devices.0.remove(0));
    assert!(log.contains("is not encrypted"), "{log}");
    drop(devices);
    // All insecure: it works, in the clear.
    let _plain = serve(&out, &cluster_file, &["--insecure"]);
    let o = Command::new(shardc_run())
        .arg("generate")
        .arg(&out)
        .args(["--cluster", cluster_file.to_str().unwrap(), "--input-ids", &ids, "--insecure", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(tokens_of(&o.stdout), expected);
}
