//! The one error type of the libraries. Each error has a [`ErrorKind`]; the HTTP layer maps a
//! kind to a status in exactly one place, so a storage adapter never thinks about HTTP.

use std::fmt;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, as far as a caller needs to know to react.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Well-formed input that breaks a rule (bad filter, unknown channel, ...).
    Invalid,
    /// The thing asked for does not exist.
    NotFound,
    /// The request conflicts with the current state (duplicate id, idempotency key reuse, ...).
    Conflict,
    /// A backend could not be reached or timed out; retrying later may succeed.
    Unavailable,
    /// A bug or a broken invariant.
    Internal,
}

impl ErrorKind {
    /// The stable snake_case code used in API error bodies.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::Invalid => "invalid",
            ErrorKind::NotFound => "not_found",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
        }
    }
}

/// A library error: a kind, a message fit for the API client, and an optional source that is
/// logged but never shown to the client (it may name hosts or SQL).
#[derive(Debug, thiserror::Error)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Conflict, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }

    /// A backend failure: the message is generic, the cause is kept as the source.
    pub fn unavailable(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Self {
            kind: ErrorKind::Unavailable,
            message: message.into(),
            source: Some(Box::new(source)),
        }
    }

    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }
}

impl From<crate::filter::FilterError> for Error {
    fn from(e: crate::filter::FilterError) -> Self {
        Error::invalid(e.message)
    }
}
