//! What the cluster layer can fail with: its own failures as variants, the engine's carried as
//! they are.

use std::path::PathBuf;

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
