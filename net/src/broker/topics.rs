//! Kafka's rules for topic names. The topic table itself is the cluster layer's
//! (`coremq_replication::topics`); the engine checks only what a log directory needs.

/// Longest topic name Kafka accepts (249, so `name-partition` fits a 255-byte file name).
pub const TOPIC_NAME_LENGTH_MAX: usize = 249;

/// Checks a topic name with Kafka's rules: 1 to 249 characters of `[a-zA-Z0-9._-]`, and not
/// `.` or `..`. The reason, if not.
pub fn validate_name(name: &str) -> Result<(), String> {
    let invalid = |reason: &str| Err(format!("invalid topic name {name:?}: {reason}"));
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
        assert!(validate_name("quotes.eu-west_1").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("..").is_err());
        assert!(validate_name("a/b").is_err());
        assert!(validate_name(&"x".repeat(250)).is_err());
        assert!(validate_name(&"x".repeat(249)).is_ok());
    }
}
