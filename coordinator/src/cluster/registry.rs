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
    workers: Mutex<Vec<Registered>>,
    /// Woken on every registration.
    pub joined: Notify,
    /// Set when the run is over: heartbeats answer `stop`.
    stop: AtomicBool,
    progress: mpsc::UnboundedSender<ProgressEvent>,
}

impl Registry {
    pub fn new(run_id: String, expected: usize, heartbeat: Duration, progress: mpsc::UnboundedSender<ProgressEvent>) -> Self {
        Self { run_id, expected, heartbeat, workers: Mutex::new(Vec::new()), joined: Notify::new(), stop: AtomicBool::new(false), progress }
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

/// The gRPC face of the registry.
pub struct CoordinatorService(pub std::sync::Arc<Registry>);

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn register(&self, req: Request<RegisterRequest>) -> Result<Response<RegisterReply>, Status> {
        let r = req.into_inner();
        check_version(r.protocol_version, "this worker")?;
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
        Ok(Response::new(RegisterReply { worker_id: id, run_id: reg.run_id.clone(), heartbeat_interval_ms: reg.heartbeat.as_millis() as u32 }))
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
        let mut stream = req.into_inner();
        while let Some(event) = stream.message().await? {
            let _ = self.0.progress.send(event);
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
        CoordinatorService(std::sync::Arc::new(Registry::new("run".into(), expected, Duration::from_millis(100), tx)))
    }

    fn register(version: u32, name: &str) -> Request<RegisterRequest> {
        Request::new(RegisterRequest { protocol_version: version, name: name.into(), ..Default::default() })
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
