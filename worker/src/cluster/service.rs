//! The `pruner.v1.Worker` gRPC service: each call becomes a command for the runtime.

use super::runtime::RuntimeHandle;
use llmprune_shared::proto::worker_server::Worker;
use llmprune_shared::proto::{
    ApplyPlanReply, ApplyPlanRequest, EvaluateReply, EvaluateRequest, GenerateReply, GenerateRequest, LoadShardReply, LoadShardRequest, NcclUniqueIdReply,
    NcclUniqueIdRequest, RecoverReply, RecoverRequest, SaveShardReply, SaveShardRequest, ScoreReply, ScoreRequest, ShutdownReply, ShutdownRequest,
};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

pub struct WorkerService {
    pub runtime: RuntimeHandle,
    /// Set to true when the coordinator asks the worker to exit.
    pub shutdown: watch::Sender<bool>,
}

#[tonic::async_trait]
impl Worker for WorkerService {
    async fn nccl_unique_id(&self, _: Request<NcclUniqueIdRequest>) -> Result<Response<NcclUniqueIdReply>, Status> {
        Ok(Response::new(NcclUniqueIdReply { id: self.runtime.nccl_id().await? }))
    }

    async fn load_shard(&self, req: Request<LoadShardRequest>) -> Result<Response<LoadShardReply>, Status> {
        Ok(Response::new(self.runtime.load(req.into_inner()).await?))
    }

    async fn score(&self, req: Request<ScoreRequest>) -> Result<Response<ScoreReply>, Status> {
        Ok(Response::new(self.runtime.score(req.into_inner()).await?))
    }

    async fn apply_plan(&self, req: Request<ApplyPlanRequest>) -> Result<Response<ApplyPlanReply>, Status> {
        Ok(Response::new(self.runtime.apply(req.into_inner()).await?))
    }

    async fn save_shard(&self, req: Request<SaveShardRequest>) -> Result<Response<SaveShardReply>, Status> {
        Ok(Response::new(self.runtime.save(req.into_inner()).await?))
    }

    async fn recover(&self, req: Request<RecoverRequest>) -> Result<Response<RecoverReply>, Status> {
        Ok(Response::new(self.runtime.recover(req.into_inner()).await?))
    }

    async fn evaluate(&self, req: Request<EvaluateRequest>) -> Result<Response<EvaluateReply>, Status> {
        Ok(Response::new(self.runtime.evaluate(req.into_inner()).await?))
    }

    async fn generate(&self, req: Request<GenerateRequest>) -> Result<Response<GenerateReply>, Status> {
        Ok(Response::new(self.runtime.generate(req.into_inner()).await?))
    }

    async fn shutdown(&self, req: Request<ShutdownRequest>) -> Result<Response<ShutdownReply>, Status> {
        tracing::info!(reason = %req.into_inner().reason, "shutdown requested by the coordinator");
        let _ = self.shutdown.send(true);
        Ok(Response::new(ShutdownReply {}))
    }
}
