//! Batched steps: several requests' steps run together give each request the outputs
//! (logits and KV cache) it gets alone, bit for bit — so the same tokens — for every
//! architecture of the fixtures and for f16, int8 and int4 weights; prompts and single
//! tokens mixed, lengths ragged, and a step that fails fails alone.

mod common;

use std::path::Path;

use common::{fixture_dir, shardc_command, FIXTURES};
use shardc_runtime::generate::{argmax, empty_cache, CacheLayout};
use shardc_runtime::{package, Session, Tensor};

/// Each output's name, type, shape and bits.
fn fingerprint(outputs: &[(String, Tensor)]) -> Vec<(String, String, Vec<u32>)> {
    outputs
        .iter()
        .map(|(n, t)| (n.clone(), t.describe(), t.to_f32_vec().iter().map(|v| v.to_bits()).collect()))
        .collect()
}

/// Four requests (prompts of 3, 1, 11 and 5 tokens: the 11-token one too many rows to
/// share a product) prefilled together, then decoded greedily together for 4 steps;
/// each step is also run alone and must match. A step with a malformed token input is
/// added each time: it must fail without touching the others.
fn batched_equals_alone(what: &str, s: &Session) {
    let layout = CacheLayout::of(s).unwrap().expect("a KV cache");
    let prompts: [&[i64]; 4] = [&[5, 17, 42], &[9], &[3, 25, 18, 77, 12, 7, 99, 1, 4, 8, 6], &[10, 11, 12, 13, 14]];
    let mut feed: Vec<Vec<i64>> = prompts.iter().map(|p| p.to_vec()).collect();
    let mut caches: Vec<Vec<Tensor>> = prompts.iter().map(|_| empty_cache(&layout)).collect();
    for step in 0..5 {
        let inputs: Vec<Vec<(String, Tensor)>> = feed
            .iter()
            .zip(&caches)
            .map(|(ids, cache)| {
                let ids = Tensor::from_i64(&[1, ids.len()], ids.clone()).unwrap();
                let mut v = vec![(layout.ids.clone(), ids)];
                v.extend(layout.entries.iter().map(|e| e.0.clone()).zip(cache.iter().cloned()));
                v
            })
            .collect();
        let alone: Vec<Vec<(String, Tensor)>> = inputs.iter().map(|i| s.run(i.clone()).unwrap()).collect();
        let mut batch = inputs.clone();
        let mut broken = inputs[0].clone();
        broken[0].1 = Tensor::from_i64(&[2], vec![1, 2]).unwrap();
        batch.insert(2, broken);
        let mut got = s.run_batch(batch);
        let failed = got.remove(2);
        assert!(failed.is_err(), "{what}: a malformed step ran");
        for (r, (g, a)) in got.into_iter().zip(&alone).enumerate() {
            let g = g.unwrap_or_else(|e| panic!("{what}: step {step} of request {r}: {e}"));
            assert!(fingerprint(&g) == fingerprint(a), "{what}: step {step} of request {r} differs batched");
        }
        for (r, outputs) in alone.into_iter().enumerate() {
            let mut outputs: std::collections::HashMap<String, Tensor> = outputs.into_iter().collect();
            caches[r] = layout.entries.iter().map(|e| outputs.remove(&e.1).unwrap()).collect();
            let logits = outputs.into_values().find(|t| t.shape().len() == 3).unwrap().to_f32_vec();
            let vocab = logits.len() / feed[r].len();
            let next = argmax(&logits[logits.len() - vocab..]) as i64;
            feed[r] = vec![next];
        }
    }
}

#[test]
fn batched_steps_give_each_request_its_own_bits_on_every_fixture() {
    for name in FIXTURES.iter().chain(&["gemma3_text", "phi3"]) {
        let (graph, dir) = common::lowered(&fixture_dir(name).join("hf"), None);
        batched_equals_alone(name, &Session::new(graph, &dir));
    }
}

/// The llama fixture compiled for one device with `flags`: its package's session.
fn one_device_package(dir: &Path, flags: &[&str]) -> Session {
    let devices = dir.join("one.toml");
    std::fs::write(
        &devices,
        "[[device]]\nname = \"solo\"\nmemory = \"1 GiB\"\nflops = \"1 GFLOP/s\"\nbandwidth = \"1 GB/s\"\n",
    )
    .unwrap();
    let out = dir.join("out");
    let st = shardc_command()
        .arg("compile")
        .arg(fixture_dir("llama").join("hf"))
        .args(flags)
        .arg("--devices")
        .arg(&devices)
        .args(["--prompt-len", "16", "--max-context", "64", "--force", "-o"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
    let pkg = out.join("solo");
    let (manifest, graph) = package::load(&pkg).unwrap();
    let weights = package::weights(&pkg, &manifest, &[&graph]).unwrap();
    Session::with_weights(graph, weights)
}

#[test]
fn batched_steps_of_f16_int8_and_int4_weights_are_the_same_bits() {
    for flags in [&["--dtype", "f16"][..], &["--quantize", "int8"], &["--quantize", "int4", "--quantize-embeddings"]] {
        let dir = tempfile::tempdir().unwrap();
        let s = one_device_package(dir.path(), flags);
        batched_equals_alone(&flags.join(" "), &s);
    }
}
