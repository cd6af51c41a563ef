//! Capture from and restore into a real [`Persistent`] built from a config, through the
//! local store: counters, key states, learned limits and statistics come back; secrets
//! never reach the file.

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::keys::{KeyEvent, KeyState, Learned, LearnedUnit};
use crate::quota::{Costs, Demand, ManualClock, SECOND};
use crate::state::{LocalStore, Store};
use crate::stats::Bucket;

const T0: Micros = 1_780_000_000 * SECOND;
const SECRET_A: &str = "sk-live-secret-a-51f0";
const SECRET_B: &str = "sk-live-secret-b-77c2";

fn config(dir: &Path, extra: &str) -> crate::config::Config {
    for (name, secret) in [("a", SECRET_A), ("b", SECRET_B)] {
        std::fs::write(dir.join(name), secret).unwrap();
    }
    let text = format!(
        r#"
        [providers.p]
        hosts = ["api.p.test"]
        [providers.p.keys]
        pool = [{{ id = "k1", file = "{0}/a" }}, {{ id = "k2", file = "{0}/b" }}]
        [[providers.p.limits]]
        name = "rpm"
        amount = 10
        window = "1m"
        [[providers.p.limits]]
        name = "per-key-day"
        amount = 100
        window = "day"
        scope = "key"
        {extra}
        "#,
        dir.display()
    );
    crate::config::parse(Path::new("t.toml"), &text).unwrap()
}

fn persistent(config: &crate::config::Config, now: Micros) -> Persistent {
    let p = Persistent::new(Arc::new(ManualClock::new(now)));
    crate::runtime::providers(config, &p);
    p
}

fn used(p: &Persistent, limit: &str, scope_id: &str, now: Micros) -> f64 {
    p.engine
        .snapshot("p", now)
        .unwrap()
        .iter()
        .find(|s| s.name == limit && s.scope_id == scope_id)
        .map_or(0.0, |s| s.used)
}

fn pool(p: &Persistent) -> Arc<Mutex<Pool>> {
    Arc::clone(&lock(&p.pools)["p"])
}

#[test]
fn capture_save_load_restore() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), "");
    let old = persistent(&config, T0);
    for _ in 0..3 {
        let d = Demand::new("c", Costs::default()).with_key("k1");
        let mut permit = old.engine.try_admit("p", &d).unwrap();
        permit.mark_sent();
    }
    {
        let pool = pool(&old);
        let mut pool = lock(&pool);
        let learned = Learned {
            limit: Some(500.0),
            remaining: 20.0,
            reset_at: Some(T0 + 60 * SECOND),
            seen_at: T0,
        };
        pool.observe(0, KeyEvent::Ok, &[(LearnedUnit::Tokens, learned)], T0);
        pool.observe(1, KeyEvent::Unauthorized, &[], T0);
    }
    let one = Bucket {
        requests: 1,
        ..Bucket::default()
    };
    lock(&old.stats)["p"].record(T0, one);

    let store = LocalStore::open(dir.path().join("state")).unwrap();
    store.save(&capture(&old, T0 + SECOND)).unwrap();
    let bytes = std::fs::read(store.path()).unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        !text.contains(SECRET_A) && !text.contains(SECRET_B),
        "{text}"
    );

    let now = T0 + 30 * SECOND;
    let new = persistent(&config, now);
    let report = restore(&new, store.load().unwrap().unwrap(), now);
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.engine.restored, 2);
    assert_eq!(report.saved_at, T0 + SECOND);
    assert_eq!(
        report.to_string(),
        "restored 2 counters (0 already over), 2 keys, statistics of 1 providers"
    );
    assert_eq!(used(&new, "rpm", "", now), 3.0);
    assert_eq!(used(&new, "per-key-day", "k1", now), 3.0);
    let pool = pool(&new);
    let pool = lock(&pool);
    assert_eq!(
        pool.keys[0].sent, 0,
        "calls were not counted by the pool here"
    );
    assert_eq!(
        pool.keys[0].learned[LearnedUnit::Tokens as usize].map(|l| l.remaining),
        Some(20.0)
    );
    assert!(matches!(pool.keys[1].state, KeyState::Invalid { .. }));
    assert_eq!(lock(&new.stats)["p"].totals(), one);
}

#[test]
fn a_changed_config_restores_what_still_exists() {
    let dir = tempfile::tempdir().unwrap();
    let old = persistent(&config(dir.path(), ""), T0);
    let d = Demand::new("c", Costs::default()).with_key("k2");
    old.engine.try_admit("p", &d).unwrap().mark_sent();
    let mut snap = capture(&old, T0);
    snap.pools.insert("gone".into(), PoolExport::default());
    snap.stats.insert("gone".into(), StatsData::default());

    // rpm now counts per client: another identity, so it starts empty.
    let changed = config(dir.path(), "").providers[0].clone();
    let mut changed = (*changed).clone();
    changed.limits[0].scope = crate::config::Scope::Client;
    let mut cfg = config(dir.path(), "");
    cfg.providers = vec![Arc::new(changed)];
    let new = persistent(&cfg, T0);
    let report = restore(&new, snap, T0 + SECOND);
    assert_eq!(report.engine.unknown_limits, ["p/rpm"]);
    assert_eq!(report.unknown_providers, ["gone"]);
    assert_eq!(used(&new, "per-key-day", "k2", T0 + SECOND), 1.0);
    assert_eq!(used(&new, "rpm", "c", T0 + SECOND), 0.0);
    assert!(report.to_string().contains("dropped 1 limits"), "{report}");
}
