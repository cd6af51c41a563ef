//! [`RedisBackend`]: the connection (one multiplexed [`ConnectionManager`]), the two
//! scripts, the circuit breaker, the Redis-time offset, and a worker that applies
//! settles off the response path and reconciles usage admitted locally while Redis was
//! unreachable.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script, ScriptInvocation};
use tokio::sync::{mpsc, oneshot};

use crate::deadline::TimerSlot;
use crate::quota::clock::{duration_micros, Clock, Micros, SECOND};
use crate::quota::shared::breaker::Breaker;
use crate::quota::shared::coalesce::{tag_of, Answer, Waiting};
use crate::quota::shared::grant::Grants;
pub use crate::quota::shared::options::OnError;
use crate::quota::shared::options::{BackendError, RedisOptions};
use crate::quota::shared::plan::{push_admit_args, Item, Op, Reply};

/// Corrections for one provider (one hash tag, so one cluster slot).
pub(super) type Batch = Vec<Op>;

/// Reconcile ops kept at most while Redis is away (oldest dropped beyond).
const MAX_PENDING: usize = 100_000;

/// How long Redis remembers that a batch of corrections was applied (beyond the breaker's
/// cool-off and the call timeout): a batch whose call failed without an answer is sent
/// again once Redis answers, which is within seconds of Redis having run the first
/// sending, if it did.
const GUARD_KEPT: Duration = Duration::from_secs(60);

/// Corrections that take effect at most once. A call that fails without an answer (a
/// timeout, a dropped connection) may still have run in Redis: a frozen Redis runs what
/// was sent when it resumes. Sent again, the batch would count twice, and a refund or a
/// settle below the estimate counted twice undercounts. The adjust script therefore
/// records `guard` (a key of the batch's hash tag, kept [`GUARD_KEPT`]) when it applies
/// the batch, and skips a batch whose guard it finds.
#[derive(Debug)]
pub(super) struct Corrections {
    pub(super) guard: String,
    pub(super) ops: Vec<Op>,
    /// Sent to Redis at least once: Redis may hold its guard, so it is never merged.
    pub(super) sent: bool,
}

/// Ops one batch of corrections holds at most (one script call).
pub(super) const MAX_BATCH: usize = 256;

/// Adds `src` to `dst`: an op on the same counter, sub-bucket or period as one in `dst` adds
/// its delta to it, so a backlog holds one op per counter and sub-bucket, not one per call.
fn merge(dst: &mut Vec<Op>, src: Vec<Op>) {
    for op in src {
        let same = dst
            .iter_mut()
            .find(|d| d.0 == op.0 && d.1[0] == op.1[0] && d.1[2..] == op.1[2..]);
        match same {
            // Releasing the same lease twice is releasing it once.
            Some(_) if op.1[0] == "k" => {}
            Some(d) => match (d.1[1].parse::<f64>(), op.1[1].parse::<f64>()) {
                (Ok(a), Ok(b)) if (a + b).is_finite() => d.1[1] = (a + b).to_string(),
                _ => dst.push(op),
            },
            None => dst.push(op),
        }
    }
}

/// The shared-state backend.
pub struct RedisBackend {
    pub(crate) options: RedisOptions,
    client: Client,
    pub(super) conn: ArcSwapOption<ConnectionManager>,
    pub(super) admit: Script,
    adjust: Script,
    pub(super) peek: Script,
    pub(super) breaker: Mutex<Breaker>,
    /// Redis time minus local clock time (µs), from the last reply.
    offset: AtomicI64,
    seq: AtomicU64,
    instance: String,
    pub(super) pending: Mutex<VecDeque<Corrections>>,
    /// Backlog batches dropped because the backlog was full.
    dropped: AtomicU64,
    tx: mpsc::UnboundedSender<Batch>,
    /// Admissions for the coalescing task ([`super::coalesce`]).
    admissions: mpsc::UnboundedSender<Waiting>,
    pub(crate) clock: Arc<dyn Clock>,
    /// The calls' timeouts, on timers reused from call to call (see [`crate::deadline`]):
    /// enough spares for the coalescer's flights and the worker's call beside them.
    timers: TimerSlot,
    /// Budget taken ahead for the next admissions of the same counters.
    pub(super) grants: Grants,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("prefix", &self.options.prefix)
            .field("down", &self.is_down())
            .finish()
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn instance_id() -> String {
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl RedisBackend {
    fn build(
        options: RedisOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<(Arc<Self>, mpsc::UnboundedReceiver<Batch>), BackendError> {
        // Nagle off: an admission is one small write that waits for its answer, and several
        // are in flight on the one connection (redis-rs leaves Nagle on by default).
        let info = redis::IntoConnectionInfo::into_connection_info(options.url.as_str())?
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = Client::open(info)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (admissions, waiting) = mpsc::unbounded_channel();
        let cool_off = duration_micros(options.cool_off);
        let backend = Arc::new(Self {
            breaker: Mutex::new(Breaker::new(options.breaker_threshold, cool_off)),
            options,
            client,
            conn: ArcSwapOption::empty(),
            admit: Script::new(include_str!("admit.lua")),
            adjust: Script::new(include_str!("adjust.lua")),
            peek: Script::new(include_str!("peek.lua")),
            offset: AtomicI64::new(0),
            seq: AtomicU64::new(0),
            instance: instance_id(),
            pending: Mutex::new(VecDeque::new()),
            dropped: AtomicU64::new(0),
            tx,
            admissions,
            clock,
            timers: TimerSlot::keeping(super::coalesce::MAX_FLIGHTS + 1),
            grants: Grants::default(),
        });
        tokio::spawn(super::coalesce::run(Arc::downgrade(&backend), waiting));
        Ok((backend, rx))
    }

    /// Connects (bounded by `connect_timeout`; when Redis is down the backend starts
    /// disconnected, in fallback mode, and keeps trying every second in the background)
    /// and starts the worker. Must run inside a tokio runtime. Fails only on an invalid
    /// URL.
    pub async fn connect(
        options: RedisOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Self>, BackendError> {
        let (backend, rx) = Self::build(options, clock)?;
        match backend.try_connect(backend.options.connect_timeout).await {
            Ok(()) => {
                tracing::info!(prefix = %backend.options.prefix, "shared quota state in redis")
            }
            Err(e) => backend.started_down(&e),
        }
        tokio::spawn(super::worker::run(Arc::downgrade(&backend), rx));
        Ok(backend)
    }

    fn started_down(&self, e: &BackendError) {
        tracing::error!(
            "redis unreachable at start ({e}); deciding with on_backend_error = {:?} until it is back",
            self.options.on_error
        );
        metrics::counter!("quota_proxy_state_backend_errors_total").increment(1);
        let mut breaker = lock(&self.breaker);
        for _ in 0..self.options.breaker_threshold {
            breaker.failure(self.clock.now());
        }
    }

    pub(super) async fn try_connect(&self, bound: Duration) -> Result<(), BackendError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(bound))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(200));
        let manager = tokio::time::timeout(
            bound,
            self.client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(|_| BackendError::Timeout(bound))??;
        // Loaded now, the first admissions need no NOSCRIPT round trips.
        let mut conn = manager.clone();
        let load = async {
            self.admit.load_async(&mut conn).await?;
            self.peek.load_async(&mut conn).await?;
            self.adjust.load_async(&mut conn).await
        };
        tokio::time::timeout(bound, load)
            .await
            .map_err(|_| BackendError::Timeout(bound))??;
        self.conn.store(Some(Arc::new(manager)));
        Ok(())
    }

    /// A new publish/subscribe connection (key states shared between replicas).
    pub(crate) async fn pubsub(&self) -> Result<redis::aio::PubSub, BackendError> {
        Ok(self.client.get_async_pubsub().await?)
    }

    /// Whether Redis is considered unreachable now (breaker open or never connected).
    pub fn is_down(&self) -> bool {
        self.conn.load().is_none() || lock(&self.breaker).is_open()
    }

    /// The configured policy for calls Redis cannot decide.
    pub fn on_error(&self) -> OnError {
        self.options.on_error
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.options.prefix
    }

    /// A unique concurrency lease member for one call.
    pub(crate) fn member(&self) -> String {
        format!(
            "{}-{}",
            self.instance,
            self.seq.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// The best estimate of the Redis time now.
    pub(crate) fn redis_now(&self, local: Micros) -> Micros {
        local.saturating_add_signed(self.offset.load(Ordering::Relaxed))
    }

    /// A Redis time as a local clock time.
    pub(crate) fn to_local(&self, redis: Micros) -> Micros {
        redis.saturating_add_signed(-self.offset.load(Ordering::Relaxed))
    }

    fn note_time(&self, redis: Micros, local: Micros) {
        let offset = i64::try_from(redis).unwrap_or(i64::MAX) - i64::try_from(local).unwrap_or(0);
        self.offset.store(offset, Ordering::Relaxed);
    }

    /// Runs `f` on the connection under the breaker and the timeout, recording the result.
    pub(crate) async fn call<T, F, Fut>(&self, f: F) -> Result<T, BackendError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let now = self.clock.now();
        if !lock(&self.breaker).allow(now) {
            return Err(BackendError::Open);
        }
        let conn = self.conn.load_full();
        let result = match conn {
            None => Err(BackendError::NotConnected),
            Some(c) => match self
                .timers
                .timeout(self.options.timeout, f((*c).clone()))
                .await
            {
                Some(r) => r.map_err(BackendError::from),
                None => Err(BackendError::Timeout(self.options.timeout)),
            },
        };
        match &result {
            Ok(_) => {
                if lock(&self.breaker).success() {
                    tracing::info!("redis is reachable again");
                    let _ = self.tx.send(Vec::new()); // wakes the worker to reconcile
                }
            }
            Err(e) => {
                tracing::debug!("redis call failed: {e}");
                metrics::counter!("quota_proxy_state_backend_errors_total").increment(1);
                let mut breaker = lock(&self.breaker);
                let was_open = breaker.is_open();
                breaker.failure(self.clock.now());
                if !was_open && breaker.is_open() {
                    tracing::warn!(
                        "redis failing ({e}); skipping it for {:?}",
                        self.options.cool_off
                    );
                }
            }
        }
        result
    }

    /// The admission of `items` in the next script call (one round trip; coalesced with
    /// the admissions waiting beside it): gives the items back with Redis's answer.
    pub(crate) async fn admit_coalesced(&self, items: Vec<Item>) -> Answer {
        let (reply, answer) = oneshot::channel();
        if let Err(e) = self.admissions.send(Waiting { items, reply }) {
            return (e.0.items, Err(BackendError::NotConnected));
        }
        answer
            .await
            .unwrap_or_else(|_| (Vec::new(), Err(BackendError::NotConnected)))
    }

    /// One admission script call for `items` alone (one round trip).
    #[cfg(test)]
    pub(crate) async fn admit(&self, items: &[Item]) -> Result<Reply, BackendError> {
        let mut replies = self.admit_batch(&[items]).await?;
        replies.pop().ok_or(BackendError::Reply(String::new()))
    }

    /// One admission script call for a batch of admissions (of one hash tag), decided in
    /// order; a reply per admission.
    pub(crate) async fn admit_batch(&self, batch: &[&[Item]]) -> Result<Vec<Reply>, BackendError> {
        let local = self.clock.now();
        // EVALSHA built directly: redis's `ScriptInvocation` keeps a buffer per argument and
        // copies them all into the command again, a tenth of an admission's client cost.
        let mut cmd = redis::cmd("EVALSHA");
        let keys = batch.iter().map(|a| a.len()).sum::<usize>();
        cmd.arg(self.admit.get_hash()).arg(keys);
        for it in batch.iter().flat_map(|a| a.iter()) {
            cmd.arg(&it.key);
        }
        push_admit_args(&mut cmd, batch);
        let script = &self.admit;
        let raw: redis::Value = self
            .call(|mut c| async move {
                match cmd.query_async(&mut c).await {
                    // Redis lost its script cache (a restart, SCRIPT FLUSH): load it, once.
                    Err(e) if e.code() == Some("NOSCRIPT") => {
                        script.load_async(&mut c).await?;
                        cmd.query_async(&mut c).await
                    }
                    other => other,
                }
            })
            .await?;
        let malformed = || BackendError::Reply(format!("{raw:?}"));
        let redis::Value::BulkString(bytes) = &raw else {
            return Err(malformed());
        };
        let mut replies = Vec::with_capacity(batch.len());
        for line in bytes.split(|&b| b == b'\n') {
            replies.push(Reply::decode(line).ok_or_else(malformed)?);
        }
        if replies.len() != batch.len() {
            return Err(malformed());
        }
        if let Some(reply) = replies.last() {
            let now = match *reply {
                Reply::Admitted { now, .. }
                | Reply::Wait { now, .. }
                | Reply::TooLarge { now, .. }
                | Reply::Stale { now } => now,
            };
            self.note_time(now, local);
        }
        Ok(replies)
    }

    /// Queues corrections (settle, cancel) for the worker: off the response path.
    pub(crate) fn adjust_later(&self, ops: Vec<Op>) {
        if !ops.is_empty() {
            let _ = self.tx.send(ops);
        }
    }

    /// Keeps corrections of locally admitted usage until Redis is back.
    pub(crate) fn reconcile_later(&self, ops: Vec<Op>) {
        if let Some(c) = self.corrections(ops) {
            self.keep(c);
        }
    }

    /// `ops` with a guard of their own, to be applied once ([`Corrections`]); `None` when
    /// there are none.
    pub(super) fn corrections(&self, ops: Vec<Op>) -> Option<Corrections> {
        let tag = tag_of(&ops.first()?.0);
        let guard = format!("{tag}:a:{}", self.member());
        Some(Corrections {
            guard,
            ops,
            sent: false,
        })
    }

    /// Keeps corrections whose call failed (or that were never sent) until Redis is back.
    /// Corrections never sent join the newest kept batch of the same hash tag when it was
    /// never sent either (their deltas added per counter and sub-bucket), so an outage keeps
    /// a few batches per provider, not one per call.
    pub(super) fn keep(&self, c: Corrections) {
        let mut pending = lock(&self.pending);
        if !c.sent {
            if let Some(last) = pending.back_mut().filter(|l| {
                !l.sent
                    && l.ops.len() + c.ops.len() <= MAX_BATCH
                    && l.ops.first().map(|o| tag_of(&o.0)) == c.ops.first().map(|o| tag_of(&o.0))
            }) {
                merge(&mut last.ops, c.ops);
                return;
            }
        }
        if pending.len() >= MAX_PENDING {
            pending.pop_front();
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(
                    dropped,
                    "redis unreachable: the backlog of usage to add to it is full ({MAX_PENDING} batches); the oldest are dropped, so redis will count less than was admitted"
                );
            }
        }
        pending.push_back(c);
    }

    /// Ops waiting to be reconciled.
    pub fn pending(&self) -> usize {
        lock(&self.pending).len()
    }

    /// Applies corrections in one adjust-script call, unless Redis already applied them
    /// (a call that failed without an answer may have run); returns the Redis time.
    pub(super) async fn apply(&self, c: &Corrections) -> Result<Micros, BackendError> {
        let mut inv = self.adjust.prepare_invoke();
        inv.arg(c.ops.len());
        for (key, fields) in &c.ops {
            inv.key(key);
            for f in fields {
                inv.arg(f);
            }
        }
        let kept = GUARD_KEPT + self.options.cool_off + self.options.timeout;
        inv.key(&c.guard).arg(kept.as_millis().to_string());
        self.adjust_call(inv).await
    }

    /// One adjust-script call that changes nothing: whether Redis answers.
    pub(super) async fn probe(&self) -> Result<Micros, BackendError> {
        let mut inv = self.adjust.prepare_invoke();
        inv.arg(0);
        self.adjust_call(inv).await
    }

    async fn adjust_call(&self, inv: ScriptInvocation<'_>) -> Result<Micros, BackendError> {
        self.call(|mut c| async move { inv.invoke_async::<i64>(&mut c).await })
            .await
            .map(|t| u64::try_from(t).unwrap_or(0))
    }

    /// Sends the reconcile backlog (stops at the first failure, keeping the rest).
    pub(super) async fn flush_pending(&self) {
        loop {
            let Some(mut batch) = lock(&self.pending).pop_front() else {
                return;
            };
            batch.sent = true;
            if self.apply(&batch).await.is_err() {
                // The same guard when sent again: applied once whatever became of this call.
                lock(&self.pending).push_front(batch);
                return;
            }
        }
    }
}

/// How often a call waiting on a full shared concurrency limit asks again (releases by
/// other replicas wake nobody here).
pub(crate) const POLL: Micros = SECOND / 10;
