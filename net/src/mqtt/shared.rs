//! Shared subscriptions (`$share/{group}/{filter}`, MQTT 5.0 section 4.8.2, also taken from
//! 3.1.1 clients as HiveMQ does): each message matching the filter goes to one member of the
//! group. Members live on any shard, and every shard that tails the message's partition sees
//! it, so every shard keeps the same list of a group's members (each change is sent to all
//! shards) and picks the same one: a hash of the message's partition and offset over the
//! members that are connected, or over all of them when none is (its session queues the
//! message). Only the shard holding the chosen member delivers it.

use std::collections::HashMap;

use super::Mqtt;

/// A member of a shared subscription group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Member {
    pub shard: usize,
    /// The session's key on its shard.
    pub key: u64,
    pub connected: bool,
}

/// A group: its share name and topic filter.
pub(super) type Group = (String, String);

/// Every group's members, the same on every shard.
#[derive(Debug, Default)]
pub(super) struct Groups {
    members: HashMap<Group, Vec<Member>>,
}

/// A change to a group's members.
#[derive(Debug, Clone)]
pub(super) enum Change {
    /// Joins, or updates whether it is connected.
    Join(Group, Member),
    Leave(Group, usize, u64),
}

impl Groups {
    fn apply(&mut self, change: Change) {
        match change {
            Change::Join(group, member) => {
                let members = self.members.entry(group).or_default();
                members.retain(|m| (m.shard, m.key) != (member.shard, member.key));
                members.push(member);
                members.sort();
            }
            Change::Leave(group, shard, key) => {
                if let Some(members) = self.members.get_mut(&group) {
                    members.retain(|m| (m.shard, m.key) != (shard, key));
                    if members.is_empty() {
                        self.members.remove(&group);
                    }
                }
            }
        }
    }

    /// The member of `group` that gets the message at `offset` of partition `partition`.
    pub fn choose(&self, group: &Group, partition: u32, offset: u64) -> Option<Member> {
        let members = self.members.get(group)?;
        let connected: Vec<&Member> = members.iter().filter(|m| m.connected).collect();
        let pool: Vec<&Member> = if connected.is_empty() {
            members.iter().collect()
        } else {
            connected
        };
        if pool.is_empty() {
            return None;
        }
        let hash = offset
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(u64::from(partition).wrapping_mul(0xC2B2_AE3D_27D4_EB4F));
        Some(*pool[(hash % pool.len() as u64) as usize])
    }
}

impl Mqtt {
    /// Applies `change` here and sends it to every other shard.
    pub(super) fn share(&self, change: Change) {
        self.groups.borrow_mut().apply(change.clone());
        for shard in 0..self.context.handle.shard_count() {
            if shard == self.shard {
                continue;
            }
            let (handle, change) = (self.context.handle.clone(), change.clone());
            coremq_runtime::spawn_local(async move {
                let _ = handle
                    .on_shard(shard, move |_| async move {
                        if let Some(mqtt) = Mqtt::current() {
                            mqtt.groups.borrow_mut().apply(change);
                        }
                        Ok(())
                    })
                    .await;
            })
            .detach();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shard_picks_the_same_member_and_prefers_connected_ones() {
        let group: Group = ("g".into(), "a/#".into());
        let mut one = Groups::default();
        let mut other = Groups::default();
        let members = [
            Member {
                shard: 0,
                key: 1,
                connected: true,
            },
            Member {
                shard: 1,
                key: 7,
                connected: true,
            },
            Member {
                shard: 1,
                key: 3,
                connected: false,
            },
        ];
        for member in members {
            one.apply(Change::Join(group.clone(), member));
        }
        for member in members.iter().rev() {
            other.apply(Change::Join(group.clone(), *member));
        }
        let mut counts = HashMap::new();
        for offset in 0..1000 {
            let chosen = one.choose(&group, 0, offset).unwrap();
            assert_eq!(Some(chosen), other.choose(&group, 0, offset));
            assert!(chosen.connected);
            *counts.entry((chosen.shard, chosen.key)).or_insert(0) += 1;
        }
        assert_eq!(counts.len(), 2);
        assert!(counts.values().all(|&count| count > 350), "{counts:?}");
        one.apply(Change::Leave(group.clone(), 0, 1));
        one.apply(Change::Leave(group.clone(), 1, 7));
        assert_eq!(
            one.choose(&group, 0, 5).unwrap().key,
            3,
            "only the offline one left"
        );
        one.apply(Change::Leave(group.clone(), 1, 3));
        assert!(one.choose(&group, 0, 5).is_none());
    }
}
