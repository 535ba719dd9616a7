//! The API's one error type, and its translation to the wire: to a gRPC `Status` here and to an HTTP response
//! (Conductor's error body) here, and nowhere else.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};

use crate::engine::definitions::FieldError;
use crate::engine::{Rejection, RejectionKind};
use crate::raft::proposer::ProposeError;
use crate::storage::state_machine::ReadError;

/// Everything an API call can fail with. Serializable so that a leader can hand a forwarded call's error back to the
/// follower that received it, unchanged.
///
/// A refusal (bad input, an unknown id, a conflict, a stale lease) is the engine's [`Rejection`], whether the engine
/// refused the command or the API refused it before proposing: one taxonomy, [`RejectionKind`], from apply to the
/// wire (docs/adr/0003-error-mapping.md). The other variants are this node's own failures.
#[derive(Debug, thiserror::Error, Serialize, Deserialize)]
pub enum ApiError {
    /// Refused, for the reason its kind says; nothing was written.
    #[error("{}", .0.message)]
    Refused(Rejection),
    /// No leader could be reached in time, or this node is shutting down; nothing was applied.
    #[error("{0}")]
    Unavailable(String),
    /// Too many writes waiting; nothing was applied.
    #[error("{0}")]
    Overloaded(String),
    /// The write reached a leader but its outcome is unknown.
    #[error("{0}")]
    OutcomeUnknown(String),
    /// A storage failure on this node.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// Bad input, which `message` names.
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::Refused(Rejection::invalid(message))
    }

    /// The thing asked for does not exist.
    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::Refused(Rejection::not_found(message))
    }

    /// Bad input with one field error.
    pub fn invalid_field(error: FieldError) -> Self {
        let message =
            if error.path.is_empty() { error.message.clone() } else { format!("{}: {}", error.path, error.message) };
        ApiError::Refused(Rejection { kind: RejectionKind::Invalid, message, field_errors: vec![error] })
    }

    /// Bad input with several field errors.
    pub fn invalid_fields(field_errors: Vec<FieldError>) -> Self {
        let summary: Vec<String> = field_errors.iter().map(|e| format!("{}: {}", e.path, e.message)).collect();
        let message = format!("invalid definition: {}", summary.join("; "));
        ApiError::Refused(Rejection { kind: RejectionKind::Invalid, message, field_errors })
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        match r.kind {
            // The engine's message for field errors is generic; the API's names each field.
            RejectionKind::Invalid if !r.field_errors.is_empty() => ApiError::invalid_fields(r.field_errors),
            _ => ApiError::Refused(r),
        }
    }
}

impl From<ProposeError> for ApiError {
    fn from(e: ProposeError) -> Self {
        match e {
            ProposeError::NoLeader { .. } | ProposeError::ShuttingDown => ApiError::Unavailable(e.to_string()),
            ProposeError::OutcomeUnknown(_) => ApiError::OutcomeUnknown(e.to_string()),
            ProposeError::Overloaded { .. } => ApiError::Overloaded(e.to_string()),
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> Self {
        let message = e.to_string();
        match e {
            ApiError::Refused(r) => match r.kind {
                RejectionKind::Invalid => tonic::Status::invalid_argument(message),
                RejectionKind::NotFound => tonic::Status::not_found(message),
                RejectionKind::AlreadyExists => tonic::Status::already_exists(message),
                RejectionKind::Conflict | RejectionKind::StaleLease => tonic::Status::failed_precondition(message),
            },
            ApiError::Unavailable(_) => tonic::Status::unavailable(message),
            ApiError::Overloaded(_) => tonic::Status::resource_exhausted(message),
            ApiError::OutcomeUnknown(_) => tonic::Status::deadline_exceeded(message),
            ApiError::Internal(_) => tonic::Status::internal(message),
        }
    }
}

/// Conductor's error body.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorBody {
    status: u16,
    message: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    validation_errors: Vec<FieldError>,
    retryable: bool,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        let (status, retryable, validation_errors) = match self {
            ApiError::Refused(r) => match r.kind {
                RejectionKind::Invalid => (StatusCode::BAD_REQUEST, false, r.field_errors),
                RejectionKind::NotFound => (StatusCode::NOT_FOUND, false, Vec::new()),
                RejectionKind::AlreadyExists | RejectionKind::Conflict | RejectionKind::StaleLease => {
                    (StatusCode::CONFLICT, false, Vec::new())
                }
            },
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, true, Vec::new()),
            ApiError::Overloaded(_) => (StatusCode::TOO_MANY_REQUESTS, true, Vec::new()),
            ApiError::OutcomeUnknown(_) => (StatusCode::GATEWAY_TIMEOUT, true, Vec::new()),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, false, Vec::new()),
        };
        let body = ErrorBody { status: status.as_u16(), message, validation_errors, retryable };
        (status, axum::Json(body)).into_response()
    }
}
