//! The public gRPC services (proto/baton.proto): thin adapters from protobuf to [`MetadataApi`] and
//! [`NodeStatus`].

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::api::error::ApiError;
use crate::api::metadata::{parse_document, Consistency, MetadataApi};
use crate::api::status::NodeStatus;
use crate::engine::{Command, CommandResponse};
use crate::pb::v1 as pb;
use crate::pb::v1::cluster_service_server::ClusterService;
use crate::pb::v1::metadata_service_server::MetadataService;
use crate::raft::proposer::{Committed, Proposer};
use crate::raft::Raft;
use crate::runtime::dispatch::Dispatcher;
use crate::storage::StateReader;

/// `ClusterService`.
#[derive(Clone)]
pub struct ClusterGrpc {
    raft: Raft,
    proposer: Arc<Proposer>,
    reader: StateReader,
    dispatcher: Arc<Dispatcher>,
    cluster_id: Arc<str>,
}

impl ClusterGrpc {
    /// The service for this node.
    pub fn new(
        raft: Raft,
        proposer: Arc<Proposer>,
        reader: StateReader,
        dispatcher: Arc<Dispatcher>,
        cluster_id: &str,
    ) -> Self {
        ClusterGrpc { raft, proposer, reader, dispatcher, cluster_id: cluster_id.into() }
    }
}

#[tonic::async_trait]
impl ClusterService for ClusterGrpc {
    async fn status(&self, request: Request<pb::StatusRequest>) -> Result<Response<pb::NodeStatus>, Status> {
        let verify = request.into_inner().verify;
        let status = NodeStatus::collect(&self.raft, &self.reader, &self.dispatcher, &self.cluster_id, verify).await?;
        Ok(Response::new(status.into()))
    }

    async fn bench_write(
        &self,
        request: Request<pb::BenchWriteRequest>,
    ) -> Result<Response<pb::BenchWriteReply>, Status> {
        let pb::BenchWriteRequest { key, value } = request.into_inner();
        let command = Command::BenchWrite { key, value };
        if let Some(problem) = command.validate().into_iter().next() {
            return Err(Status::invalid_argument(format!("{}: {}", problem.path, problem.message)));
        }
        let committed = self.proposer.propose(command).await.map_err(ApiError::from)?;
        match committed.response {
            CommandResponse::Rejected(rejection) => Err(ApiError::from(rejection).into()),
            _ => Ok(Response::new(pb::BenchWriteReply { log_index: committed.log_index })),
        }
    }
}

/// `MetadataService`.
#[derive(Debug, Clone)]
pub struct MetadataGrpc {
    api: MetadataApi,
}

impl MetadataGrpc {
    /// The service over `api`.
    pub fn new(api: MetadataApi) -> Self {
        MetadataGrpc { api }
    }
}

fn consistency(value: i32) -> Result<Consistency, Status> {
    match pb::Consistency::try_from(value) {
        Ok(pb::Consistency::Local) => Ok(Consistency::Local),
        Ok(pb::Consistency::Linearizable) => Ok(Consistency::Linearizable),
        Err(_) => Err(Status::invalid_argument(format!("consistency: unknown value {value}"))),
    }
}

fn reply(committed: Committed) -> Response<pb::WriteReply> {
    Response::new(pb::WriteReply { log_index: committed.log_index, leader_id: committed.leader_id })
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, Status> {
    serde_json::to_string(value).map_err(|e| Status::internal(format!("encode definition: {e}")))
}

/// Parses each document of a list, naming the failing element (`[2].retryCount`) when there are several.
fn parse_all<T: serde::de::DeserializeOwned>(texts: &[String]) -> Result<Vec<T>, ApiError> {
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| parse_document(text, &if texts.len() > 1 { format!("[{i}]") } else { String::new() }))
        .collect()
}

#[tonic::async_trait]
impl MetadataService for MetadataGrpc {
    async fn register_task_defs(
        &self,
        request: Request<pb::RegisterTaskDefsRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let texts: Vec<String> = request.into_inner().task_defs.into_iter().map(|d| d.json).collect();
        let defs = parse_all(&texts)?;
        Ok(reply(self.api.register_task_defs(defs).await?))
    }

    async fn update_task_def(&self, request: Request<pb::TaskDefJson>) -> Result<Response<pb::WriteReply>, Status> {
        let def = parse_document(&request.into_inner().json, "")?;
        Ok(reply(self.api.update_task_def(def).await?))
    }

    async fn get_task_def(&self, request: Request<pb::GetTaskDefRequest>) -> Result<Response<pb::TaskDefJson>, Status> {
        let request = request.into_inner();
        let def = self.api.task_def(&request.name, consistency(request.consistency)?).await?;
        Ok(Response::new(pb::TaskDefJson { json: to_json(&def)? }))
    }

    async fn list_task_defs(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListTaskDefsReply>, Status> {
        let defs = self.api.task_defs(consistency(request.into_inner().consistency)?).await?;
        let task_defs =
            defs.iter().map(|d| to_json(d).map(|json| pb::TaskDefJson { json })).collect::<Result<_, _>>()?;
        Ok(Response::new(pb::ListTaskDefsReply { task_defs }))
    }

    async fn register_workflow_def(
        &self,
        request: Request<pb::RegisterWorkflowDefRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let request = request.into_inner();
        let text = request.workflow_def.map(|d| d.json).unwrap_or_default();
        let def = parse_document(&text, "")?;
        Ok(reply(self.api.register_workflow_def(def, request.overwrite).await?))
    }

    async fn update_workflow_defs(
        &self,
        request: Request<pb::UpdateWorkflowDefsRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let texts: Vec<String> = request.into_inner().workflow_defs.into_iter().map(|d| d.json).collect();
        let defs = parse_all(&texts)?;
        Ok(reply(self.api.update_workflow_defs(defs).await?))
    }

    async fn get_workflow_def(
        &self,
        request: Request<pb::GetWorkflowDefRequest>,
    ) -> Result<Response<pb::WorkflowDefJson>, Status> {
        let request = request.into_inner();
        let version = (request.version != 0).then_some(request.version);
        let def = self.api.workflow_def(&request.name, version, consistency(request.consistency)?).await?;
        Ok(Response::new(pb::WorkflowDefJson { json: to_json(&def)? }))
    }

    async fn list_workflow_defs(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListWorkflowDefsReply>, Status> {
        let defs = self.api.workflow_defs(consistency(request.into_inner().consistency)?).await?;
        let workflow_defs =
            defs.iter().map(|d| to_json(d).map(|json| pb::WorkflowDefJson { json })).collect::<Result<_, _>>()?;
        Ok(Response::new(pb::ListWorkflowDefsReply { workflow_defs }))
    }

    async fn delete_task_def(
        &self,
        request: Request<pb::DeleteTaskDefRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        Ok(reply(self.api.delete_task_def(request.into_inner().name).await?))
    }

    async fn delete_workflow_def(
        &self,
        request: Request<pb::DeleteWorkflowDefRequest>,
    ) -> Result<Response<pb::WriteReply>, Status> {
        let request = request.into_inner();
        if request.version == 0 {
            return Err(Status::invalid_argument("version: a workflow definition's version is required"));
        }
        Ok(reply(self.api.delete_workflow_def(request.name, request.version).await?))
    }
}
