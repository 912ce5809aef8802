//! shardc's device runtime as a C library, for apps that embed it (Android through
//! JNI, iOS as a static library): serve one device of a compile output, drive
//! generation over a cluster as its client, or run every device in this process.
//!
//! Every call returns a status (`SHARDC_OK`, or what kind of failure) and, on failure,
//! writes a NUL-terminated message into the caller's buffer (cut to fit, at a UTF-8
//! character boundary). No call aborts the process or unwinds into C: a panic inside
//! becomes `SHARDC_ERR_INTERNAL`. Every function is safe to call from several threads
//! at once (each call owns its sockets; a server handle belongs to whoever started it
//! and is released by `shardc_serve_stop`). The header, `include/shardc.h`, is
//! generated from this file by cbindgen and checked against it by a test.

#![allow(clippy::missing_safety_doc)]

use std::ffi::{c_char, c_int, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use shardc_format::Cluster;
use shardc_runtime::balance::BalanceOptions;
use shardc_runtime::node::{self, Generation, Job, LocalOptions, NetError, NetOptions, Slowdown};

/// Done.
pub const SHARDC_OK: c_int = 0;
/// An input is wrong or unreadable (package, cluster file, secret), or a device or the
/// network failed; the message says which.
pub const SHARDC_ERR_INPUT: c_int = 1;
/// The call's arguments are wrong: a null pointer, text that is not UTF-8, a buffer
/// too small, an option out of range.
pub const SHARDC_ERR_USAGE: c_int = 2;
/// A bug in shardc (a panic, caught at the boundary).
pub const SHARDC_ERR_INTERNAL: c_int = 5;

/// How a participant talks to the others.
#[repr(C)]
pub struct ShardcNet {
    /// File holding the secret every participant shares (at least 16 bytes): frames are
    /// encrypted and authenticated with a key derived from it. NULL only with
    /// `insecure`.
    pub secret_file: *const c_char,
    /// Non-zero: frames in the clear, unauthenticated (`secret_file` must be NULL).
    pub insecure: c_int,
    /// Non-zero: the cluster file may name addresses that are not loopback.
    pub allow_remote: c_int,
}

/// What to generate. Start from `shardc_generate_options()`, which fills in the
/// defaults `shardc-run` uses.
#[repr(C)]
pub struct ShardcGenerate {
    /// Prompt token ids (none negative), `n_input_ids` of them (at least one).
    pub input_ids: *const i64,
    pub n_input_ids: usize,
    /// New tokens to generate.
    pub max_new_tokens: usize,
    /// Seconds to wait for a device before giving up on it (above 0, at most a day).
    pub timeout_s: f64,
    /// Seconds to wait for every device to answer the session's opening.
    pub start_timeout_s: f64,
    /// Non-zero: never move stage boundaries.
    pub no_balance: c_int,
}

/// One device serving in a background thread; released by `shardc_serve_stop`.
pub struct ShardcServer {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<(), NetError>>,
}

/// A failure: its status and message.
struct Fail(c_int, String);

fn usage(message: impl Into<String>) -> Fail {
    Fail(SHARDC_ERR_USAGE, message.into())
}

fn input(e: impl std::fmt::Display) -> Fail {
    Fail(SHARDC_ERR_INPUT, e.to_string())
}

/// Copy `message` into `buf` (`cap` bytes, NUL included), cut at a character boundary.
unsafe fn write_message(buf: *mut c_char, cap: usize, message: &str) {
    if buf.is_null() || cap == 0 {
        return;
    }
    let mut n = message.len().min(cap - 1);
    while !message.is_char_boundary(n) {
        n -= 1;
    }
    std::ptr::copy_nonoverlapping(message.as_ptr(), buf as *mut u8, n);
    *buf.add(n) = 0;
}

/// Run `f`, turning its failure or panic into a status and a message in `err`.
unsafe fn guarded(err: *mut c_char, err_cap: usize, f: impl FnOnce() -> Result<(), Fail>) -> c_int {
    let (status, message) = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => (SHARDC_OK, String::new()),
        Ok(Err(Fail(status, message))) => (status, message),
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown".into());
            (SHARDC_ERR_INTERNAL, format!("internal error (a bug in shardc): {what}"))
        }
    };
    write_message(err, err_cap, &message);
    status
}

/// A C string argument as a path.
unsafe fn path_arg(p: *const c_char, what: &str) -> Result<PathBuf, Fail> {
    Ok(PathBuf::from(text_arg(p, what)?))
}

unsafe fn text_arg(p: *const c_char, what: &str) -> Result<String, Fail> {
    if p.is_null() {
        return Err(usage(format!("{what} is NULL")));
    }
    CStr::from_ptr(p).to_str().map(str::to_string).map_err(|_| usage(format!("{what} is not UTF-8")))
}

unsafe fn job_arg(job: *const ShardcGenerate) -> Result<Job, Fail> {
    let job = job.as_ref().ok_or_else(|| usage("the generation options are NULL"))?;
    if job.input_ids.is_null() || job.n_input_ids == 0 {
        return Err(usage("input_ids: give at least one prompt token"));
    }
    let prompt = std::slice::from_raw_parts(job.input_ids, job.n_input_ids).to_vec();
    if let Some(bad) = prompt.iter().find(|&&t| t < 0) {
        return Err(usage(format!("input_ids: token id {bad} is negative")));
    }
    for (name, s) in [("timeout_s", job.timeout_s), ("start_timeout_s", job.start_timeout_s)] {
        if !(s > 0.0 && s <= node::MAX_TIMEOUT_S) {
            return Err(usage(format!("{name} must be above 0 and at most {} seconds, got {s}", node::MAX_TIMEOUT_S)));
        }
    }
    Ok(Job {
        prompt,
        tokens: job.max_new_tokens,
        requests: 1,
        timeout: Duration::from_secs_f64(job.timeout_s),
        start_timeout: Duration::from_secs_f64(job.start_timeout_s),
        balance: (job.no_balance == 0).then(BalanceOptions::default),
    })
}

/// Largest secret file read.
const MAX_SECRET_FILE: u64 = 1 << 20;

unsafe fn net_arg(net: *const ShardcNet, session_timeout: Duration) -> Result<(NetOptions, bool), Fail> {
    let net = net.as_ref().ok_or_else(|| usage("the network options are NULL"))?;
    let key = match (net.secret_file.is_null(), net.insecure != 0) {
        (false, false) => {
            let p = path_arg(net.secret_file, "secret_file")?;
            let bytes = shardc_format::files::read_bounded(&p, MAX_SECRET_FILE)
                .map_err(|e| input(format!("secret file {}: {e}", p.display())))?;
            Some(node::key_from_secret(&bytes).map_err(|e| input(format!("secret file {}: {e}", p.display())))?)
        }
        (true, true) => None,
        (false, true) => return Err(usage("give secret_file or insecure, not both")),
        (true, false) => {
            return Err(usage(
                "give secret_file (frames are encrypted with it) or, to send hidden states in the clear, insecure",
            ))
        }
    };
    let opts = NetOptions { key, max_frame: 1 << 30, slowdown: Slowdown::NONE, session_timeout, batch: true };
    Ok((opts, net.allow_remote != 0))
}

/// Check the output array before any work: room for every token asked for.
unsafe fn check_tokens(job: &Job, out: *mut i64, cap: usize, n: *mut usize) -> Result<(), Fail> {
    if out.is_null() || n.is_null() {
        return Err(usage("tokens and n_tokens may not be NULL"));
    }
    if cap < job.tokens {
        return Err(usage(format!("tokens has room for {cap} ids; {} new tokens were asked for", job.tokens)));
    }
    Ok(())
}

/// The body shared by the calls that generate: arguments checked (room for every token
/// asked for before any work), `run`, the first request's tokens written out.
#[allow(clippy::too_many_arguments)]
unsafe fn generating(
    out_dir: *const c_char,
    options: *const ShardcGenerate,
    tokens: *mut i64,
    tokens_cap: usize,
    n_tokens: *mut usize,
    err: *mut c_char,
    err_cap: usize,
    run: impl FnOnce(&Path, &Job) -> Result<Generation, Fail>,
) -> c_int {
    guarded(err, err_cap, || {
        let out = path_arg(out_dir, "out_dir")?;
        let job = job_arg(options)?;
        check_tokens(&job, tokens, tokens_cap, n_tokens)?;
        let g = run(&out, &job)?;
        let first = g.tokens.first().map(Vec::as_slice).unwrap_or_default();
        std::ptr::copy_nonoverlapping(first.as_ptr(), tokens, first.len().min(tokens_cap));
        *n_tokens = first.len();
        Ok(())
    })
}

/// The defaults of `shardc-run`: no prompt, 8 new tokens, 5 s per device, 30 s for
/// the devices to start, load balancing on.
#[no_mangle]
pub extern "C" fn shardc_generate_options() -> ShardcGenerate {
    ShardcGenerate {
        input_ids: std::ptr::null(),
        n_input_ids: 0,
        max_new_tokens: 8,
        timeout_s: 5.0,
        start_timeout_s: 30.0,
        no_balance: 0,
    }
}

/// The library's version, a static NUL-terminated string.
#[no_mangle]
pub extern "C" fn shardc_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr() as *const c_char
}

/// Run every device of the compile output in `out_dir` as a thread of this process
/// (frames encrypted with a random key) and generate greedily from the prompt.
/// Writes the new tokens into `tokens` (room for `tokens_cap`, at least
/// `max_new_tokens`) and their number into `n_tokens`.
#[no_mangle]
pub unsafe extern "C" fn shardc_local(
    out_dir: *const c_char,
    options: *const ShardcGenerate,
    tokens: *mut i64,
    tokens_cap: usize,
    n_tokens: *mut usize,
    err: *mut c_char,
    err_cap: usize,
) -> c_int {
    generating(out_dir, options, tokens, tokens_cap, n_tokens, err, err_cap, |out, job| {
        node::local(out, job, &LocalOptions::default()).map_err(input)
    })
}

/// Drive generation as the client of the devices `cluster_file` names (each serving
/// its package of `out_dir`, from `shardc_serve` or `shardc-run serve`). Tokens as for
/// `shardc_local`.
#[no_mangle]
pub unsafe extern "C" fn shardc_generate(
    out_dir: *const c_char,
    cluster_file: *const c_char,
    net: *const ShardcNet,
    options: *const ShardcGenerate,
    tokens: *mut i64,
    tokens_cap: usize,
    n_tokens: *mut usize,
    err: *mut c_char,
    err_cap: usize,
) -> c_int {
    generating(out_dir, options, tokens, tokens_cap, n_tokens, err, err_cap, |out, job| {
        let cluster = path_arg(cluster_file, "cluster_file")?;
        let (opts, allow_remote) = net_arg(net, Duration::from_secs(60))?;
        let cluster = Cluster::load(&cluster, allow_remote).map_err(input)?;
        node::generate(out, &cluster, &zmq::Context::new(), &opts, job).map_err(input)
    })
}

/// Serve `device`'s package of `out_dir` at its `cluster_file` address in a background
/// thread until `shardc_serve_stop`. The output's map and manifests are checked before
/// this returns (a wrong folder or device fails here); a failure after that (a
/// package file whose hash is wrong, an address in use) is what `shardc_serve_stop`
/// returns. On success `*server` is the handle.
#[no_mangle]
pub unsafe extern "C" fn shardc_serve(
    out_dir: *const c_char,
    device: *const c_char,
    cluster_file: *const c_char,
    net: *const ShardcNet,
    server: *mut *mut ShardcServer,
    err: *mut c_char,
    err_cap: usize,
) -> c_int {
    guarded(err, err_cap, || {
        if server.is_null() {
            return Err(usage("server may not be NULL"));
        }
        *server = std::ptr::null_mut();
        let out = path_arg(out_dir, "out_dir")?;
        let device = text_arg(device, "device")?;
        let cluster = path_arg(cluster_file, "cluster_file")?;
        let (opts, allow_remote) = net_arg(net, Duration::from_secs(60))?;
        let cluster = Cluster::load(&cluster, allow_remote).map_err(input)?;
        let output = shardc_runtime::package::load_output(&out, false).map_err(input)?;
        if !output.map.stages.contains(&device) {
            return Err(input(format!(
                "{}: no package for device `{device}` (the output has {})",
                out.display(),
                output.map.stages.join(", ")
            )));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("shardc-{device}"))
            .spawn(move || {
                let ctx = zmq::Context::new();
                catch_unwind(AssertUnwindSafe(|| node::serve(&out, &device, &cluster, &ctx, &opts, flag)))
                    .unwrap_or_else(|_| {
                        Err(NetError::Other("internal error (a bug in shardc): the device panicked".into()))
                    })
            })
            .map_err(|e| input(format!("cannot start a thread: {e}")))?;
        *server = Box::into_raw(Box::new(ShardcServer { stop, thread }));
        Ok(())
    })
}

/// Stop a device `shardc_serve` started, wait for it and release the handle (NULL is
/// a usage error). Returns how serving ended: `SHARDC_OK`, or the failure that ended it
/// earlier.
#[no_mangle]
pub unsafe extern "C" fn shardc_serve_stop(server: *mut ShardcServer, err: *mut c_char, err_cap: usize) -> c_int {
    guarded(err, err_cap, || {
        if server.is_null() {
            return Err(usage("server is NULL"));
        }
        let server = Box::from_raw(server);
        server.stop.store(true, Ordering::Relaxed);
        match server.thread.join() {
            Ok(result) => result.map_err(input),
            Err(_) => {
                Err(Fail(SHARDC_ERR_INTERNAL, "internal error (a bug in shardc): the device thread panicked".into()))
            }
        }
    })
}
