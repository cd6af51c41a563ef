//! Key states and learned upstream signals shared through Redis (`backend = "redis"`,
//! SPEC §11): a key that one replica saw cool down, go invalid or run out of credit is
//! avoided by every replica, and what the upstream last said about a key reaches them all.
//!
//! ```text
//!  observe_key ─▶ KeySync::changed ─▶ worker ── EVALSHA key_merge.lua ──▶ {p:prov}:key:<id>
//!  admin reset ─▶ KeySync::reset  ─┘   (state changes and resets at once;       │ PUBLISH
//!                                       signal-only updates within 100 ms)      ▼
//!  every replica: subscriber ◀──────────────── <prefix>:keys ◀─────────────────┘
//!                 merges the record into its pool (key_record::merge)
//!  every 5 s and after (re)connecting: every key is merged both ways (missed messages,
//!  a Redis restarted empty, a replica started late)
//! ```
//!
//! Writes happen off the request path; a failure leaves the key to the next full sync. The
//! merge is the same on both sides, so replicas converge whatever the order of updates.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::Script;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::key_record::{merge, record_key, KeyRecord};
use crate::keys::Pool;
use crate::quota::shared::keys::{escape, hash_tag};
use crate::quota::shared::{BackendError, RedisBackend};
use crate::runtime::Persistent;

/// Signal-only updates of a key are written at most this often.
const SIGNAL_DELAY: Duration = Duration::from_millis(100);
/// Every key is merged both ways this often.
const FULL_SYNC: Duration = Duration::from_secs(5);
/// A record lives this long after its last write (longer when its state lasts longer).
const TTL_MS: u64 = 7 * 24 * 3600 * 1000;
/// Pause before resubscribing after the subscription failed.
const RESUBSCRIBE: Duration = Duration::from_secs(1);

enum Msg {
    Changed {
        provider: String,
        id: String,
        urgent: bool,
    },
    Reset {
        provider: String,
        id: String,
    },
    FullSync,
}

/// The sharing of key states through Redis; see the module docs.
pub struct KeySync {
    backend: Arc<RedisBackend>,
    script: Script,
    channel: String,
    tx: mpsc::UnboundedSender<Msg>,
}

impl std::fmt::Debug for KeySync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySync")
            .field("channel", &self.channel)
            .finish()
    }
}

impl KeySync {
    /// Starts the worker and the subscriber (inside a tokio runtime). They stop when the
    /// returned handle and `persistent` are gone.
    pub fn start(backend: Arc<RedisBackend>, persistent: Weak<Persistent>) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let sync = Arc::new(KeySync {
            channel: format!("{}:keys", escape(backend.prefix())),
            backend,
            script: Script::new(include_str!("key_merge.lua")),
            tx,
        });
        tokio::spawn(worker(Arc::downgrade(&sync), persistent.clone(), rx));
        tokio::spawn(subscriber(Arc::downgrade(&sync), persistent));
        sync
    }

    /// Key `id` of `provider` changed locally: its state (`urgent`) or only its signals.
    pub fn changed(&self, provider: &str, id: &str, urgent: bool) {
        let _ = self.tx.send(Msg::Changed {
            provider: provider.to_string(),
            id: id.to_string(),
            urgent,
        });
    }

    /// Key `id` of `provider` was reset by the operator: every replica clears it.
    pub fn reset(&self, provider: &str, id: &str) {
        let _ = self.tx.send(Msg::Reset {
            provider: provider.to_string(),
            id: id.to_string(),
        });
    }

    /// One key merged both ways: the local view into Redis, the result into the pool.
    async fn sync_key(&self, provider: &str, pool: &Mutex<Pool>, id: &str, reset: bool) {
        let record = {
            let pool = pool.lock().unwrap_or_else(|e| e.into_inner());
            match pool.index(id) {
                Some(i) => KeyRecord::of(&pool.keys[i]),
                None => return,
            }
        };
        match self.write(provider, id, &record, reset).await {
            Ok(Ok(Some(merged))) => apply(pool, id, &merged),
            Ok(Ok(None)) => {}
            Ok(Err(e)) => tracing::warn!(provider, key = id, "shared key record unreadable: {e}"),
            Err(e) => tracing::debug!(provider, key = id, "key state not shared yet: {e}"),
        }
    }

    /// Merges `record` into the shared record of key `id` (or resets it); the result.
    pub(crate) async fn write(
        &self,
        provider: &str,
        id: &str,
        record: &KeyRecord,
        reset: bool,
    ) -> Result<Result<Option<KeyRecord>, String>, BackendError> {
        let mut inv = self.script.prepare_invoke();
        let ttl = record
            .state
            .until()
            .filter(|&u| u != u64::MAX)
            .map_or(TTL_MS, |u| {
                let left = u.saturating_sub(self.backend.redis_now(self.backend.clock.now()));
                TTL_MS.max(left / 1000 + 3_600_000)
            });
        inv.key(record_key(&hash_tag(self.backend.prefix(), provider), id))
            .arg(if reset {
                "reset".to_string()
            } else {
                record.gen.to_string()
            })
            .arg(&record.state_args())
            .arg(ttl)
            .arg(&self.channel)
            .arg(record.learned_args());
        let pairs: Vec<String> = self
            .backend
            .call(|mut c| async move { inv.invoke_async(&mut c).await })
            .await?;
        Ok(KeyRecord::decode(&pairs))
    }

    /// Every key of every provider, merged both ways (pipelined on the one connection).
    async fn full_sync(&self, persistent: &Persistent) {
        let pools = pools_of(persistent);
        let mut calls = Vec::new();
        for (provider, pool) in &pools {
            let ids: Vec<String> = lock(pool).keys.iter().map(|k| k.id.clone()).collect();
            for id in ids {
                calls.push(async move { self.sync_key(provider, pool, &id, false).await });
            }
        }
        futures_util::future::join_all(calls).await;
    }

    /// A published record: `<record key>\n<field>\n<value>...`.
    fn receive(&self, persistent: &Persistent, payload: &str) {
        let mut lines = payload.split('\n');
        let Some(key) = lines.next() else { return };
        let pairs: Vec<String> = lines.map(str::to_string).collect();
        for (provider, pool) in pools_of(persistent) {
            let tag = hash_tag(self.backend.prefix(), &provider);
            if !key.starts_with(&tag) {
                continue;
            }
            let id = lock(&pool)
                .keys
                .iter()
                .find(|k| record_key(&tag, &k.id) == key)
                .map(|k| k.id.clone());
            let Some(id) = id else { continue };
            match KeyRecord::decode(&pairs) {
                Ok(Some(record)) => apply(&pool, &id, &record),
                Ok(None) => {}
                Err(e) => tracing::warn!(provider, key = id, "shared key record unreadable: {e}"),
            }
            return;
        }
    }
}

fn lock(pool: &Mutex<Pool>) -> std::sync::MutexGuard<'_, Pool> {
    pool.lock().unwrap_or_else(|e| e.into_inner())
}

fn pools_of(persistent: &Persistent) -> Vec<(String, Arc<Mutex<Pool>>)> {
    let pools = persistent.pools.lock().unwrap_or_else(|e| e.into_inner());
    pools.iter().map(|(n, p)| (n.clone(), p.clone())).collect()
}

fn apply(pool: &Mutex<Pool>, id: &str, record: &KeyRecord) {
    let mut pool = lock(pool);
    let Some(i) = pool.index(id) else { return };
    let before = pool.keys[i].state.name();
    if merge(&mut pool.keys[i], record) {
        let after = pool.keys[i].state.name();
        if before != after {
            tracing::info!(
                key = id,
                from = before,
                to = after,
                "key state changed by another replica"
            );
        }
    }
}

/// Writes changed keys (state changes and resets at once, signals within
/// [`SIGNAL_DELAY`]) and runs the periodic full sync.
async fn worker(
    sync: Weak<KeySync>,
    persistent: Weak<Persistent>,
    mut rx: mpsc::UnboundedReceiver<Msg>,
) {
    let mut dirty: BTreeMap<(String, String), bool> = BTreeMap::new();
    let mut flush_at: Option<Instant> = None;
    let mut full = tokio::time::interval(FULL_SYNC);
    loop {
        let mut full_now = false;
        tokio::select! {
            m = rx.recv() => match m {
                None => return,
                Some(Msg::Changed { provider, id, urgent }) => {
                    dirty.entry((provider, id)).or_insert(false);
                    let at = Instant::now() + if urgent { Duration::ZERO } else { SIGNAL_DELAY };
                    flush_at = Some(flush_at.map_or(at, |f| f.min(at)));
                }
                Some(Msg::Reset { provider, id }) => {
                    dirty.insert((provider, id), true);
                    flush_at = Some(Instant::now());
                }
                Some(Msg::FullSync) => full_now = true,
            },
            _ = tokio::time::sleep_until(flush_at.unwrap_or_else(Instant::now)), if flush_at.is_some() => {}
            _ = full.tick() => full_now = true,
        }
        let (Some(sync), Some(persistent)) = (sync.upgrade(), persistent.upgrade()) else {
            return;
        };
        if full_now {
            sync.full_sync(&persistent).await;
        }
        if flush_at.is_some_and(|f| f <= Instant::now()) {
            flush_at = None;
            let pools: BTreeMap<String, Arc<Mutex<Pool>>> =
                pools_of(&persistent).into_iter().collect();
            let batch = std::mem::take(&mut dirty);
            let calls = batch.iter().filter_map(|((provider, id), reset)| {
                let pool = pools.get(provider)?;
                Some(sync.sync_key(provider, pool, id, *reset))
            });
            futures_util::future::join_all(calls).await;
        }
    }
}

/// Receives the records other replicas publish; resubscribes after a failure and then asks
/// for a full sync (messages sent meanwhile were missed).
async fn subscriber(sync: Weak<KeySync>, persistent: Weak<Persistent>) {
    loop {
        let Some(s) = sync.upgrade() else { return };
        let subscribed = async {
            let mut pubsub = s.backend.pubsub().await?;
            pubsub.subscribe(&s.channel).await?;
            Ok::<_, BackendError>(pubsub)
        };
        let pubsub = match tokio::time::timeout(s.backend.options.connect_timeout, subscribed).await
        {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                tracing::debug!("key state subscription failed: {e}");
                drop(s);
                tokio::time::sleep(RESUBSCRIBE).await;
                continue;
            }
            Err(_) => {
                drop(s);
                tokio::time::sleep(RESUBSCRIBE).await;
                continue;
            }
        };
        let _ = s.tx.send(Msg::FullSync);
        drop(s);
        let mut messages = pubsub.into_on_message();
        while let Some(msg) = messages.next().await {
            let (Some(s), Some(p)) = (sync.upgrade(), persistent.upgrade()) else {
                return;
            };
            match msg.get_payload::<String>() {
                Ok(payload) => s.receive(&p, &payload),
                Err(e) => tracing::warn!("unreadable key state message: {e}"),
            }
        }
        tracing::debug!("key state subscription ended; resubscribing");
        tokio::time::sleep(RESUBSCRIBE).await;
    }
}

#[cfg(test)]
#[path = "key_sync_tests.rs"]
mod tests;
