//! The topic table: names, ids, partition counts and configs, as every shard reads it.
//!
//! The table is built from the cluster metadata (`TopicTable::from_image`) and every shard
//! holds the current one (an immutable `Arc`), read without locks. Changes go through the
//! controller ([`crate::Cluster`]). A data directory written before the metadata log kept the
//! table in `meta/topics.json`; it is read once, to move its topics into the metadata log.
//! Names are checked by the front end (Kafka's naming rules are Kafka's).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::Error;
use crate::metadata::MetadataImage;

/// A topic's id: 16 random bytes, never all zero (Kafka's topic UUID).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TopicId(pub [u8; 16]);

/// One topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topic {
    pub name: String,
    pub id: TopicId,
    pub partitions: u32,
    /// The topic's config overrides as the front end named them (Kafka's topic configs),
    /// stored as given; the front end turns them into the log's settings ([`crate::LogConfigs`]).
    pub configs: BTreeMap<String, String>,
}

impl Topic {
    /// The log of partition `index`, if the topic has it.
    pub fn log(&self, index: i32) -> Option<coremq_engine::TopicPartition> {
        (index >= 0 && (index as u32) < self.partitions).then(|| coremq_engine::TopicPartition {
            topic: self.name.clone(),
            partition: index as u32,
        })
    }
}

/// An immutable snapshot of every topic.
#[derive(Debug, Clone, Default)]
pub struct TopicTable {
    by_name: BTreeMap<String, Arc<Topic>>,
    by_id: HashMap<TopicId, Arc<Topic>>,
}

impl TopicTable {
    pub fn get(&self, name: &str) -> Option<&Arc<Topic>> {
        self.by_name.get(name)
    }

    pub fn by_id(&self, id: &TopicId) -> Option<&Arc<Topic>> {
        self.by_id.get(id)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Topic>> {
        self.by_name.values()
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The topics of the cluster metadata `image`.
    pub fn from_image(image: &MetadataImage) -> TopicTable {
        let mut table = TopicTable::default();
        for (id, topic) in &image.topics {
            let topic = Arc::new(Topic {
                name: topic.name.clone(),
                id: TopicId(*id),
                partitions: topic.partitions.len() as u32,
                configs: topic.configs.clone(),
            });
            table.by_id.insert(topic.id, topic.clone());
            table.by_name.insert(topic.name.clone(), topic);
        }
        table
    }

    /// A copy with `topic` added or replaced.
    pub fn with(&self, topic: Topic) -> TopicTable {
        let mut table = self.clone();
        if let Some(old) = table.by_name.get(&topic.name) {
            table.by_id.remove(&old.id);
        }
        let topic = Arc::new(topic);
        table.by_id.insert(topic.id, topic.clone());
        table.by_name.insert(topic.name.clone(), topic);
        table
    }

    /// A copy without topic `name`.
    pub fn without(&self, name: &str) -> TopicTable {
        let mut table = self.clone();
        if let Some(old) = table.by_name.remove(name) {
            table.by_id.remove(&old.id);
        }
        table
    }

    /// The table as JSON, one object per topic.
    pub fn encode(&self) -> String {
        let topics: Vec<serde_json::Value> = self
            .iter()
            .map(|topic| {
                serde_json::json!({
                    "name": topic.name,
                    "id": hex(&topic.id.0),
                    "partitions": topic.partitions,
                    "configs": topic.configs,
                })
            })
            .collect();
        serde_json::to_string_pretty(&serde_json::json!({ "version": 1, "topics": topics }))
            .expect("JSON values serialize")
    }

    pub fn decode(text: &str) -> Result<TopicTable, String> {
        let json: serde_json::Value =
            serde_json::from_str(text).map_err(|error| format!("not JSON: {error}"))?;
        let mut table = TopicTable::default();
        let topics = json["topics"].as_array().ok_or("no \"topics\" array")?;
        for topic in topics {
            let name = topic["name"].as_str().ok_or("topic without a name")?;
            let id = unhex(topic["id"].as_str().unwrap_or_default())
                .ok_or_else(|| format!("topic {name}: bad id"))?;
            let partitions = topic["partitions"]
                .as_u64()
                .and_then(|count| u32::try_from(count).ok())
                .ok_or_else(|| format!("topic {name}: bad partition count"))?;
            let configs = topic["configs"]
                .as_object()
                .map(|configs| {
                    configs
                        .iter()
                        .filter_map(|(key, value)| Some((key.clone(), value.as_str()?.into())))
                        .collect()
                })
                .unwrap_or_default();
            table = table.with(Topic {
                name: name.into(),
                id,
                partitions,
                configs,
            });
        }
        Ok(table)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Option<TopicId> {
    if text.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (index, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(index * 2..index * 2 + 2)?, 16).ok()?;
    }
    Some(TopicId(id))
}

/// A new random topic id (never the all-zero "no id").
pub fn new_topic_id() -> TopicId {
    loop {
        let id = TopicId(rand::random());
        if id.0 != [0; 16] {
            return id;
        }
    }
}

/// Where a data directory written before the cluster metadata log kept its topic table
/// (read once, when the topics move into the metadata log).
#[derive(Debug, Clone)]
pub struct TopicStore {
    path: PathBuf,
}

impl TopicStore {
    pub fn new(meta_dir: &Path) -> TopicStore {
        TopicStore {
            path: meta_dir.join("topics.json"),
        }
    }

    /// The stored table, `None` without one.
    pub fn load(&self) -> Result<Option<TopicTable>, Error> {
        let unusable = |reason: String| Error::Metadata {
            path: self.path.clone(),
            reason,
        };
        match std::fs::read_to_string(&self.path) {
            Ok(text) => TopicTable::decode(&text).map(Some).map_err(unusable),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(unusable(error.to_string())),
        }
    }

    /// Removes the stored table (once its topics are in the metadata log).
    pub async fn remove(&self) -> Result<(), Error> {
        let path = self.path.clone();
        let removed = coremq_engine::storage::blocking(move || {
            std::fs::remove_file(&path)?;
            let dir = path.parent().expect("the store has a directory");
            std::fs::File::open(dir)?.sync_all()
        })
        .await;
        removed.map_err(|error| Error::Metadata {
            path: self.path.clone(),
            reason: error.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_survives_encoding() {
        let table = TopicTable::default()
            .with(Topic {
                name: "quotes".into(),
                id: new_topic_id(),
                partitions: 3,
                configs: BTreeMap::from([("compression.type".into(), "zstd".into())]),
            })
            .with(Topic {
                name: "orders".into(),
                id: new_topic_id(),
                partitions: 1,
                configs: BTreeMap::new(),
            });
        let decoded = TopicTable::decode(&table.encode()).unwrap();
        assert_eq!(decoded.len(), 2);
        for topic in table.iter() {
            assert_eq!(decoded.get(&topic.name), Some(topic));
            assert_eq!(decoded.by_id(&topic.id), Some(topic));
        }
        let smaller = decoded.without("orders");
        assert!(smaller.get("orders").is_none());
        assert_eq!(smaller.len(), 1);
        assert!(TopicTable::decode("{\"topics\": [{\"name\": \"x\"}]}").is_err());
    }
}
