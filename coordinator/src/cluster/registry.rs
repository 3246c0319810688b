//! The `pruner.v1.Coordinator` service: workers register (protocol version and token
//! checked), heartbeat, and stream progress. The driver reads the registry to form the
//! cluster and to notice workers that went silent.

use llmprune_shared::proto::coordinator_server::Coordinator;
use llmprune_shared::proto::{check_version, Capabilities, HeartbeatReply, HeartbeatRequest, ProgressAck, ProgressEvent, RegisterReply, RegisterRequest};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, Notify};
use tonic::{Request, Response, Status, Streaming};

#[derive(Debug, Clone)]
pub struct Registered {
    pub id: String,
    pub worker_address: String,
    pub ring_address: String,
    pub replica_ring_address: String,
    pub capabilities: Capabilities,
    pub last_seen: Instant,
}

pub struct Registry {
    pub run_id: String,
    expected: usize,
    heartbeat: Duration,
    heartbeat_timeout: Duration,
    workers: Mutex<Vec<Registered>>,
    /// Woken on every registration.
    pub joined: Notify,
    /// Set when the run is over: heartbeats answer `stop`.
    stop: AtomicBool,
    progress: mpsc::UnboundedSender<ProgressEvent>,
}

impl Registry {
    pub fn new(run_id: String, expected: usize, heartbeat: Duration, heartbeat_timeout: Duration, progress: mpsc::UnboundedSender<ProgressEvent>) -> Self {
        Self { run_id, expected, heartbeat, heartbeat_timeout, workers: Mutex::new(Vec::new()), joined: Notify::new(), stop: AtomicBool::new(false), progress }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Registered>> {
        // A panicking handler cannot leave the list half-updated (pushes are atomic), so a
        // poisoned lock is still consistent.
        self.workers.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn workers(&self) -> Vec<Registered> {
        self.lock().clone()
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Workers silent for longer than `timeout`, with how long.
    pub fn silent(&self, timeout: Duration) -> Vec<(String, Duration)> {
        let now = Instant::now();
        self.lock().iter().filter(|w| now - w.last_seen > timeout).map(|w| (w.id.clone(), now - w.last_seen)).collect()
    }
}

/// Longest worker name and address a registration may carry.
const MAX_NAME: usize = 64;
const MAX_ADDRESS: usize = 255;

/// What a worker says of itself, checked before anything of it is kept or logged: a short
/// name of letters, digits, `-`, `_` and `.`; a gRPC address `http(s)://host:port`; ring
/// addresses `host:port`; a device `cpu` or `cuda:N`.
pub fn check_registration(r: &RegisterRequest) -> Result<(), String> {
    if r.name.len() > MAX_NAME || !r.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(format!("a worker name has at most {MAX_NAME} letters, digits, '-', '_' or '.'"));
    }
    let host_port = |what: &str, a: &str| -> Result<(), String> {
        let bad = || format!("the {what} must be host:port (at most {MAX_ADDRESS} characters)");
        let (host, port) = a.rsplit_once(':').ok_or_else(bad)?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        let host_ok = host.parse::<std::net::IpAddr>().is_ok() || (!host.is_empty() && host.chars().all(|c| c.is_ascii_alphanumeric() || "-.".contains(c)));
        (a.len() <= MAX_ADDRESS && host_ok && port.parse::<u16>().is_ok_and(|p| p > 0)).then_some(()).ok_or_else(bad)
    };
    let grpc = r.worker_address.strip_prefix("http://").or_else(|| r.worker_address.strip_prefix("https://"));
    host_port("worker address", grpc.ok_or("the worker address must be http://host:port or https://host:port")?)?;
    host_port("ring address", &r.ring_address)?;
    host_port("replica ring address", &r.replica_ring_address)?;
    let caps = r.capabilities.clone().unwrap_or_default();
    if llmprune_shared::device::WorkerDevice::parse(&caps.device_kind).is_err() || caps.hostname.len() > MAX_ADDRESS {
        return Err("the capabilities must name a device `cpu` or `cuda:N` and a hostname of at most 255 characters".into());
    }
    Ok(())
}

/// A progress event fit to show: short names, counts that make sense, finite rates.
pub fn progress_event_ok(e: &ProgressEvent) -> bool {
    let short = |s: &str| s.len() <= MAX_NAME && !s.chars().any(char::is_control);
    short(&e.worker_id) && short(&e.phase) && short(&e.unit) && e.done <= e.total && e.tokens_per_s.is_finite() && e.eta_s.is_finite() && e.eta_s >= 0.0
}

/// The gRPC face of the registry.
pub struct CoordinatorService(pub std::sync::Arc<Registry>);

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn register(&self, req: Request<RegisterRequest>) -> Result<Response<RegisterReply>, Status> {
        let peer = req.remote_addr().map_or("an unknown address".to_string(), |a| a.to_string());
        let r = req.into_inner();
        let checked = check_version(r.protocol_version, "this worker").and_then(|()| check_registration(&r).map_err(Status::invalid_argument));
        if let Err(status) = checked {
            tracing::warn!(%peer, reason = %status.message(), "refused a registration");
            return Err(status);
        }
        let reg = &self.0;
        let id = {
            let mut workers = reg.lock();
            if workers.len() >= reg.expected {
                return Err(Status::resource_exhausted(format!("the cluster already has its {} workers", reg.expected)));
            }
            let taken = |name: &str| workers.iter().any(|w| w.id == name);
            let id = if r.name.is_empty() || taken(&r.name) { format!("worker-{}", workers.len()) } else { r.name.clone() };
            workers.push(Registered {
                id: id.clone(),
                worker_address: r.worker_address,
                ring_address: r.ring_address,
                replica_ring_address: r.replica_ring_address,
                capabilities: r.capabilities.unwrap_or_default(),
                last_seen: Instant::now(),
            });
            id
        };
        tracing::info!(worker = %id, "worker registered");
        reg.joined.notify_waiters();
        Ok(Response::new(RegisterReply {
            worker_id: id,
            run_id: reg.run_id.clone(),
            heartbeat_interval_ms: reg.heartbeat.as_millis() as u32,
            heartbeat_timeout_ms: reg.heartbeat_timeout.as_millis() as u32,
        }))
    }

    async fn heartbeat(&self, req: Request<HeartbeatRequest>) -> Result<Response<HeartbeatReply>, Status> {
        let r = req.into_inner();
        check_version(r.protocol_version, "this worker")?;
        let reg = &self.0;
        let mut workers = reg.lock();
        let w = workers.iter_mut().find(|w| w.id == r.worker_id).ok_or_else(|| Status::not_found(format!("no worker `{}` in this run", r.worker_id)))?;
        w.last_seen = Instant::now();
        Ok(Response::new(HeartbeatReply { stop: reg.stop.load(Ordering::SeqCst) }))
    }

    async fn report_progress(&self, req: Request<Streaming<ProgressEvent>>) -> Result<Response<ProgressAck>, Status> {
        let peer = req.remote_addr().map_or("an unknown address".to_string(), |a| a.to_string());
        let mut stream = req.into_inner();
        let mut dropped = 0u64;
        while let Some(event) = stream.message().await? {
            if progress_event_ok(&event) {
                let _ = self.0.progress.send(event);
            } else {
                dropped += 1;
                if dropped == 1 {
                    tracing::warn!(%peer, "dropped a malformed progress event (and will drop any more from this worker silently)");
                }
            }
        }
        Ok(Response::new(ProgressAck {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use llmprune_shared::proto::PROTOCOL_VERSION;

    fn service(expected: usize) -> CoordinatorService {
        let (tx, _rx) = mpsc::unbounded_channel();
        CoordinatorService(std::sync::Arc::new(Registry::new("run".into(), expected, Duration::from_millis(100), Duration::from_secs(1), tx)))
    }

    fn registration(version: u32, name: &str) -> RegisterRequest {
        RegisterRequest {
            protocol_version: version,
            name: name.into(),
            worker_address: "http://10.0.0.7:7071".into(),
            ring_address: "node-7.cluster.local:40001".into(),
            replica_ring_address: "[::1]:40002".into(),
            capabilities: Some(Capabilities { device_kind: "cuda:3".into(), hostname: "node-7".into(), ..Default::default() }),
        }
    }

    fn register(version: u32, name: &str) -> Request<RegisterRequest> {
        Request::new(registration(version, name))
    }

    #[test]
    fn malformed_progress_events_are_not_shown() {
        let ok = ProgressEvent { worker_id: "local-0".into(), phase: "scoring".into(), unit: "passes".into(), done: 3, total: 10, ..Default::default() };
        assert!(progress_event_ok(&ok));
        for bad in [
            ProgressEvent { phase: "p".repeat(1 << 20), ..ok.clone() },
            ProgressEvent { unit: "steps\n\x1b[2J".into(), ..ok.clone() },
            ProgressEvent { done: 11, ..ok.clone() },
            ProgressEvent { eta_s: f64::NAN, ..ok.clone() },
            ProgressEvent { tokens_per_s: f64::INFINITY, ..ok.clone() },
        ] {
            assert!(!progress_event_ok(&bad), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn registrations_with_bad_fields_are_refused_before_anything_is_kept() {
        let s = service(2);
        let ok = registration(PROTOCOL_VERSION, "pod-a_1.x");
        assert!(check_registration(&ok).is_ok());
        let cases: Vec<(RegisterRequest, &str)> = vec![
            (RegisterRequest { name: "x".repeat(15 << 20), ..ok.clone() }, "worker name"),
            (RegisterRequest { name: "a b\n".into(), ..ok.clone() }, "worker name"),
            (RegisterRequest { worker_address: String::new(), ..ok.clone() }, "worker address"),
            (RegisterRequest { worker_address: "http://host".into(), ..ok.clone() }, "worker address"),
            (RegisterRequest { worker_address: "ftp://host:1".into(), ..ok.clone() }, "worker address"),
            (RegisterRequest { ring_address: "host:0".into(), ..ok.clone() }, "ring address"),
            (RegisterRequest { replica_ring_address: format!("{}:1", "h".repeat(300)), ..ok.clone() }, "replica ring address"),
            (RegisterRequest { capabilities: Some(Capabilities { device_kind: "tpu".into(), ..Default::default() }), ..ok.clone() }, "device"),
        ];
        for (req, says) in cases {
            let e = s.register(Request::new(req)).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument);
            assert!(e.message().contains(says), "{}", e.message());
            assert!(e.message().len() < 200, "the refusal does not echo the field");
        }
        assert!(s.0.workers().is_empty());
    }

    #[tokio::test]
    async fn other_protocol_versions_and_extra_workers_are_refused() {
        let s = service(1);
        let e = s.register(register(PROTOCOL_VERSION + 1, "a")).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.message().contains(&format!("protocol version {}", PROTOCOL_VERSION + 1)), "{}", e.message());
        let id = s.register(register(PROTOCOL_VERSION, "a")).await.unwrap().into_inner().worker_id;
        assert_eq!(id, "a");
        let e = s.register(register(PROTOCOL_VERSION, "b")).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        let beat = |v: u32, id: &str| Request::new(HeartbeatRequest { protocol_version: v, worker_id: id.into(), phase: String::new() });
        assert!(!s.heartbeat(beat(PROTOCOL_VERSION, "a")).await.unwrap().into_inner().stop);
        assert_eq!(s.heartbeat(beat(PROTOCOL_VERSION + 1, "a")).await.unwrap_err().code(), tonic::Code::FailedPrecondition);
        assert_eq!(s.heartbeat(beat(PROTOCOL_VERSION, "zz")).await.unwrap_err().code(), tonic::Code::NotFound);
        s.0.stop();
        assert!(s.heartbeat(beat(PROTOCOL_VERSION, "a")).await.unwrap().into_inner().stop);
        // Silent workers are reported.
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(s.0.silent(Duration::from_millis(10)).len(), 1);
    }
}
