//! A bounded cache of TLS server configs per intercepted host. Entries expire after a TTL
//! shorter than the leaf validity; concurrent first connections to one host mint once (the
//! mint happens under the lock, and takes tens of microseconds).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::CertificateAuthority;

/// Host → server config with its leaf.
pub struct LeafCache {
    ca: Arc<CertificateAuthority>,
    capacity: usize,
    ttl: Duration,
    entries: Mutex<HashMap<String, (Arc<rustls::ServerConfig>, Instant)>>,
}

impl LeafCache {
    pub fn new(ca: Arc<CertificateAuthority>, capacity: usize, ttl: Duration) -> Self {
        let ttl = ttl.min(Duration::from_secs(
            super::leaf::LEAF_VALIDITY.whole_seconds().unsigned_abs() / 2,
        ));
        LeafCache {
            ca,
            capacity: capacity.max(1),
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The server config for `host`, minting a leaf when none is cached or it expired.
    pub fn get(&self, host: &str) -> Result<Arc<rustls::ServerConfig>, String> {
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((config, created)) = entries.get(host) {
            if now.duration_since(*created) < self.ttl {
                return Ok(config.clone());
            }
        }
        let config = super::leaf::server_config(&self.ca, host)?;
        metrics::counter!("quota_proxy_leaf_certificates_minted_total").increment(1);
        if entries.len() >= self.capacity && !entries.contains_key(host) {
            let oldest = entries
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(h, _)| h.clone());
            if let Some(h) = oldest {
                entries.remove(&h);
            }
        }
        entries.insert(host.to_string(), (config.clone(), now));
        Ok(config)
    }

    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca() -> Arc<CertificateAuthority> {
        let dir = tempfile::tempdir().unwrap();
        let files = super::super::CaFiles {
            cert: dir.path().join("ca.crt"),
            key: dir.path().join("ca.key"),
        };
        super::super::ca::create(&files, false, &[]).unwrap();
        Arc::new(CertificateAuthority::load(&files.cert, &files.key).unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn caches_bounded_and_expiring() {
        let cache = LeafCache::new(ca(), 2, Duration::from_secs(60));
        let a1 = cache.get("a.test").unwrap();
        assert!(
            Arc::ptr_eq(&a1, &cache.get("a.test").unwrap()),
            "second get is cached"
        );
        cache.get("b.test").unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        cache.get("c.test").unwrap();
        assert_eq!(cache.len(), 2, "bounded");
        tokio::time::advance(Duration::from_secs(61)).await;
        let c2 = cache.get("c.test").unwrap();
        let c3 = cache.get("c.test").unwrap();
        assert!(Arc::ptr_eq(&c2, &c3));
        assert!(
            !Arc::ptr_eq(&a1, &cache.get("a.test").unwrap()),
            "a was evicted and re-minted"
        );
    }
}
