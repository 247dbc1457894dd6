//! The one error type of the crate.

/// Everything that can go wrong in `runnel-geo`.
///
/// Messages are safe to show to a flow author: they never carry credentials or
/// whole documents.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GeoError {
    /// A document's geometry field is missing, malformed or out of range.
    #[error("invalid geometry at `{field}`: {reason}")]
    InvalidGeometry {
        /// Dotted path of the offending field, e.g. `d.location.latitude`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A query parameter is unknown, missing or has a bad value.
    #[error("invalid query parameter `{param}`: {reason}")]
    InvalidQuery {
        /// Name of the offending parameter, e.g. `lat`.
        param: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The document itself is unusable (not an object, bad id, ...).
    #[error("invalid document: {reason}")]
    InvalidDocument {
        /// What is wrong with it.
        reason: String,
    },
    /// The options given to `open`/`connect` are unusable.
    #[error("invalid option `{option}`: {reason}")]
    InvalidOption {
        /// Name of the option.
        option: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The embedded store failed to read or write its files.
    #[error("storage error: {reason}")]
    Storage {
        /// What failed.
        reason: String,
    },
    /// The backend could not be reached (down, timing out, 5xx) even after retries.
    #[error("backend unavailable after {attempts} attempt(s): {reason}")]
    Unavailable {
        /// How many attempts were made.
        attempts: u32,
        /// The last error seen.
        reason: String,
    },
    /// The backend answered with an error that retrying will not fix.
    #[error("backend rejected the request (status {status}): {reason}")]
    Backend {
        /// HTTP status, or 0 when the error was not an HTTP answer.
        status: u16,
        /// The backend's message.
        reason: String,
    },
    /// An update kept losing `_rev` races even after retries.
    #[error("document `{id}` kept conflicting after {attempts} attempt(s)")]
    Conflict {
        /// The document id.
        id: String,
        /// How many attempts were made.
        attempts: u32,
    },
    /// The backend has been shut down.
    #[error("backend is closed")]
    Closed,
}

impl GeoError {
    pub(crate) fn geometry(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidGeometry {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn query(param: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::InvalidQuery {
            param: param.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn document(reason: impl Into<String>) -> Self {
        Self::InvalidDocument {
            reason: reason.into(),
        }
    }

    pub(crate) fn storage(error: impl Into<redb::Error>) -> Self {
        Self::Storage {
            reason: error.into().to_string(),
        }
    }
}

/// Shorthand used throughout the crate.
pub type GeoResult<T> = Result<T, GeoError>;
