//! Which shard holds each client identifier's session. A client identifier has a home shard
//! (a hash of it); the home records the shard of the identifier's latest connection and a
//! generation that grows with each claim. A new connection claims the identifier at its home,
//! then takes the session from the shard the home named: that shard closes the old
//! connection (MQTT-3.1.4-3) and hands over the session's state. A take remembers its
//! generation, so a connection that claimed earlier but installs its session later (two
//! connections racing with one identifier) finds it was taken over and closes. Between the
//! brokers of a cluster, the claims stored with sessions settle it (`sessions.rs`).

use std::collections::HashMap;

use bytes::BytesMut;

use super::Mqtt;
use super::codec::{self, Disconnect, Level, Packet, Properties, reason};
use super::session::{Session, State};
use crate::client::murmur2;
use crate::server::CloseReason;

#[derive(Debug, Default)]
pub(super) struct Registry {
    /// Client identifiers homed here: the shard of their session and its generation.
    claims: HashMap<String, (usize, u64)>,
    next_generation: u64,
    /// Sessions taken from this shard: the generation of the claim that took them.
    taken: HashMap<String, u64>,
}

impl Mqtt {
    /// The home shard of `client_id`.
    fn home(&self, client_id: &str) -> usize {
        let shards = self.context.handle.shard_count();
        (murmur2(client_id.as_bytes()) as u32 as usize) % shards
    }

    /// Claims `client_id` for a session on this shard: the shard that held it before, if
    /// any, and the claim's generation.
    pub(super) async fn claim(&self, client_id: &str) -> Result<(Option<usize>, u64), String> {
        let (id, shard) = (client_id.to_string(), self.shard);
        self.context
            .handle
            .on_shard(self.home(client_id), move |_| async move {
                let mqtt = Mqtt::current().ok_or(coremq_engine::Error::ShuttingDown)?;
                let mut registry = mqtt.registry.borrow_mut();
                registry.next_generation += 1;
                let generation = registry.next_generation;
                let previous = registry.claims.insert(id, (shard, generation));
                Ok((previous.map(|(shard, _)| shard), generation))
            })
            .await
            .map_err(|error| error.to_string())
    }

    /// Forgets `client_id`'s claim if it is still the one of `generation` (its session ended).
    pub(super) async fn release(&self, client_id: &str, generation: u64) {
        let id = client_id.to_string();
        let _ = self
            .context
            .handle
            .on_shard(self.home(client_id), move |_| async move {
                if let Some(mqtt) = Mqtt::current() {
                    let mut registry = mqtt.registry.borrow_mut();
                    if registry
                        .claims
                        .get(&id)
                        .is_some_and(|&(_, g)| g == generation)
                    {
                        registry.claims.remove(&id);
                    }
                }
                Ok(())
            })
            .await;
    }

    /// Takes `client_id`'s session from `shard` for the claim of `generation`: its state
    /// and cluster claim, if it had one there.
    pub(super) async fn take(
        &self,
        shard: usize,
        client_id: &str,
        generation: u64,
    ) -> Option<(State, u64)> {
        if shard == self.shard {
            return self.take_here(client_id, generation);
        }
        let id = client_id.to_string();
        self.context
            .handle
            .on_shard(shard, move |_| async move {
                Ok(Mqtt::current().and_then(|mqtt| mqtt.take_here(&id, generation)))
            })
            .await
            .ok()
            .flatten()
    }

    fn take_here(&self, client_id: &str, generation: u64) -> Option<(State, u64)> {
        {
            let mut registry = self.registry.borrow_mut();
            let taken = registry.taken.entry(client_id.to_string()).or_default();
            *taken = (*taken).max(generation);
        }
        let session = self.sessions.borrow().get(client_id).cloned()?;
        if session.generation >= generation {
            return None;
        }
        self.give_up(&session, format!("client {client_id:?} connected again"));
        let state = session.state.borrow().clone();
        Some((state, session.claim))
    }

    /// Ends `session` here for a connection that took it over: its connection gets
    /// DISCONNECT 0x8E (5.0) and is closed (MQTT-3.1.4-3), and the session is out of this
    /// shard and never stored again.
    pub(super) fn give_up(&self, session: &Session, why: String) {
        session.taken.set(true);
        if let Some(link) = session.link() {
            let level = session.attached.borrow().as_ref().map(|a| a.level);
            if level == Some(Level::V5) {
                let mut out = BytesMut::new();
                let disconnect = Packet::Disconnect(Disconnect {
                    code: reason::SESSION_TAKEN_OVER,
                    properties: Properties::default(),
                });
                if codec::encode(&disconnect, Level::V5, &mut out).is_ok() {
                    link.push(vec![out.freeze()]);
                }
            }
            link.close(CloseReason::SessionTakenOver, why);
        }
        self.remove(session);
    }

    /// The shard holding `client_id`'s session on this broker, if one does.
    pub(super) async fn session_shard(&self, client_id: &str) -> Option<usize> {
        let id = client_id.to_string();
        self.context
            .handle
            .on_shard(self.home(client_id), move |_| async move {
                Ok(Mqtt::current().and_then(|mqtt| {
                    mqtt.registry
                        .borrow()
                        .claims
                        .get(&id)
                        .map(|&(shard, _)| shard)
                }))
            })
            .await
            .ok()
            .flatten()
    }

    /// Whether a session of `generation` may be installed here: no later claim took
    /// `client_id` from this shard meanwhile.
    pub(super) fn may_install(&self, client_id: &str, generation: u64) -> bool {
        let mut registry = self.registry.borrow_mut();
        match registry.taken.get(client_id) {
            Some(&taken) if taken > generation => false,
            Some(_) => {
                registry.taken.remove(client_id);
                true
            }
            None => true,
        }
    }
}
