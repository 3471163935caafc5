//! The task API containerd calls over ttrpc (v2, also served as v3): each
//! request is logged, handed to the registry or to the container it names,
//! and its error turned into the ttrpc status `crate::error` chooses.

use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::api::{self, DeleteResponse};
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::{TtrpcContext, TtrpcResult};
use log::{info, warn};

use crate::server::tasks::Tasks;

/// The ttrpc task service.
#[derive(Clone)]
pub struct TaskService(pub Arc<Tasks>);

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        info!("create container {} bundle {}", req.id, req.bundle);
        let pid = self.0.create(req).await.inspect_err(|e| warn!("{e}"));
        // what parsing the spec and planning took is free now: hand it back
        // (a shim lives as long as its pod, and a node runs many)
        crate::sys::mem::release_free_heap();
        let pid = pid?;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        info!("start container {}", req.id);
        let pid = self.0.start(&req).await;
        crate::sys::mem::release_free_heap();
        let pid = pid?;
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        Ok(self.0.lock(&req.id).await?.state(&req.exec_id)?)
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let exit = self.0.wait(&req).await?;
        Ok(api::WaitResponse {
            exit_status: exit.code,
            exited_at: MessageField::some(exit.timestamp()),
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        info!("kill container {} signal {}", req.id, req.signal);
        let c = self.0.lock(&req.id).await?;
        let env = self.0.env();
        if req.exec_id.is_empty() {
            c.kill(env, req.signal, req.all).await?;
        } else {
            c.kill_exec(env, &req.exec_id, req.signal).await?;
        }
        Ok(api::Empty::default())
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<DeleteResponse> {
        info!("delete container {}", req.id);
        Ok(self.0.delete(&req).await?)
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let pids = self.0.lock(&req.id).await?.pids();
        Ok(api::PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn update(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        info!("update resources of container {}", req.id);
        let c = self.0.lock(&req.id).await?;
        c.update(self.0.env(), &req).await?;
        Ok(api::Empty::default())
    }

    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        info!("exec {} in container {}", req.exec_id, req.id);
        let mut c = self.0.lock(&req.id).await?;
        c.add_exec(self.0.env(), &req).await?;
        Ok(api::Empty::default())
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let stats = self.0.stats(&req.id).await?;
        Ok(api::StatsResponse {
            stats: MessageField::some(stats),
            ..Default::default()
        })
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let c = self.0.lock(&req.id).await?;
        c.resize(&req.exec_id, req.width, req.height)?;
        Ok(api::Empty::default())
    }

    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        let mut c = self.0.lock(&req.id).await?;
        if req.stdin {
            c.close_stdin(&req.exec_id);
        }
        Ok(api::Empty::default())
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = match self.0.lock(&req.id).await {
            Ok(c) => c.pid(),
            Err(_) => 0,
        };
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            ..Default::default()
        })
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> TtrpcResult<api::Empty> {
        self.0.shutdown();
        Ok(api::Empty::default())
    }
}
