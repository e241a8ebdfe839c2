//! Newtypes that keep the integer spaces apart.

use std::fmt;

use crate::error::{Error, Result};

/// A logical record number in a log (Kafka's offset).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset(pub u64);

/// A byte position inside one segment file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position(pub u64);

/// Milliseconds since the Unix epoch, as Kafka timestamps are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub i64);

impl Offset {
    pub fn next(self) -> Offset {
        Offset(self.0 + 1)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Timestamp {
    pub fn now() -> Timestamp {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Timestamp(since_epoch.as_millis() as i64)
    }
}

/// Longest log directory name: the file-system limit on one path component.
const DIR_NAME_BYTES_MAX: usize = 255;

/// A topic-partition: the unit of ordering, ownership and storage (one log).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: u32,
}

impl TopicPartition {
    /// Checks what the log's identity needs: a name that makes one directory (`topic-partition`)
    /// of at most 255 bytes, without `/` or NUL, and not `.` or `..`. A front end applies its
    /// own naming rules first (Kafka's are in the broker).
    pub fn new(topic: impl Into<String>, partition: u32) -> Result<TopicPartition> {
        let topic = topic.into();
        let invalid = |reason| -> Result<TopicPartition> {
            Err(Error::InvalidName {
                name: topic.clone(),
                reason,
            })
        };
        if topic.is_empty() {
            return invalid("the name is empty");
        }
        if topic == "." || topic == ".." {
            return invalid("'.' and '..' are reserved");
        }
        if topic.contains(['/', '\0']) {
            return invalid("'/' and NUL cannot be in a directory name");
        }
        let dir_name_bytes = topic.len() + 1 + partition.to_string().len();
        if dir_name_bytes > DIR_NAME_BYTES_MAX {
            return invalid("the directory name `topic-partition` is longer than 255 bytes");
        }
        Ok(TopicPartition { topic, partition })
    }

    /// The directory name of this partition's log: `topic-partition`.
    pub fn dir_name(&self) -> String {
        format!("{}-{}", self.topic, self.partition)
    }

    /// Parses a directory name written by [`TopicPartition::dir_name`].
    pub fn from_dir_name(name: &str) -> Option<TopicPartition> {
        let (topic, partition) = name.rsplit_once('-')?;
        let partition = partition.parse().ok()?;
        TopicPartition::new(topic, partition).ok()
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_names_make_one_directory() {
        assert!(TopicPartition::new("quotes.eu-west_1", 3).is_ok());
        assert!(TopicPartition::new("", 0).is_err());
        assert!(TopicPartition::new("..", 0).is_err());
        assert!(TopicPartition::new("a/b", 0).is_err());
        assert!(TopicPartition::new("a\0b", 0).is_err());
        assert!(TopicPartition::new("x".repeat(253), 0).is_ok());
        assert!(TopicPartition::new("x".repeat(253), 10).is_err());
        assert!(
            TopicPartition::new("a b", 0).is_ok(),
            "Kafka's rules are the broker's"
        );
    }

    #[test]
    fn dir_name_round_trips_with_dashes_in_topic() {
        let tp = TopicPartition::new("a-b-c", 12).unwrap();
        assert_eq!(tp.dir_name(), "a-b-c-12");
        assert_eq!(TopicPartition::from_dir_name("a-b-c-12"), Some(tp));
        assert_eq!(TopicPartition::from_dir_name("nodash"), None);
    }
}
