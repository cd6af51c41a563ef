//! The backend's worker: applies queued corrections (settles, cancels) off the response
//! path, batched per hash tag; connects when the start found Redis down; probes a Redis
//! that is down once per cool-off; and reconciles usage admitted locally meanwhile.

use std::sync::Weak;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::quota::shared::backend::{lock, Batch, RedisBackend, MAX_BATCH};
use crate::quota::shared::coalesce::tag_of;

/// Applies queued corrections (batched per hash tag), reconnects, and reconciles.
pub(super) async fn run(backend: Weak<RedisBackend>, mut rx: mpsc::UnboundedReceiver<Batch>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let first = tokio::select! {
            m = rx.recv() => match m { Some(m) => m, None => return },
            _ = tick.tick() => Vec::new(),
        };
        let Some(b) = backend.upgrade() else { return };
        let mut ops = first;
        while let Ok(more) = rx.try_recv() {
            ops.extend(more);
        }
        // What grants that ended unused still held (those still in use are refunded by
        // the admission that finds them ended).
        ops.extend(b.grants.sweep(b.redis_now(b.clock.now())));
        if b.conn.load().is_none() && b.try_connect(b.options.connect_timeout).await.is_ok() {
            tracing::info!("connected to redis");
            lock(&b.breaker).success();
        }
        ops.sort_by(|x, y| tag_of(&x.0).cmp(tag_of(&y.0)));
        for group in ops.chunk_by(|x, y| tag_of(&x.0) == tag_of(&y.0)) {
            for chunk in group.chunks(MAX_BATCH) {
                let Some(mut c) = b.corrections(chunk.to_vec()) else {
                    continue;
                };
                c.sent = true;
                if b.apply(&c).await.is_err() {
                    // Not lost: applied with the reconcile backlog when Redis is back, and
                    // not twice if this call ran after all (its guard goes with it).
                    b.keep(c);
                }
            }
        }
        // Down: probe once per cool-off even without traffic (so /readyz recovers), then
        // reconcile what was admitted locally meanwhile.
        if b.is_down() {
            b.probe_and_flush().await;
        } else if b.pending() > 0 {
            b.flush_pending().await;
        }
    }
}

impl RedisBackend {
    /// With a backlog and an open breaker: one probe (an empty adjust), then the backlog.
    async fn probe_and_flush(&self) {
        if self.probe().await.is_ok() {
            self.flush_pending().await;
        }
    }
}
