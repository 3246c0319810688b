//! A cluster one can run on a shared network: TLS (mutual) with a test CA, a sniffed connection
//! that shows no token, plaintext beyond loopback refused, confined workers, workers that leave
//! a stopped coordinator, and a coordinator that stops cleanly on SIGTERM and resumes.

use llmprune_tests::{assert_contains, tiny_model_dir};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "tok-3f9a1c77e2b54d0b";

fn worker_binary() -> PathBuf {
    Path::new(env!("CARGO_BIN_EXE_llmprune")).with_file_name("llmprune-worker")
}

fn tls_file(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tls").join(name).display().to_string()
}

/// The TLS flags of a process holding `node` (the cluster's) or `rogue-node` (another CA's).
fn tls_flags(node: &str, ca: &str) -> Vec<String> {
    [
        "--tls-cert",
        &tls_file(&format!("{node}.pem")),
        "--tls-key",
        &tls_file(&format!("{node}.key")),
        "--tls-ca",
        &tls_file(&format!("{ca}.pem")),
        "--tls-mutual",
    ]
    .map(String::from)
    .to_vec()
}

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    model: PathBuf,
    ids: PathBuf,
    token_file: PathBuf,
}

impl Setup {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let model = tiny_model_dir("tiny_gqa", &root.join("models"));
        let ids = root.join("data/calib.json");
        std::fs::create_dir_all(ids.parent().unwrap()).unwrap();
        std::fs::write(&ids, "[[1, 5, 9, 13, 40, 41, 42, 7], [70, 2, 3, 60, 61, 62, 8, 9]]").unwrap();
        let token_file = root.join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        Self { _tmp: tmp, root, model, ids, token_file }
    }

    /// A coordinator pruning into `out` for `workers` remote workers on a free loopback port,
    /// with `extra` flags; returns it and its port.
    fn coordinator(&self, out: &Path, workers: usize, extra: &[String], env: &[(&str, &str)]) -> (Child, u16) {
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(env!("CARGO_BIN_EXE_llmprune"))
            .args(["--token-file", self.token_file.to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .args(["prune", "--model", self.model.to_str().unwrap(), "--calibration-ids", self.ids.to_str().unwrap(), "--ratio", "0.5"])
            .args(["--workers", &workers.to_string(), "--out", out.to_str().unwrap()])
            // A test that fails leaves no coordinator waiting ten minutes for its workers.
            .env("LLMPRUNE_CLUSTER__REGISTER_TIMEOUT_S", "90")
            .envs(env.iter().copied())
            .env_remove("LLMPRUNE_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        (child, port)
    }

    /// A worker of `url` with `extra` flags; it gives up reaching the coordinator after 60 s.
    fn worker(&self, url: &str, extra: &[String]) -> Command {
        self.worker_giving_up_after(url, extra, "60")
    }

    fn worker_giving_up_after(&self, url: &str, extra: &[String], seconds: &str) -> Command {
        let mut cmd = Command::new(worker_binary());
        cmd.args(["--coordinator", url, "--token-file", self.token_file.to_str().unwrap(), "--connect-timeout-s", seconds])
            .args(extra)
            .env_remove("LLMPRUNE_TOKEN");
        cmd
    }

    /// A worker expected to be refused (it gives up after 3 s); its output.
    fn refused_worker(&self, url: &str, extra: &[String]) -> Output {
        let out = self.worker_giving_up_after(url, extra, "3").output().unwrap();
        assert!(!out.status.success(), "{url} {extra:?} was admitted");
        out
    }
}

/// Waits for `child` and returns its output (stderr captured).
fn finish(child: Child) -> Output {
    child.wait_with_output().unwrap()
}

/// What a sniffer between a client and a server recorded: the client's bytes, and all.
#[derive(Default)]
struct Sniffed {
    upstream: Vec<u8>,
    all: Vec<u8>,
}

/// A TCP forwarder from a loopback port to `to` that records what passes.
fn sniffer(to: u16) -> (u16, Arc<Mutex<Sniffed>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Sniffed::default()));
    let record = seen.clone();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let Ok(server) = TcpStream::connect(("127.0.0.1", to)) else { continue };
            for (upstream, mut from, mut into) in [(true, client.try_clone().unwrap(), server.try_clone().unwrap()), (false, server, client)] {
                let record = record.clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16384];
                    while let Ok(n @ 1..) = from.read(&mut buf) {
                        let mut seen = record.lock().unwrap();
                        seen.all.extend_from_slice(&buf[..n]);
                        if upstream {
                            seen.upstream.extend_from_slice(&buf[..n]);
                        }
                        drop(seen);
                        if into.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = into.shutdown(std::net::Shutdown::Both);
                });
            }
        }
    });
    (port, seen)
}

/// The request headers a passive attacker reads in a client's bytes: HTTP/2 frames after the
/// preface, HEADERS decoded with HPACK (Huffman coding is no protection). None when the bytes
/// are not plaintext HTTP/2.
fn sniffed_headers(bytes: &[u8]) -> Vec<(String, String)> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let Some(start) = bytes.windows(PREFACE.len()).position(|w| w == PREFACE) else {
        return Vec::new();
    };
    let (mut rest, mut decoder, mut headers) = (&bytes[start + PREFACE.len()..], hpack::Decoder::new(), Vec::new());
    while rest.len() >= 9 {
        let (len, kind, flags) = (u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize, rest[3], rest[4]);
        let Some(mut block) = rest.get(9..9 + len) else { break };
        if kind == 1 {
            // HEADERS: padding (0x8) and priority (0x20) around the header block.
            let pad = if flags & 0x8 != 0 { block[0] as usize } else { 0 };
            block = &block[usize::from(flags & 0x8 != 0)..block.len() - pad];
            if flags & 0x20 != 0 {
                block = &block[5..];
            }
            if let Ok(decoded) = decoder.decode(block) {
                headers.extend(decoded.into_iter().map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), String::from_utf8_lossy(&v).into_owned())));
            }
        }
        rest = &rest[9 + len..];
    }
    headers
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn tls_admits_the_clusters_workers_only_and_hides_the_token() {
    let s = Setup::new();
    // Control: in plaintext (loopback), a sniffer between worker and coordinator reads the token.
    let plain_out = s.root.join("plain");
    let (coordinator, port) = s.coordinator(&plain_out, 1, &[], &[]);
    let (via, seen) = sniffer(port);
    let worker = s.worker(&format!("http://127.0.0.1:{via}"), &[]).output().unwrap();
    let done = finish(coordinator);
    assert!(done.status.success() && worker.status.success(), "{}\n{}", String::from_utf8_lossy(&done.stderr), String::from_utf8_lossy(&worker.stderr));
    let bearer = ("authorization".to_string(), format!("Bearer {TOKEN}"));
    assert!(sniffed_headers(&seen.lock().unwrap().upstream).contains(&bearer), "the sniffer reads the plaintext token");

    // TLS, mutual: workers without the cluster's CA and certificate are refused; the cluster's
    // worker, through the same sniffer, prunes, and the token never crosses in the clear.
    let out = s.root.join("pruned");
    let (coordinator, port) = s.coordinator(&out, 1, &tls_flags("node", "ca"), &[]);
    let url = format!("https://127.0.0.1:{port}");
    let plaintext = s.refused_worker(&format!("http://127.0.0.1:{port}"), &[]);
    let rogue = s.refused_worker(&url, &tls_flags("rogue-node", "rogue-ca"));
    // A certificate from another CA, trusting the right CA: refused by the coordinator's
    // client-certificate check.
    let foreign = s.refused_worker(&url, &tls_flags("rogue-node", "ca"));
    for refused in [&plaintext, &rogue, &foreign] {
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_contains(&stderr, &["coordinator"]);
        assert!(!stderr.contains("Usage:"), "{stderr}");
    }
    // The TLS causes are named: an untrusted server certificate, a refused client certificate.
    assert_contains(&String::from_utf8_lossy(&rogue.stderr), &["certificate"]);
    // Certificates checked against the cluster's name (`localhost` here), not the address.
    let (via, seen) = sniffer(port);
    let named = [tls_flags("node", "ca"), vec!["--tls-server-name".into(), "localhost".into()]].concat();
    let worker = s.worker(&format!("https://127.0.0.1:{via}"), &named).output().unwrap();
    let done = finish(coordinator);
    assert!(done.status.success(), "{}\n{}", String::from_utf8_lossy(&done.stderr), String::from_utf8_lossy(&worker.stderr));
    assert!(out.join("plan.json").is_file());
    let seen = seen.lock().unwrap();
    assert!(seen.all.len() > 1000 && sniffed_headers(&seen.upstream).is_empty(), "{} bytes sniffed", seen.all.len());
    assert!(!contains(&seen.all, TOKEN) && !contains(&seen.all, "pruner.v1"), "readable bytes crossed");
}

#[test]
fn plaintext_beyond_loopback_is_refused_and_open_workers_must_be_confined() {
    let s = Setup::new();
    let out = s.root.join("pruned");
    let res = Command::new(env!("CARGO_BIN_EXE_llmprune"))
        .args(["--token", TOKEN, "--listen", "0.0.0.0:0", "prune", "--model", s.model.to_str().unwrap(), "--ratio", "0.5"])
        .args(["--calibration-ids", s.ids.to_str().unwrap(), "--workers", "1", "--out", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!res.status.success());
    assert_contains(&String::from_utf8_lossy(&res.stderr), &["--listen 0.0.0.0", "in the clear", "--tls-cert", "--insecure"]);
    assert!(!out.exists());
    let worker = |extra: &[&str]| s.refused_worker("http://127.0.0.1:9", &extra.iter().map(|a| a.to_string()).collect::<Vec<_>>());
    let res = worker(&["--listen", "0.0.0.0:0"]);
    assert_contains(&String::from_utf8_lossy(&res.stderr), &["--listen 0.0.0.0:0", "--insecure"]);
    let res = worker(&["--listen", "0.0.0.0:0", "--insecure"]);
    assert_contains(&String::from_utf8_lossy(&res.stderr), &["--model-root", "--output-root"]);
}

#[test]
fn confined_workers_read_and_write_only_under_their_roots() {
    let s = Setup::new();
    let outputs = s.root.join("outputs");
    std::fs::create_dir_all(&outputs).unwrap();
    let roots: Vec<String> = ["--model-root", s.root.join("models").to_str().unwrap(), "--data-root", s.root.join("data").to_str().unwrap()]
        .into_iter()
        .chain(["--output-root", outputs.to_str().unwrap()])
        .map(String::from)
        .collect();
    // The output outside the output root: the workers refuse to write their shards there.
    let outside = s.root.join("elsewhere");
    let (coordinator, port) = s.coordinator(&outside, 1, &[], &[]);
    let worker = s.worker(&format!("http://127.0.0.1:{port}"), &roots).spawn().unwrap();
    let done = finish(coordinator);
    finish(worker);
    assert!(!done.status.success());
    assert_contains(&String::from_utf8_lossy(&done.stderr), &["the shard directory is not under this worker's --output-root"]);
    assert!(!outside.exists());
    // The model outside the model root (a copy beside it): refused before it is read or hashed.
    let stray = tiny_model_dir("tiny_gqa", &s.root.join("stray"));
    let s2 = Setup { model: stray, ..Setup::new() };
    let inside = outputs.join("pruned");
    let (coordinator, port) = s2.coordinator(&inside, 1, &[], &[]);
    let worker = s2.worker(&format!("http://127.0.0.1:{port}"), &roots).spawn().unwrap();
    let done = finish(coordinator);
    finish(worker);
    assert_contains(&String::from_utf8_lossy(&done.stderr), &["the model is not under this worker's --model-root"]);
    assert!(!String::from_utf8_lossy(&done.stderr).contains("sha256"));
    // Both inside: the run completes.
    let (coordinator, port) = s.coordinator(&inside, 1, &[], &[]);
    let worker = s.worker(&format!("http://127.0.0.1:{port}"), &roots).spawn().unwrap();
    let done = finish(coordinator);
    finish(worker);
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    assert!(inside.join("plan.json").is_file());
}

fn signal(pid: u32, name: &str) {
    assert!(Command::new("kill").args([&format!("-{name}"), &pid.to_string()]).status().unwrap().success());
}

/// Reads `child`'s stderr on a thread until a line contains `marker`; the lines so far and
/// the rest as they come are collected.
fn watch_stderr(child: &mut Child) -> (std::sync::mpsc::Receiver<()>, Arc<Mutex<String>>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let text = Arc::new(Mutex::new(String::new()));
    let sink = text.clone();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push_str(&(line + "\n"));
            let _ = tx.send(());
        }
    });
    (rx, text)
}

fn wait_for(rx: &std::sync::mpsc::Receiver<()>, text: &Mutex<String>, marker: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !text.lock().unwrap().contains(marker) {
        assert!(rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).is_ok(), "no `{marker}` in {}", text.lock().unwrap());
    }
}

#[test]
fn workers_leave_a_stopped_coordinator() {
    let s = Setup::new();
    // Two workers expected, one started: the coordinator waits, the worker heartbeats.
    let env = [("LLMPRUNE_CLUSTER__HEARTBEAT_MS", "100"), ("LLMPRUNE_CLUSTER__HEARTBEAT_TIMEOUT_MS", "1000")];
    let (mut coordinator, port) = s.coordinator(&s.root.join("pruned"), 2, &[], &env);
    let mut worker = s.worker(&format!("http://127.0.0.1:{port}"), &[]).stderr(Stdio::piped()).spawn().unwrap();
    let (rx, text) = watch_stderr(&mut worker);
    wait_for(&rx, &text, "registered", Duration::from_secs(30));
    signal(coordinator.id(), "STOP");
    let stopped = Instant::now();
    let status = loop {
        if let Some(status) = worker.try_wait().unwrap() {
            break status;
        }
        assert!(stopped.elapsed() < Duration::from_secs(15), "the worker still runs beside a stopped coordinator");
        std::thread::sleep(Duration::from_millis(50));
    };
    signal(coordinator.id(), "CONT");
    let _ = coordinator.kill();
    let _ = coordinator.wait();
    assert!(!status.success());
    std::thread::sleep(Duration::from_millis(200));
    assert_contains(&text.lock().unwrap(), &["lost the coordinator", "no heartbeat answered", "releasing the shard"]);
}

#[test]
fn sigterm_stops_the_workers_removes_the_partial_output_and_resume_finishes() {
    let s = Setup::new();
    let out = s.root.join("pruned");
    let args = |extra: &[&str]| -> Vec<String> {
        ["prune", "--model", s.model.to_str().unwrap(), "--calibration-ids", s.ids.to_str().unwrap(), "--ratio", "0.5", "--local-workers", "2"]
            .iter()
            .chain(extra)
            .chain(&["--out", out.to_str().unwrap()])
            .map(|a| a.to_string())
            .collect()
    };
    // Worker 0 hangs as it loads; the coordinator would wait a minute for its heartbeats.
    let mut coordinator = Command::new(env!("CARGO_BIN_EXE_llmprune"))
        .args(args(&["--inject-fault", "0:hang"]))
        .env("LLMPRUNE_CLUSTER__HEARTBEAT_TIMEOUT_MS", "60000")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (rx, text) = watch_stderr(&mut coordinator);
    wait_for(&rx, &text, "fault injection: hanging", Duration::from_secs(60));
    let partials = || std::fs::read_dir(&s.root).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().starts_with(".pruned.partial-")).count();
    assert_eq!(partials(), 1);
    let pids: Vec<u32> = {
        let log = text.lock().unwrap();
        let list = log.split("pids=[").nth(1).and_then(|r| r.split(']').next()).unwrap_or_default().to_string();
        list.split(',').filter_map(|p| p.trim().parse().ok()).collect()
    };
    assert_eq!(pids.len(), 2, "{}", text.lock().unwrap());
    let signalled = Instant::now();
    signal(coordinator.id(), "TERM");
    let status = coordinator.wait().unwrap();
    assert!(signalled.elapsed() < Duration::from_secs(15), "took {:?}", signalled.elapsed());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(status.code(), Some(143));
    assert_contains(&text.lock().unwrap(), &["interrupted by SIGTERM", "--resume"]);
    assert_eq!(partials(), 0, "the partial output was removed");
    assert!(!out.exists());
    for pid in pids {
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "worker {pid} still runs");
    }
    // A partial output an earlier run left behind (killed outright) goes with --resume.
    std::fs::create_dir_all(s.root.join(".pruned.partial-stale")).unwrap();
    let res = Command::new(env!("CARGO_BIN_EXE_llmprune")).args(args(&["--resume"])).output().unwrap();
    assert!(res.status.success(), "{}", String::from_utf8_lossy(&res.stderr));
    assert!(out.join("plan.json").is_file());
    assert_eq!(partials(), 0);
}

#[test]
fn a_worker_stops_cleanly_on_sigterm() {
    let s = Setup::new();
    let (mut coordinator, port) = s.coordinator(&s.root.join("pruned"), 2, &[], &[]);
    let mut worker = s.worker(&format!("http://127.0.0.1:{port}"), &[]).stderr(Stdio::piped()).spawn().unwrap();
    let (rx, text) = watch_stderr(&mut worker);
    wait_for(&rx, &text, "registered", Duration::from_secs(30));
    signal(worker.id(), "TERM");
    let status = worker.wait().unwrap();
    let _ = coordinator.kill();
    let _ = coordinator.wait();
    assert!(status.success(), "{}", text.lock().unwrap());
    std::thread::sleep(Duration::from_millis(200));
    assert_contains(&text.lock().unwrap(), &["SIGTERM: stopping"]);
}
