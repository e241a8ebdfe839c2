//! The broker's errors: each failure of its own is a variant; the engine's errors are carried
//! as they are, never borrowed for something they are not. [`super::errors`] turns either
//! into a Kafka error code.

use std::path::PathBuf;

use crate::server::ListenError;

#[derive(Debug)]
pub enum Error {
    /// Settings that do not hold together; the reason names them and the fix.
    Config { reason: String },
    /// A directory or file of the broker's own (data directory, topic table, producer-id
    /// block) cannot be read or written.
    Metadata { path: PathBuf, reason: String },
    /// A listener cannot be opened, or another process holds its address.
    Listen(ListenError),
    /// The HTTP admin server could not start.
    Admin { reason: String },
    /// The cluster layer (topics, partitions) refused or failed an operation.
    Cluster(coremq_replication::Error),
    /// A start-up or shutdown step failed.
    Step { step: String, source: Box<Error> },
    /// The engine refused or failed an operation.
    Engine(coremq_engine::Error),
}

impl Error {
    /// `source` as the failure of `step` (what the broker was doing).
    pub fn step(step: impl Into<String>, source: impl Into<Error>) -> Error {
        Error::Step {
            step: step.into(),
            source: Box::new(source.into()),
        }
    }
}

impl From<ListenError> for Error {
    fn from(error: ListenError) -> Error {
        Error::Listen(error)
    }
}

impl From<coremq_replication::Error> for Error {
    fn from(error: coremq_replication::Error) -> Error {
        Error::Cluster(error)
    }
}

impl From<coremq_engine::Error> for Error {
    fn from(error: coremq_engine::Error) -> Error {
        Error::Engine(error)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Config { reason } | Error::Admin { reason } => f.write_str(reason),
            Error::Metadata { path, reason } => write!(f, "{}: {reason}", path.display()),
            Error::Listen(error) => write!(f, "{error}"),
            Error::Cluster(source) => write!(f, "{source}"),
            Error::Step { step, source } => write!(f, "{step}: {source}"),
            Error::Engine(source) => write!(f, "{source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Step { source, .. } => Some(source.as_ref()),
            Error::Engine(source) => Some(source),
            Error::Cluster(source) => Some(source),
            Error::Listen(source) => Some(source),
            _ => None,
        }
    }
}
