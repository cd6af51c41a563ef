//! Key states and learned upstream signals shared through Redis (SPEC §6, §11): what one
//! replica learns about a key (an upstream 429, remaining 0, an invalid key) every replica
//! with the same `redis_prefix` acts on, and an operator's reset on one clears it on all.
//! Each test starts its own `redis-server` on a free port.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(15);

/// (id, env var, secret).
const KEYS: [(&str, &str, &str); 2] = [
    ("k1", "QPT_RK_K1", "sk-shared-k1-3f9a"),
    ("k2", "QPT_RK_K2", "sk-shared-k2-b71c"),
];

fn key_env() -> Vec<(&'static str, &'static str)> {
    KEYS.iter().map(|(_, env, v)| (*env, *v)).collect()
}

fn key_id_of(r: &Recorded) -> Option<&'static str> {
    let v = r.header("authorization")?.strip_prefix("Bearer ")?;
    KEYS.iter().find(|(_, _, s)| *s == v).map(|(id, _, _)| *id)
}

fn count_key(up: &MockUpstream, id: &str) -> usize {
    up.requests()
        .iter()
        .filter(|r| key_id_of(r) == Some(id))
        .count()
}

/// A provider with keys k1, k2 tried in that order (`fill_first`), sharing state in `redis`.
fn config(up: &MockUpstream, redis: &RedisServer) -> String {
    let pool = KEYS
        .iter()
        .map(|(id, env, _)| format!("{{ id = \"{id}\", env = \"{env}\" }}"))
        .collect::<Vec<_>>()
        .join(", ");
    let cfg = mock_provider(up, &[("signals", "[\"openai\"]")])
        .raw(&format!(
            "[providers.mock.keys]\ninject = {{ header = \"authorization\", format = \"Bearer {{key}}\" }}\nstrategy = \"fill_first\"\npool = [{pool}]\n"
        ))
        .build();
    patient(&with_redis(&cfg, redis, "local"))
}

/// The `/status` entry of key `id` of provider `mock`.
async fn key_status(admin: std::net::SocketAddr, id: &str) -> serde_json::Value {
    let (code, body) = admin_get(admin, "/status/mock").await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let keys = v["providers"]["mock"]["keys"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    keys.into_iter()
        .find(|k| k["id"] == id)
        .unwrap_or_else(|| panic!("no key {id} in {body}"))
}

async fn state_of(proxy: &Proxy, id: &str) -> String {
    key_status(proxy.admin_addr, id).await["state"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

async fn call(proxy: &Proxy, up: &MockUpstream) -> Resp {
    forward(
        proxy.proxy_addr,
        "GET",
        &mock_url(up, "/v1/models"),
        &[],
        "",
    )
    .await
}

#[tokio::test]
async fn a_key_cooling_on_one_replica_is_avoided_by_the_others_until_reset() {
    let redis = RedisServer::start().await;
    let h = handler(|r: Recorded| async move {
        if key_id_of(&r) == Some("k1") {
            response(
                429,
                &[("retry-after", "120")],
                "{\"error\":{\"code\":\"rate_limit_exceeded\"}}",
            )
        } else {
            response(200, &[], "{}")
        }
    });
    let up = MockUpstream::plain(h).await;
    let cfg = config(&up, &redis);
    let a = Proxy::start_with_env(&cfg, &key_env());
    let b = Proxy::start_with_env(&cfg, &key_env());

    // On A, k1 answers 429 (Retry-After 120 s): k1 cools, the call is retried on k2.
    let r = call(&a, &up).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-quota-proxy-key"), Some("k2"));
    assert_eq!(count_key(&up, "k1"), 1);

    // B learns it without ever sending k1 itself.
    eventually("replica B sees k1 cooling", WAIT, || async {
        (state_of(&b, "k1").await == "cooling").then_some(())
    })
    .await;
    let until_a = key_status(a.admin_addr, "k1").await["until"].clone();
    assert_eq!(key_status(b.admin_addr, "k1").await["until"], until_a);
    for _ in 0..3 {
        let r = call(&b, &up).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-quota-proxy-key"), Some("k2"));
    }
    assert_eq!(
        count_key(&up, "k1"),
        1,
        "no replica sent the cooling key again"
    );

    // A reset on B clears the key on A too.
    let (code, body) = admin_post(b.admin_addr, "/providers/mock/keys/k1/reset", "").await;
    assert_eq!(code, 200, "{body}");
    eventually("replica A sees k1 active after B's reset", WAIT, || async {
        (state_of(&a, "k1").await == "active").then_some(())
    })
    .await;
    // And the reset sticks: the older cooling record does not come back with a full sync.
    let r = call(&a, &up).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(count_key(&up, "k1"), 2, "A tried k1 again after the reset");
}

#[tokio::test]
async fn learned_signals_and_invalid_keys_reach_every_replica() {
    let redis = RedisServer::start().await;
    let h = handler(|r: Recorded| async move {
        match key_id_of(&r) {
            Some("k1") => response(
                200,
                &[
                    ("x-ratelimit-limit-requests", "50"),
                    ("x-ratelimit-remaining-requests", "0"),
                    ("x-ratelimit-reset-requests", "90s"),
                ],
                "{}",
            ),
            _ => response(401, &[], "{\"error\":{\"code\":\"invalid_api_key\"}}"),
        }
    });
    let up = MockUpstream::plain(h).await;
    let cfg = config(&up, &redis);
    let a = Proxy::start_with_env(&cfg, &key_env());
    let b = Proxy::start_with_env(&cfg, &key_env());

    // A: k1 says 0 requests remaining for 90 s.
    assert_eq!(call(&a, &up).await.status, 200);
    let signal = eventually("replica B has k1's requests signal", WAIT, || async {
        let k = key_status(b.admin_addr, "k1").await;
        let s = k["signals"]["requests"].clone();
        (!s.is_null()).then_some(s)
    })
    .await;
    assert_eq!(signal["remaining"], 0.0, "{signal}");
    assert_eq!(signal["limit"], 50.0, "{signal}");

    // B therefore skips k1 and uses k2, which the upstream refuses: k2 becomes invalid on B,
    // and A learns that too.
    let r = call(&b, &up).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(count_key(&up, "k1"), 1, "B did not send k1 (remaining 0)");
    eventually("replica A sees k2 invalid", WAIT, || async {
        (state_of(&a, "k2").await == "invalid").then_some(())
    })
    .await;

    // Both keys unusable everywhere: neither replica sends anything more.
    let sent = up.requests().len();
    for p in [&a, &b] {
        let r = call(p, &up).await;
        assert_eq!(r.status, 429, "{}", r.text());
    }
    assert_eq!(up.requests().len(), sent);

    // The shared records carry the provider's hash tag and a TTL, and no secret.
    let mut conn = redis.conn().await;
    for id in ["k1", "k2"] {
        let key = format!("{{qp:mock}}:key:{id}");
        let ttl: i64 = redis::cmd("PTTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(ttl > 0, "{key} has a TTL ({ttl})");
        let fields: Vec<String> = redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        for (_, _, secret) in KEYS {
            assert!(!fields.iter().any(|f| f.contains(secret)), "{fields:?}");
        }
    }
}

#[tokio::test]
async fn a_replica_started_later_and_a_redis_restarted_empty_converge() {
    let mut redis = RedisServer::start().await;
    let h = handler(|r: Recorded| async move {
        if key_id_of(&r) == Some("k1") {
            response(429, &[("retry-after", "300")], "{}")
        } else {
            response(200, &[], "{}")
        }
    });
    let up = MockUpstream::plain(h).await;
    let cfg = config(&up, &redis);
    let a = Proxy::start_with_env(&cfg, &key_env());
    assert_eq!(call(&a, &up).await.status, 200);
    assert_eq!(state_of(&a, "k1").await, "cooling");

    // Redis loses everything; A writes its view again at its next full sync.
    redis.restart().await;
    let conn = eventually("redis is back", WAIT, || async {
        redis::Client::open(redis.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .ok()
    })
    .await;
    eventually("A re-shares k1's state", WAIT, || {
        let mut conn = conn.clone();
        async move {
            let state: Option<String> = redis::cmd("HGET")
                .arg("{qp:mock}:key:k1")
                .arg("state")
                .query_async(&mut conn)
                .await
                .ok()?;
            (state.as_deref() == Some("cooling")).then_some(())
        }
    })
    .await;

    // A replica started now knows k1 is cooling before it sends anything.
    let c = Proxy::start_with_env(&cfg, &key_env());
    eventually("replica C sees k1 cooling", WAIT, || async {
        (state_of(&c, "k1").await == "cooling").then_some(())
    })
    .await;
    let r = call(&c, &up).await;
    assert_eq!(r.header("x-quota-proxy-key"), Some("k2"));
    assert_eq!(count_key(&up, "k1"), 1);
}
