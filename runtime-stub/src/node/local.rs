//! Every device of a compile output as a thread of this process, over in-process
//! sockets, and the client driving them: what `shardc-run local` and the C library's
//! `shardc_local` run.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shardc_format::Cluster;

use super::{generate, serve, Generation, Job, NetError, NetOptions, Slowdown, MAX_TIMEOUT_S};

/// How the in-process devices run.
#[derive(Clone, Debug, Default)]
pub struct LocalOptions {
    /// One device emulated slower: its name and slowdown.
    pub slow: Option<(String, Slowdown)>,
    /// Frames between the threads in the clear (by default encrypted with a random key,
    /// as over a network).
    pub insecure: bool,
    /// Each device runs ready steps one by one, not batched (for measuring batching).
    pub no_batch: bool,
}

/// Run `job` on the packages in `out`, every device a thread of this process.
pub fn local(out: &Path, job: &Job, opts: &LocalOptions) -> Result<Generation, NetError> {
    let ctx = zmq::Context::new();
    // The devices the transmission map names (checked against their packages).
    let output = crate::package::load_output(out, false)?;
    let devices: BTreeMap<String, String> =
        output.map.stages.iter().map(|name| (name.clone(), format!("inproc://{name}"))).collect();
    if let Some((d, _)) = &opts.slow {
        if !devices.contains_key(d) {
            return Err(NetError::Other(format!("slow device `{d}` is not one of the packages in {}", out.display())));
        }
    }
    let cluster = Cluster { client: "inproc://client".into(), devices };
    let key = if opts.insecure { None } else { Some(crate::wire::random::<32>()?) };
    let net = NetOptions {
        key,
        max_frame: 1 << 30,
        slowdown: Slowdown::NONE,
        session_timeout: Duration::from_secs_f64(MAX_TIMEOUT_S),
        batch: !opts.no_batch,
    };
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel::<Ended>();
    // Threads named for debuggers and profilers (Linux shows the first 15 bytes). One
    // that cannot start stops those that did.
    let failed = |what: &str, e: std::io::Error| {
        stop.store(true, Ordering::Relaxed);
        NetError::Other(format!("cannot start {what}'s thread: {e}"))
    };
    let mut handles = Vec::with_capacity(cluster.devices.len());
    for d in cluster.devices.keys() {
        let mut net = net.clone();
        if let Some((_, slowdown)) = opts.slow.as_ref().filter(|(name, _)| name == d) {
            net.slowdown = *slowdown;
        }
        let (out, d, cluster, ctx, stop, tx) =
            (out.to_path_buf(), d.clone(), cluster.clone(), ctx.clone(), stop.clone(), tx.clone());
        let spawned = std::thread::Builder::new().name(format!("device {d}")).spawn(move || {
            let result = serve(&out, &d, &cluster, &ctx, &net, stop);
            let _ = tx.send(Ended::Device(d, result));
        });
        handles.push(spawned.map_err(|e| failed("a device", e))?);
    }
    {
        let (out, cluster, ctx, job, tx) = (out.to_path_buf(), cluster.clone(), ctx.clone(), job.clone(), tx.clone());
        let spawned = std::thread::Builder::new().name("client".into()).spawn(move || {
            let _ = tx.send(Ended::Client(generate(&out, &cluster, &ctx, &net, &job)));
        });
        spawned.map_err(|e| failed("the client", e))?;
    }
    drop(tx);
    // The client's answer, or the first device that fails before it: a device that
    // cannot load its package fails at once, and its client would otherwise wait for
    // its answer until the start timeout. (The client's thread then ends at its own
    // timeout.)
    let result = loop {
        match rx.recv() {
            Ok(Ended::Client(result)) => break result,
            Ok(Ended::Device(device, Err(e))) => {
                break Err(NetError::Device { device, message: format!("stopped: {e}") });
            }
            Ok(Ended::Device(_, Ok(()))) => {}
            Err(_) => break Err(NetError::Other("the client's thread ended without an answer".into())),
        }
    };
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        if h.join().is_err() && result.is_ok() {
            return Err(NetError::Other("a device thread panicked".into()));
        }
    }
    result
}

/// A thread of [`local`] that ended.
enum Ended {
    Client(Result<Generation, NetError>),
    Device(String, Result<(), NetError>),
}
