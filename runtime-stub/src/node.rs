//! The distributed runtime over ZeroMQ: devices that run their package and send each
//! output straight to the devices that need it, and the client that drives generation.
//!
//! Every participant binds one PULL socket at its `cluster.toml` address and sends
//! with PUSH sockets to the others. A message is a frame (plus its keyed MAC when a
//! secret is shared) whose kind says what it is: `tensors` carries inputs of a step, `done` tells
//! the client a stage finished a step (with its compute time), `end` frees a
//! request's KV cache. A device keeps its layers' KV cache per request; decode steps
//! carry one token.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ndarray::{ArrayD, IxDyn};

use crate::cluster::Cluster;
use crate::frame::{self, Frame};
use crate::generate::argmax;
use crate::package::{self, Manifest};
use crate::{Session, Tensor};

/// Options shared by devices and the client.
#[derive(Clone)]
pub struct NetOptions {
    pub secret: Option<[u8; 32]>,
    pub max_frame: usize,
    /// Emulate a device this many times slower (sleep (F − 1) × compute).
    pub slowdown: f64,
}

fn send(
    sockets: &mut HashMap<String, zmq::Socket>,
    ctx: &zmq::Context,
    address: &str,
    frame: &Frame,
    opts: &NetOptions,
) -> Result<(), String> {
    if !sockets.contains_key(address) {
        let s = ctx.socket(zmq::PUSH).map_err(|e| e.to_string())?;
        s.set_linger(1000).map_err(|e| e.to_string())?;
        s.connect(address).map_err(|e| format!("cannot connect to {address}: {e}"))?;
        sockets.insert(address.to_string(), s);
    }
    let (bytes, tag) = frame::encode(frame, opts.secret.as_ref());
    let mut parts = vec![bytes];
    parts.extend(tag.map(|t| t.to_vec()));
    sockets[address].send_multipart(parts, 0).map_err(|e| format!("cannot send to {address}: {e}"))
}

/// Receive one frame, or `Ok(None)` on timeout; refused messages are logged and skipped.
fn receive(socket: &zmq::Socket, timeout: Duration, opts: &NetOptions, who: &str) -> Result<Option<Frame>, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if socket.poll(zmq::POLLIN, left.as_millis() as i64).map_err(|e| e.to_string())? == 0 {
            return Ok(None);
        }
        let parts = socket.recv_multipart(0).map_err(|e| e.to_string())?;
        match check(&parts, opts) {
            Ok(f) => return Ok(Some(f)),
            Err(e) => eprintln!("{who}: dropped a message: {e}"),
        }
    }
}

/// A message is the frame and, when a secret is shared, its MAC.
fn check(parts: &[Vec<u8>], opts: &NetOptions) -> Result<Frame, String> {
    let (bytes, tag) = match parts {
        [b] => (b, None),
        [b, t] => (b, Some(t.as_slice())),
        _ => return Err(format!("{} message parts (expected 1 or 2)", parts.len())),
    };
    let frame = frame::decode(bytes, tag, opts.secret.as_ref(), opts.max_frame).map_err(|e| e.to_string())?;
    if !["tensors", "done", "end", "stop"].contains(&frame.kind.as_str()) {
        return Err(format!("unknown message kind `{}`", frame.kind));
    }
    Ok(frame)
}

/// Run one device until a `stop` message (or `stop` is set).
pub fn serve(
    out: &Path,
    device: &str,
    cluster: &Cluster,
    ctx: &zmq::Context,
    opts: &NetOptions,
    stop: Arc<AtomicBool>,
) -> Result<(), String> {
    let dir = out.join(device);
    let (manifest, graph) = package::load(&dir).map_err(|e| e.to_string())?;
    let session = Session::new(graph, &dir);
    let address = cluster.address(device).ok_or_else(|| format!("`{device}` is not in the cluster file"))?;
    let socket = ctx.socket(zmq::PULL).map_err(|e| e.to_string())?;
    socket.bind(address).map_err(|e| format!("{device}: cannot bind {address}: {e}"))?;
    let mut peers: HashMap<String, zmq::Socket> = HashMap::new();
    let local: Vec<String> = manifest.device_local.clone();
    let cache_inputs: Vec<(String, Vec<usize>)> = session
        .graph()
        .inputs
        .iter()
        .map(|&v| session.graph().value(v))
        .filter(|v| local.contains(&v.name))
        .map(|v| {
            let shape =
                v.ty.as_ref()
                    .map(|t| {
                        t.shape
                            .iter()
                            .map(|d| d.as_known().map_or(if d.symbols() == ["past"] { 0 } else { 1 }, |n| n as usize))
                            .collect()
                    })
                    .unwrap_or_default();
            (v.name.clone(), shape)
        })
        .collect();
    let needed: Vec<String> = manifest.inputs.iter().map(|p| p.name.clone()).collect();
    let mut pending: HashMap<(u64, u64), HashMap<String, Tensor>> = HashMap::new();
    // When the first input of a step arrived: the wait for the others is reported.
    let mut first_arrival: HashMap<(u64, u64), Instant> = HashMap::new();
    let mut caches: HashMap<u64, HashMap<String, Tensor>> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        let Some(msg) = receive(&socket, Duration::from_millis(200), opts, device)? else { continue };
        match msg.kind.as_str() {
            "stop" => break,
            "end" => {
                caches.remove(&msg.request);
            }
            "tensors" => {
                let key = (msg.request, msg.step);
                first_arrival.entry(key).or_insert_with(Instant::now);
                let entry = pending.entry(key).or_default();
                for (name, t) in msg.tensors {
                    if needed.contains(&name) {
                        entry.insert(name, t);
                    } else {
                        eprintln!("{device}: dropped tensor `{name}` it does not take");
                    }
                }
                if !needed.iter().all(|n| entry.contains_key(n)) {
                    continue;
                }
                let waited_ms = first_arrival.remove(&key).map_or(0.0, |t| t.elapsed().as_secs_f64() * 1e3);
                let mut inputs: Vec<(String, Tensor)> = pending.remove(&key).unwrap_or_default().into_iter().collect();
                let cache = caches.entry(key.0).or_default();
                for (name, shape) in &cache_inputs {
                    let t = cache.remove(name).unwrap_or_else(|| Tensor::f32(ArrayD::zeros(IxDyn(shape))));
                    inputs.push((name.clone(), t));
                }
                let started = Instant::now();
                let outputs = match session.run(inputs) {
                    Ok(o) => o,
                    Err(e) => {
                        eprintln!("{device}: request {} step {}: {e}", key.0, key.1);
                        continue;
                    }
                };
                let compute = started.elapsed();
                if opts.slowdown > 1.0 {
                    std::thread::sleep(compute.mul_f64(opts.slowdown - 1.0));
                }
                let compute_ms = started.elapsed().as_secs_f64() * 1e3;
                let send_started = Instant::now();
                let mut by_peer: BTreeMap<String, Vec<(String, Tensor)>> = BTreeMap::new();
                for (name, t) in outputs {
                    if let Some(rest) = name.strip_prefix("present.") {
                        cache.insert(format!("past_key_values.{rest}"), t);
                        continue;
                    }
                    if let Some(port) = manifest.outputs.iter().find(|p| p.name == name) {
                        for peer in &port.peers {
                            by_peer.entry(peer.clone()).or_default().push((name.clone(), t.clone()));
                        }
                    }
                }
                for (peer, tensors) in by_peer {
                    let addr = cluster
                        .address(&peer)
                        .ok_or_else(|| format!("{device}: peer `{peer}` is not in the cluster file"))?;
                    let f = Frame::new("tensors", key.0, key.1, device, tensors);
                    send(&mut peers, ctx, addr, &f, opts)?;
                }
                let timing = Tensor::f32(
                    ArrayD::from_shape_vec(
                        IxDyn(&[3]),
                        vec![compute_ms as f32, waited_ms as f32, send_started.elapsed().as_secs_f32() * 1e3],
                    )
                    .unwrap_or_default(),
                );
                let done = Frame::new("done", key.0, key.1, device, vec![("timing_ms".into(), timing)]);
                send(&mut peers, ctx, &cluster.client, &done, opts)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// What `generate` reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Generation {
    /// Per request, the generated tokens.
    pub tokens: Vec<Vec<i64>>,
    /// Per step of the first request, the number of token ids sent.
    pub ids_sent: Vec<usize>,
    /// Per device (in pipeline order): total compute and send ms, steps.
    pub stages: Vec<StageTiming>,
    pub wall_ms: f64,
}

/// Timings of one stage.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct StageTiming {
    pub device: String,
    pub steps: usize,
    /// Totals over all steps and requests, milliseconds.
    pub compute_ms: f64,
    pub waiting_ms: f64,
    pub send_ms: f64,
    /// Per step of every request, in arrival order: (request, step, compute, waiting, send).
    pub per_step: Vec<(u64, u64, f64, f64, f64)>,
}

/// Drive `requests` greedy generations of `n` tokens through the devices.
pub fn generate(
    out: &Path,
    cluster: &Cluster,
    ctx: &zmq::Context,
    opts: &NetOptions,
    prompt: &[i64],
    n: usize,
    requests: usize,
    timeout: Duration,
) -> Result<Generation, String> {
    let map_text =
        std::fs::read_to_string(out.join("transmission_map.json")).map_err(|e| format!("{}: {e}", out.display()))?;
    let map: serde_json::Value = serde_json::from_str(&map_text).map_err(|e| e.to_string())?;
    let stages: Vec<String> = map["stages"]
        .as_array()
        .ok_or("transmission map has no stages")?
        .iter()
        .filter_map(|s| s.as_str().map(String::from))
        .collect();
    let ids_to: Vec<String> = map["transfers"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["tensor"] == "input_ids"))
        .and_then(|t| t["to"].as_array())
        .ok_or("the transmission map does not say who takes input_ids")?
        .iter()
        .filter_map(|s| s.as_str().map(String::from))
        .collect();
    let manifests: Vec<Manifest> = stages
        .iter()
        .map(|d| package::load_manifest(&out.join(d)).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let socket = ctx.socket(zmq::PULL).map_err(|e| e.to_string())?;
    socket.bind(&cluster.client).map_err(|e| format!("client: cannot bind {}: {e}", cluster.client))?;
    let mut peers = HashMap::new();
    let started = Instant::now();
    let mut tokens: Vec<Vec<i64>> = vec![Vec::new(); requests];
    let mut ids_sent = Vec::new();
    let mut timings: Vec<StageTiming> =
        manifests.iter().map(|m| StageTiming { device: m.device.clone(), ..Default::default() }).collect();
    let send_ids = |peers: &mut HashMap<String, zmq::Socket>, r: u64, step: u64, ids: &[i64]| -> Result<(), String> {
        let t = Tensor::i64(ArrayD::from_shape_vec(IxDyn(&[1, ids.len()]), ids.to_vec()).map_err(|e| e.to_string())?);
        for d in &ids_to {
            let addr = cluster.address(d).ok_or_else(|| format!("`{d}` is not in the cluster file"))?;
            let f = Frame::new("tensors", r, step, "client", vec![("input_ids".into(), t.clone())]);
            send(peers, ctx, addr, &f, opts)?;
        }
        Ok(())
    };
    // Per (request, step): which stages reported done, and the logits when they come.
    let mut done: HashMap<(u64, u64), Vec<bool>> = HashMap::new();
    let mut logits: HashMap<(u64, u64), Vec<f32>> = HashMap::new();
    for r in 0..requests as u64 {
        send_ids(&mut peers, r, 0, prompt)?;
        done.insert((r, 0), vec![false; stages.len()]);
    }
    ids_sent.push(prompt.len());
    let mut active = requests;
    while active > 0 && n > 0 {
        let Some(msg) = receive(&socket, timeout, opts, "client")? else {
            // Name the first stage that has not finished the oldest outstanding step.
            let (key, flags) = done.iter().min_by_key(|(k, _)| **k).ok_or("timed out")?;
            let missing = flags.iter().position(|f| !f).map_or("?".to_string(), |i| stages[i].clone());
            return Err(format!(
                "device `{missing}` did not finish request {} step {} within {:.1} s",
                key.0,
                key.1,
                timeout.as_secs_f64()
            ));
        };
        let key = (msg.request, msg.step);
        match msg.kind.as_str() {
            "done" => {
                if let Some(i) = stages.iter().position(|s| *s == msg.sender) {
                    if let Some(flags) = done.get_mut(&key) {
                        flags[i] = true;
                    }
                    if let Some((_, t)) = msg.tensors.first() {
                        let v: Vec<f64> = t.to_f32_vec().into_iter().map(f64::from).collect();
                        let (c, w, s) =
                            (*v.first().unwrap_or(&0.0), *v.get(1).unwrap_or(&0.0), *v.get(2).unwrap_or(&0.0));
                        let st = &mut timings[i];
                        st.steps += 1;
                        st.compute_ms += c;
                        st.waiting_ms += w;
                        st.send_ms += s;
                        st.per_step.push((key.0, key.1, c, w, s));
                    }
                }
            }
            "tensors" => {
                if let Some((_, t)) = msg.tensors.iter().find(|(n, _)| n == "logits") {
                    let values = t.to_f32_vec();
                    let vocab = *t.shape().last().unwrap_or(&1);
                    logits.insert(key, values[values.len().saturating_sub(vocab)..].to_vec());
                }
            }
            _ => {}
        }
        // A step is complete when every stage is done and the logits arrived.
        let complete = done.get(&key).is_some_and(|f| f.iter().all(|x| *x)) && logits.contains_key(&key);
        if complete {
            done.remove(&key);
            let next = argmax(&logits.remove(&key).unwrap_or_default()) as i64;
            let r = key.0 as usize;
            tokens[r].push(next);
            if tokens[r].len() == n {
                active -= 1;
                for d in &stages {
                    if let Some(addr) = cluster.address(d) {
                        let end = Frame::new("end", key.0, key.1, "client", vec![]);
                        send(&mut peers, ctx, addr, &end, opts)?;
                    }
                }
            } else {
                send_ids(&mut peers, key.0, key.1 + 1, &[next])?;
                done.insert((key.0, key.1 + 1), vec![false; stages.len()]);
                if r == 0 {
                    ids_sent.push(1);
                }
            }
        }
    }
    Ok(Generation { tokens, ids_sent, stages: timings, wall_ms: started.elapsed().as_secs_f64() * 1e3 })
}

/// Tell every device to stop.
pub fn stop_all(cluster: &Cluster, ctx: &zmq::Context, opts: &NetOptions) {
    let mut peers = HashMap::new();
    for addr in cluster.devices.values() {
        let stop = Frame::new("stop", 0, 0, "client", vec![]);
        let _ = send(&mut peers, ctx, addr, &stop, opts);
    }
}
