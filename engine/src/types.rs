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

/// Longest topic name Kafka accepts (249, so `name-partition` fits a 255-byte file name).
pub const TOPIC_NAME_LENGTH_MAX: usize = 249;

/// A topic-partition: the unit of ordering, ownership and storage (one log).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: u32,
}

impl TopicPartition {
    /// Checks the topic name with Kafka's rules: 1 to 249 characters of `[a-zA-Z0-9._-]`,
    /// and not `.` or `..`.
    pub fn new(topic: impl Into<String>, partition: u32) -> Result<TopicPartition> {
        let topic = topic.into();
        validate_topic_name(&topic)?;
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

pub fn validate_topic_name(name: &str) -> Result<()> {
    let invalid = |reason| {
        Err(Error::InvalidName {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return invalid("the name is empty");
    }
    if name.len() > TOPIC_NAME_LENGTH_MAX {
        return invalid("the name is longer than 249 characters");
    }
    if name == "." || name == ".." {
        return invalid("'.' and '..' are reserved");
    }
    let legal = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-';
    if !name.chars().all(legal) {
        return invalid("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(TopicPartition::new("quotes.eu-west_1", 3).is_ok());
        assert!(TopicPartition::new("", 0).is_err());
        assert!(TopicPartition::new("..", 0).is_err());
        assert!(TopicPartition::new("a/b", 0).is_err());
        assert!(TopicPartition::new("x".repeat(250), 0).is_err());
        assert!(TopicPartition::new("x".repeat(249), 0).is_ok());
    }

    #[test]
    fn dir_name_round_trips_with_dashes_in_topic() {
        let tp = TopicPartition::new("a-b-c", 12).unwrap();
        assert_eq!(tp.dir_name(), "a-b-c-12");
        assert_eq!(TopicPartition::from_dir_name("a-b-c-12"), Some(tp));
        assert_eq!(TopicPartition::from_dir_name("nodash"), None);
    }
}
