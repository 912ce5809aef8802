//! The C ABI from C: `tests/c/embed.c`, compiled with the system C compiler against
//! `include/shardc.h` and linked with the library this crate builds (shared, and
//! static as iOS apps link it), generates the same tokens as `shardc-run local` on a
//! fixture package, in-process and as the client of devices it serves itself, and gets
//! a status and a message — never a crash — from calls that must fail.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `target/debug` (or `release`): where cargo puts this crate's library and the
/// workspace's binaries.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>").to_path_buf()
}

/// An artifact of the workspace build: `target/<profile>/NAME`, or under `deps/`.
fn artifact(name: &str) -> PathBuf {
    let dir = target_dir();
    [dir.join(name), dir.join("deps").join(name)].into_iter().find(|p| p.exists()).unwrap_or_else(|| {
        panic!("{name} is missing under {}: build the workspace (cargo test --workspace)", dir.display())
    })
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Loopback ports below Linux's ephemeral range, apart from other tests' (whose bases
/// are 20000 + a multiple of 7 of their pid, modulo 12000).
fn port_base() -> u16 {
    20000 + ((std::process::id() as u16).wrapping_mul(13).wrapping_add(4999) % 12000)
}

/// The value after `label: ` on the program's line starting with it.
fn line<'a>(stdout: &'a str, label: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(label).and_then(|r| r.strip_prefix(": ")))
        .unwrap_or_else(|| panic!("no `{label}` line in:\n{stdout}"))
}

/// The llama fixture compiled for three devices into `dir/out`, and the tokens
/// `shardc-run local` generates from it for the prompt 1,2,3.
fn package(dir: &Path) -> (PathBuf, Vec<i64>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = dir.join("out");
    run(Command::new(artifact("shardc"))
        .arg("compile")
        .arg(root.join("fixtures/models/llama/hf"))
        .arg("--devices")
        .arg(root.join("fixtures/devices/loopback-3.toml"))
        .args(["--objective", "throughput", "--prompt-len", "16", "--max-context", "64", "--quiet", "-o"])
        .arg(&out));
    let reference: serde_json::Value = serde_json::from_str(&run(Command::new(artifact("shardc-run"))
        .arg("local")
        .arg(&out)
        .args(["--input-ids", "1,2,3", "--max-new-tokens", "8", "--no-balance", "--json"])))
    .unwrap();
    let tokens: Vec<i64> = reference["tokens"][0].as_array().unwrap().iter().map(|t| t.as_i64().unwrap()).collect();
    assert_eq!(tokens.len(), 8);
    (out, tokens)
}

#[test]
fn calls_from_several_threads_at_once_each_get_their_answer() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, expected) = package(tmp.path());
    let dir = std::ffi::CString::new(out.to_str().unwrap()).unwrap();
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let dir = dir.clone();
            std::thread::spawn(move || {
                let prompt = [1i64, 2, 3];
                let mut options = shardc_run::shardc_generate_options();
                options.input_ids = prompt.as_ptr();
                options.n_input_ids = prompt.len();
                options.no_balance = 1;
                let (mut tokens, mut n, mut err) = ([0i64; 8], 0usize, [0 as std::ffi::c_char; 256]);
                // SAFETY: every pointer is to a live buffer of the stated size.
                let status = unsafe {
                    shardc_run::shardc_local(
                        dir.as_ptr(),
                        &options,
                        tokens.as_mut_ptr(),
                        8,
                        &mut n,
                        err.as_mut_ptr(),
                        256,
                    )
                };
                // SAFETY: the library NUL-terminates the message within the buffer.
                let message = unsafe { std::ffi::CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned();
                (status, tokens[..n].to_vec(), message)
            })
        })
        .collect();
    for t in threads {
        let (status, tokens, message) = t.join().unwrap();
        assert_eq!(status, shardc_run::SHARDC_OK, "{message}");
        assert_eq!(tokens, expected);
    }
}

#[test]
fn a_c_program_generates_what_shardc_run_local_does() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, expected) = package(tmp.path());
    let expected = expected.iter().map(i64::to_string).collect::<Vec<_>>().join(",");

    let base = port_base();
    let cluster = tmp.path().join("cluster.toml");
    let addrs: Vec<String> = (0..4).map(|i| format!("tcp://127.0.0.1:{}", base + i)).collect();
    std::fs::write(
        &cluster,
        format!(
            "client = \"{}\"\n[devices]\ndev-a = \"{}\"\ndev-b = \"{}\"\ndev-c = \"{}\"\n",
            addrs[0], addrs[1], addrs[2], addrs[3]
        ),
    )
    .unwrap();
    let secret = tmp.path().join("secret");
    std::fs::write(&secret, "a secret the embedded devices share").unwrap();

    // embed.c compiled against the header, linked as `link` says.
    let build = |name: &str, link: &[std::ffi::OsString]| {
        let program = tmp.path().join(name);
        run(Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
            .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-I"])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("include"))
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/embed.c"))
            .arg("-o")
            .arg(&program)
            .args(link));
        program
    };
    let lib_dir = artifact("libshardc_run.so").parent().unwrap().to_path_buf();
    let dynamic = build(
        "embed-dynamic",
        &[
            "-L".into(),
            lib_dir.clone().into(),
            "-lshardc_run".into(),
            format!("-Wl,-rpath,{}", lib_dir.display()).into(),
        ],
    );
    // Linked statically, with the system libraries the Rust standard library and
    // ZeroMQ (C++) need.
    let mut link: Vec<std::ffi::OsString> = vec![artifact("libshardc_run.a").into()];
    link.extend(["-lstdc++", "-lpthread", "-ldl", "-lm", "-lgcc_s", "-lutil", "-lrt"].map(Into::into));
    let fully = build("embed-static", &link);

    for program in [&dynamic, &fully] {
        let stdout = run(Command::new(program).arg(&out).arg(&cluster).arg(&secret).args(["dev-a", "dev-b", "dev-c"]));
        assert_eq!(line(&stdout, "version"), env!("CARGO_PKG_VERSION"));
        assert_eq!(line(&stdout, "local"), expected, "{program:?}: in-process devices");
        assert_eq!(line(&stdout, "generate"), expected, "{program:?}: served devices and their client");
        assert_eq!(line(&stdout, "stopped"), "3 devices", "{stdout}");
        assert!(!stdout.contains("\nstop:"), "every device stopped cleanly:\n{stdout}");
        let failures = [
            ("bad package path", "status 1: ", "/nonexistent/shardc-output"),
            ("serve bad package path", "status 1: ", "/nonexistent/shardc-output"),
            ("serve unknown device", "status 1: ", "no package for device `no-such-device`"),
            ("small buffer", "status 2: ", "room for 2 ids; 8 new tokens"),
            ("null path", "status 2: ", "out_dir is NULL"),
            ("both secret and insecure", "status 2: ", "not both"),
            ("tiny buffer", "status 1: ", "7 bytes: /nonexi"),
            ("stop NULL", "status 2: ", "server is NULL"),
        ];
        for (label, status, says) in failures {
            let got = line(&stdout, label);
            assert!(got.starts_with(status) && got.contains(says), "{program:?} {label}: {got}");
        }
        assert_eq!(line(&stdout, "server handle"), "NULL", "a failed serve leaves no handle");
    }
}
