//! Operations on workflows, one `Exec::op_*` per workflow command: each checks its preconditions, refuses
//! deterministically with a [`Rejection`] when they do not hold, changes the workflow and lets the decider carry
//! on (in [`Exec::finish`](super::exec::Exec::finish)).
//!
//! - `start.rs`: starting a workflow, with its idempotency key.
//! - `tasks.rs`: what workers and operators report for a task: taking it, updating it, signalling a WAIT or HUMAN
//!   task, skipping a step, appending to its log.
//! - `leases.rs`: handing tasks to workers under leases, and the lease holders' heartbeats.
//! - `control.rs`: an operator's requests on a whole workflow: terminate, pause, resume, retry, restart, rerun.
//! - `timeouts.rs`: the timer's tick, which applies the timeouts that are due, and when the next one is.
//!
//! The outcome of an evaluation of user code is applied in [`evaluation`](super::evaluation).
//!
//! The request types the commands carry are re-exported here, where the rest of the crate names them.
//!
//! Owns: each operation's preconditions and refusals, and the request types the commands carry. Must not touch:
//! what runs next ([`decide`](super::decide)) or storage.

mod control;
mod leases;
mod start;
mod tasks;
mod timeouts;

pub use leases::{LeaseGrant, TaskRef};
pub use start::{IdempotencyStrategy, StartWorkflow};
pub use tasks::TaskUpdate;

use super::model::LeaseRef;
use super::Rejection;

/// The refusal of an update or heartbeat under a lease that is not the task's current one.
fn stale(task_id: &str, lease: LeaseRef, current: u64) -> Rejection {
    Rejection::stale_lease(format!(
        "lease {} of task {task_id} is no longer valid (current lease {current}); the task was handed out again or finished",
        lease.lease_seq
    ))
}

/// The refusal of an operation on a workflow or task (`what`) that does not exist.
fn not_found(what: &str, id: &str) -> Rejection {
    Rejection::not_found(format!("{what} {id} not found"))
}
