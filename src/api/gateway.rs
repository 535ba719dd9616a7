//! The one path every API write and consistent read takes: validate the command, propose it through Raft (from
//! any node), and turn the engine's answer into a result or an [`ApiError`].

use std::sync::Arc;

use crate::api::error::ApiError;
use crate::engine::{Command, CommandResponse};
use crate::raft::proposer::{Committed, Proposer};
use crate::storage::StateReader;

/// How a read is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// This node's applied state (may lag the leader by a few entries).
    #[default]
    Local,
    /// Sees every write acknowledged before the read began (confirmed with the leader and a quorum).
    Linearizable,
}

/// Proposes commands and serves reads for the API front ends.
#[derive(Debug, Clone)]
pub struct Gateway {
    proposer: Arc<Proposer>,
    reader: StateReader,
}

impl Gateway {
    /// A gateway over this node's proposer and state.
    pub fn new(proposer: Arc<Proposer>, reader: StateReader) -> Self {
        Gateway { proposer, reader }
    }

    /// The applied state, after [`Gateway::barrier`] when the read must be consistent.
    pub fn reader(&self) -> &StateReader {
        &self.reader
    }

    /// Validates and commits a command; a refusal by the engine becomes the matching [`ApiError`].
    pub async fn write(&self, command: Command) -> Result<Committed, ApiError> {
        let mut problems = command.validate();
        if problems.is_empty() {
            problems = command.validate_code();
        }
        if !problems.is_empty() {
            return Err(ApiError::invalid_fields(problems));
        }
        let committed = self.proposer.propose(command).await?;
        match committed.response {
            CommandResponse::Rejected(rejection) => Err(rejection.into()),
            _ => Ok(committed),
        }
    }

    /// The leader's gRPC address, for clients that want to go direct.
    pub fn leader_grpc_addr(&self) -> Option<String> {
        self.proposer.leader_grpc_addr()
    }

    /// Waits until a read at this node would be linearizable, when asked for.
    pub async fn barrier(&self, consistency: Consistency) -> Result<(), ApiError> {
        if consistency == Consistency::Linearizable {
            self.proposer.linearizable_barrier().await?;
        }
        Ok(())
    }
}
