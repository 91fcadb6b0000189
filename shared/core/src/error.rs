//! Error types. Step bodies return [`StepError`] (retriable or not); function code sees and
//! returns [`Error`]; the store, queue and engine have their own `thiserror` enums.

use std::fmt;
use std::time::Duration;

use crate::model::ErrorInfo;

/// Why a step body failed, and whether trying again may help.
///
/// Any `std::error::Error` converts into a retriable `StepError`, so `?` works in step bodies;
/// use [`StepError::non_retriable`] for failures that no retry can fix (bad input), and
/// [`StepError::retry_after`] when the outside service says when to come back (429).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepError {
    pub name: String,
    pub message: String,
    pub retriable: bool,
    pub retry_after: Option<Duration>,
}

impl StepError {
    pub fn retriable(message: impl Into<String>) -> Self {
        StepError {
            name: "StepError".into(),
            message: message.into(),
            retriable: true,
            retry_after: None,
        }
    }
    pub fn non_retriable(message: impl Into<String>) -> Self {
        StepError {
            name: "NonRetriableError".into(),
            message: message.into(),
            retriable: false,
            retry_after: None,
        }
    }
    /// Retriable, not before `after` (overrides the backoff when longer).
    pub fn retry_after(after: Duration, message: impl Into<String>) -> Self {
        StepError {
            retry_after: Some(after),
            ..StepError::retriable(message)
        }
    }
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
    pub fn info(&self) -> ErrorInfo {
        ErrorInfo::new(self.name.clone(), self.message.clone())
    }
}

impl fmt::Display for StepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.message)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for StepError {
    fn from(e: E) -> Self {
        StepError::retriable(e.to_string())
    }
}

/// What function code sees from `ctx.step(...)` and friends, and returns when it fails.
///
/// Any `std::error::Error` converts into it, so `?` works in function code. Returning it from
/// the function fails the run with `name` and `message` recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub name: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// A step failed for good (non-retriable, or retries exhausted). Function code may handle it.
    StepFailed { step_id: String },
    /// An error raised by function code.
    Function,
    /// A programming error the engine detected (undeclared step, non-deterministic replay,
    /// an oversized output). The run fails with it, whatever the code does with it.
    Definition,
}

impl Error {
    pub fn new(name: impl Into<String>, message: impl Into<String>) -> Self {
        Error {
            kind: ErrorKind::Function,
            name: name.into(),
            message: message.into(),
        }
    }
    pub fn msg(message: impl Into<String>) -> Self {
        Error::new("Error", message)
    }
    pub(crate) fn with_kind(
        kind: ErrorKind,
        name: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Error {
            kind,
            name: name.into(),
            message: message.into(),
        }
    }
    pub fn info(&self) -> ErrorInfo {
        ErrorInfo::new(self.name.clone(), self.message.clone())
    }
    pub fn is_step_failure(&self) -> bool {
        matches!(self.kind, ErrorKind::StepFailed { .. })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.name, self.message)
    }
}

impl<E: std::error::Error + Send + Sync + 'static> From<E> for Error {
    fn from(e: E) -> Self {
        Error::msg(e.to_string())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store backend error: {0}")]
    Backend(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("{what} is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        what: String,
        size: usize,
        limit: usize,
    },
}

impl StoreError {
    /// A stored row that could not be read (as opposed to a backend that is down).
    pub fn is_corrupt(&self) -> bool {
        matches!(self, StoreError::Corrupt(_))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue backend error: {0}")]
    Backend(String),
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("invalid input: {0}")]
    Invalid(String),
    #[error("too large: {0}")]
    TooLarge(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
}
