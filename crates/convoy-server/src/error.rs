//! Errors as HTTP answers: every error is a status and a JSON body
//! `{"error": "…"}` in words a user understands, and the mapping from
//! convoy's own errors to statuses is public, so an embedder's routes
//! answer the way these do.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use convoy::{Failure, SubmitError, SubmitErrorKind};

/// An error answer: a status and a message (the body is
/// `{"error": message}`). A 429 also carries `Retry-After: 1`.
///
/// ```
/// use axum::http::StatusCode;
/// use convoy_server::ApiError;
///
/// let e = ApiError::unprocessable("tokens must not be empty");
/// assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
/// assert_eq!(e.message(), "tokens must not be empty");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    /// An error with any status.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    /// 400: the body is not a JSON request at all.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    /// 413: the request is too large to take.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, message)
    }

    /// 422: well-formed JSON that asks for something that cannot be served.
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }

    /// 429 with `Retry-After`: load, not the request, was the reason.
    pub fn retry_later(message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, message)
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(serde_json::json!({ "error": self.message }));
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            (self.status, [(header::RETRY_AFTER, "1")], body).into_response()
        } else {
            (self.status, body).into_response()
        }
    }
}

/// The answer to a refused submit:
///
/// | kind | status |
/// |---|---|
/// | `QueueFull`, `Overloaded`, `TenantQuota` | 429 with `Retry-After` |
/// | `ShuttingDown` | 503 |
/// | `CostNeverFits` | 413 |
/// | `DeadlinePassed`, `DedupNotEnabled`, `Invalid` | 422 |
///
/// ```
/// use axum::http::StatusCode;
/// use convoy::{Request, Runtime, SubmitErrorKind};
///
/// let rt = Runtime::builder().batch_fn(|xs: &[u32]| xs.to_vec()).build()?;
/// rt.shutdown();
/// let refused = rt.handle().submit(Request::new(1)).unwrap_err();
/// assert_eq!(convoy_server::refusal(&refused).status(), StatusCode::SERVICE_UNAVAILABLE);
/// # Ok::<(), convoy::BuildError>(())
/// ```
pub fn refusal<I>(e: &SubmitError<I>) -> ApiError {
    match e.kind {
        SubmitErrorKind::QueueFull => {
            ApiError::retry_later("the queue for this priority is full; retry later")
        }
        SubmitErrorKind::Overloaded => ApiError::retry_later(
            "overloaded: this priority is turned away while the queue runs late; retry later",
        ),
        SubmitErrorKind::TenantQuota => ApiError::retry_later(format!(
            "{}; retry once some of them have run",
            e.reason
                .as_deref()
                .unwrap_or("this tenant has its quota of requests queued")
        )),
        SubmitErrorKind::ShuttingDown => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is shutting down",
        ),
        SubmitErrorKind::CostNeverFits => {
            ApiError::too_large("the request is larger than any worker can hold")
        }
        SubmitErrorKind::DeadlinePassed => ApiError::unprocessable(
            "the deadline had passed by the time the request was read: deadline_ms counts from \
             the request's first byte",
        ),
        SubmitErrorKind::DedupNotEnabled => {
            ApiError::unprocessable("dedup_key is not supported by this server")
        }
        SubmitErrorKind::Invalid => {
            ApiError::unprocessable(e.reason.clone().unwrap_or_else(|| "invalid input".into()))
        }
        _ => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.kind.as_str()),
    }
}

/// The answer to an accepted request that ended without an output:
/// `Expired` 504, `ShutDown` and `Cancelled` 503, `ExecutorFailed` 500.
///
/// ```
/// use axum::http::StatusCode;
/// use convoy::Failure;
///
/// assert_eq!(convoy_server::failure(&Failure::Expired).status(), StatusCode::GATEWAY_TIMEOUT);
/// ```
pub fn failure(f: &Failure) -> ApiError {
    match f {
        Failure::Expired => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "the deadline passed while the request waited in the queue",
        ),
        Failure::ShutDown => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server shut down before the request ran",
        ),
        Failure::Cancelled => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "cancelled"),
        Failure::ExecutorFailed(why) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the model failed: {why}"),
        ),
        other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
    }
}
