//! The broker settings a `CoremqCluster` may set in `spec.config`: the keys of coremq's
//! config file, each with the kind of value it takes. The listeners, identities, voters,
//! data directory, shards and TCP keepalive are the operator's to set, from the rest of the
//! spec. A key or value the broker would refuse at start is refused here first, before a
//! rolling restart could take a broker down with it.

use serde_json::Value;

/// What a setting's value must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An integer, at least the bound (`-1` means "no limit" for the retention settings).
    Integer {
        min: i64,
    },
    Boolean,
    Text,
}

/// Every setting `spec.config` may hold; `tests/operator_settings.rs` (in the broker's
/// crate) checks the list against `coremq --help`.
pub const SETTINGS: &[(&str, Kind)] = &[
    ("accept", Kind::Text),
    ("pin_shards", Kind::Boolean),
    ("auto_create_topics", Kind::Boolean),
    ("default_partitions", Kind::Integer { min: 1 }),
    ("socket_request_max_bytes", Kind::Integer { min: 1 }),
    (
        "connection_requests_in_flight_max",
        Kind::Integer { min: 1 },
    ),
    ("shard_request_bytes_max", Kind::Integer { min: 1 }),
    ("cache_bytes", Kind::Integer { min: 0 }),
    ("partitions_per_shard_max", Kind::Integer { min: 1 }),
    ("offsets_topic_partitions", Kind::Integer { min: 1 }),
    ("group_initial_rebalance_delay_ms", Kind::Integer { min: 0 }),
    ("log_segment_bytes", Kind::Integer { min: 1 }),
    ("message_max_bytes", Kind::Integer { min: 1 }),
    ("log_retention_bytes", Kind::Integer { min: -1 }),
    ("log_retention_ms", Kind::Integer { min: -1 }),
    ("log_cleanup_policy", Kind::Text),
    ("log_flush_interval_messages", Kind::Integer { min: 0 }),
    ("log_flush_interval_ms", Kind::Integer { min: 0 }),
    ("broker_heartbeat_interval_ms", Kind::Integer { min: 1 }),
    ("broker_session_timeout_ms", Kind::Integer { min: 1 }),
    ("replica_lag_time_max_ms", Kind::Integer { min: 1 }),
    ("group_min_session_timeout_ms", Kind::Integer { min: 0 }),
    ("group_max_session_timeout_ms", Kind::Integer { min: 0 }),
    ("connections_max_idle_ms", Kind::Integer { min: 0 }),
    ("request_read_timeout_ms", Kind::Integer { min: 1 }),
    ("max_connections", Kind::Integer { min: 1 }),
    ("max_connections_per_ip", Kind::Integer { min: 1 }),
    ("mqtt_ws_path", Kind::Text),
    ("mqtt_topic_map", Kind::Text),
    ("mqtt_default_topic", Kind::Text),
    ("mqtt_maximum_packet_size", Kind::Integer { min: 1 }),
    ("mqtt_receive_maximum", Kind::Integer { min: 1 }),
    ("mqtt_max_queued_messages", Kind::Integer { min: 0 }),
    ("mqtt_topic_alias_maximum", Kind::Integer { min: 0 }),
    ("mqtt_connect_timeout_ms", Kind::Integer { min: 1 }),
];

/// Settings the operator sets from the rest of the spec.
pub const OWNED: &[&str] = &[
    "config",
    "data_dir",
    "kafka_listener",
    "admin_listener",
    "advertised_host",
    "advertised_port",
    "node_id",
    "controller_voters",
    "controller_listener",
    "cluster_id",
    "shards",
    "mqtt_listener",
    "mqtt_ws_listener",
    "tcp_keepalive_idle_s",
    "tcp_keepalive_interval_s",
    "tcp_keepalive_count",
];

/// Why `key = value` cannot go into the brokers' config file, if it cannot.
pub fn check(key: &str, value: &Value) -> Result<(), String> {
    if OWNED.contains(&key) {
        return Err(format!(
            "config.{key} is set by the operator from the rest of the spec"
        ));
    }
    let Some((_, kind)) = SETTINGS.iter().find(|(name, _)| *name == key) else {
        return Err(format!(
            "config.{key} is not a coremq setting (see `coremq --help`: flags with underscores)"
        ));
    };
    let fits = match (kind, value) {
        (Kind::Integer { min }, Value::Number(number)) => {
            number.as_i64().is_some_and(|number| number >= *min)
        }
        (Kind::Boolean, Value::Bool(_)) => true,
        (Kind::Text, Value::String(_)) => true,
        _ => false,
    };
    if fits {
        Ok(())
    } else {
        Err(format!(
            "config.{key} must be {}, not {value}",
            match kind {
                Kind::Integer { min } => format!("an integer of at least {min}"),
                Kind::Boolean => "true or false".into(),
                Kind::Text => "a string".into(),
            }
        ))
    }
}

/// `value` in the config file, when it is a scalar.
pub fn toml_value(value: &Value) -> Option<toml::Value> {
    match value {
        Value::Bool(value) => Some((*value).into()),
        Value::Number(number) => number.as_i64().map(Into::into),
        Value::String(text) => Some(text.clone().into()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn settings_are_refused_when_owned_unknown_or_of_the_wrong_kind() {
        assert!(check("default_partitions", &json!(6)).is_ok());
        assert!(check("log_retention_ms", &json!(-1)).is_ok());
        assert!(check("auto_create_topics", &json!(false)).is_ok());
        assert!(check("mqtt_topic_map", &json!("quotes/#=quotes")).is_ok());
        let owned = check("cluster_id", &json!("x")).unwrap_err();
        assert!(owned.contains("set by the operator"), "{owned}");
        let unknown = check("log.retention.ms", &json!(1)).unwrap_err();
        assert!(unknown.contains("not a coremq setting"), "{unknown}");
        let kind = check("default_partitions", &json!("6")).unwrap_err();
        assert!(kind.contains("an integer of at least 1"), "{kind}");
        assert!(check("default_partitions", &json!(0)).is_err());
        assert!(check("pin_shards", &json!(1)).is_err());
        assert!(check("mqtt_ws_path", &json!({"a": 1})).is_err());
    }
}
