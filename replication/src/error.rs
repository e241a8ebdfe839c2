//! What the cluster layer can fail with: its own failures as variants, the engine's carried as
//! they are.

use std::path::PathBuf;

use crate::controller::ControllerError;

#[derive(Debug)]
pub enum Error {
    /// The stored topic table cannot be read or written.
    Metadata { path: PathBuf, reason: String },
    /// No topic of that name.
    UnknownTopic { name: String },
    /// A topic's configs make no valid log config.
    TopicConfig { topic: String, reason: String },
    /// The engine refused or failed an operation.
    Engine(coremq_engine::Error),
    /// The controller refused the request.
    Controller(ControllerError),
    /// No active controller answered: none is elected, or leadership moved while the request
    /// was in flight (it may or may not have been carried out).
    NotController,
    /// The cluster metadata is stopping.
    Stopped,
}

impl From<coremq_engine::Error> for Error {
    fn from(error: coremq_engine::Error) -> Error {
        Error::Engine(error)
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Metadata { path, reason } => write!(f, "{}: {reason}", path.display()),
            Error::UnknownTopic { name } => write!(f, "no topic {name:?}"),
            Error::TopicConfig { topic, reason } => write!(f, "topic {topic:?}: {reason}"),
            Error::Engine(source) => write!(f, "{source}"),
            Error::Controller(ControllerError::InvalidAssignment(reason)) => {
                write!(f, "invalid replica assignment: {reason}")
            }
            Error::Controller(error) => write!(f, "the controller refused: {error:?}"),
            Error::NotController => write!(f, "no active controller answered"),
            Error::Stopped => write!(f, "the cluster metadata is stopping"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Engine(source) => Some(source),
            _ => None,
        }
    }
}
