//! Admissions through Redis coalesced into script calls: while calls are in flight, the
//! admissions that arrive wait and then go together, one script call per hash tag, where
//! the script reads each counter once and writes it once for all of them. At a low rate
//! every admission is its own call, as before; under load the script's fixed cost and its
//! counter reads and writes are shared by the batch, and that cost on the Redis server was
//! what bounded the throughput of the replicas sharing it.

use std::sync::{Arc, Weak};

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{mpsc, oneshot};

use crate::quota::reservation::Settled;
use crate::quota::shared::backend::RedisBackend;
use crate::quota::shared::options::BackendError;
use crate::quota::shared::plan::{settle_ops, Item, Reply, Ticket};

/// Admissions in one script call at most (the rest go in the next).
pub(super) const MAX_BATCH: usize = 64;

/// What the caller gets back: its items, and Redis's answer for them.
pub(super) type Answer = (Vec<Item>, Result<Reply, BackendError>);

/// One admission waiting for its script call.
pub(super) struct Waiting {
    pub items: Vec<Item>,
    pub reply: oneshot::Sender<Answer>,
}

/// Group key of a counter key: its hash tag (one script call may only touch one slot).
pub(super) fn tag_of(key: &str) -> &str {
    key.find('}').map_or(key, |i| &key[..=i])
}

fn tag(w: &Waiting) -> &str {
    w.items.first().map_or("", |it| tag_of(&it.key))
}

/// Script calls in flight at most: while they are, arriving admissions wait for the next.
/// Two keep the connection busy across a reply's way back while still gathering batches.
pub(super) const MAX_FLIGHTS: usize = 2;

/// Sends waiting admissions, at most [`MAX_FLIGHTS`] script calls at a time, until the
/// backend is dropped.
pub(super) async fn run(backend: Weak<RedisBackend>, mut rx: mpsc::UnboundedReceiver<Waiting>) {
    let mut flights = FuturesUnordered::new();
    loop {
        tokio::select! {
            w = rx.recv(), if flights.len() < MAX_FLIGHTS => {
                let Some(first) = w else { break };
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(w) => batch.push(w),
                        Err(_) => break,
                    }
                }
                let Some(b) = backend.upgrade() else { return };
                flights.push(fly(b, batch));
            }
            Some(()) = flights.next(), if !flights.is_empty() => {}
        }
    }
    while flights.next().await.is_some() {}
}

/// One batch: a script call per hash tag, each admission answered.
async fn fly(b: Arc<RedisBackend>, mut batch: Vec<Waiting>) {
    // Stable: admissions of one tag keep their order of arrival.
    batch.sort_by(|x, y| tag(x).cmp(tag(y)));
    while !batch.is_empty() {
        let same = batch
            .iter()
            .take_while(|w| tag(w) == tag(&batch[0]))
            .count();
        let group: Vec<Waiting> = batch.drain(..same).collect();
        let result = {
            let parts: Vec<&[Item]> = group.iter().map(|w| w.items.as_slice()).collect();
            b.admit_batch(&parts).await
        };
        match result {
            Ok(replies) => {
                for (w, r) in group.into_iter().zip(replies) {
                    // A caller that went away (its request cancelled while it waited) gets
                    // what was admitted for it refunded and its leases released.
                    if let Err((items, Ok(Reply::Admitted { now, used }))) =
                        w.reply.send((w.items, Ok(r)))
                    {
                        let ticket = Ticket {
                            items,
                            at: now,
                            used,
                            fallback: false,
                        };
                        b.adjust_later(settle_ops(&ticket, Settled::Nothing, true));
                    }
                }
            }
            Err(e) => {
                // One failure is counted per admission Redis did not decide (`call` counted
                // the first), as when each was its own call.
                metrics::counter!("quota_proxy_state_backend_errors_total")
                    .increment(group.len().saturating_sub(1) as u64);
                let text = e.to_string();
                let mut first = Some(e);
                for w in group {
                    let e = first
                        .take()
                        .unwrap_or_else(|| BackendError::Batch(text.clone()));
                    let _ = w.reply.send((w.items, Err(e)));
                }
            }
        }
    }
}
