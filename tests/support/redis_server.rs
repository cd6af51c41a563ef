//! A `redis-server` of a test's own, on a free port (Redis's `--port 0` disables TCP), that
//! the test may kill and restart without touching anyone else's data.

#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::toml_str;

/// A `redis-server` child on a port of its own, killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    /// TLS only (`--tls-port`): (certificate, key, CA) files.
    tls: Option<[std::path::PathBuf; 3]>,
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        Self::start_with(None).await
    }

    /// A server answering TLS only on its port, with `cert` and `key` (PEM files); clients
    /// are not asked for certificates.
    pub async fn start_tls(
        cert: &std::path::Path,
        key: &std::path::Path,
        ca: &std::path::Path,
    ) -> RedisServer {
        Self::start_with(Some([cert.into(), key.into(), ca.into()])).await
    }

    async fn start_with(tls: Option<[std::path::PathBuf; 3]>) -> RedisServer {
        for _ in 0..20 {
            let mut s = RedisServer {
                port: free_port(),
                child: None,
                tls: tls.clone(),
            };
            if s.spawn().await {
                return s;
            }
        }
        panic!("could not start redis-server on a free port");
    }

    /// Starts the server on `self.port`; false when the port was taken meanwhile.
    pub async fn spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let mut cmd = Command::new("redis-server");
        match &self.tls {
            None => cmd.args(["--port", &port]),
            Some([cert, key, ca]) => cmd
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port,
                    "--tls-auth-clients",
                    "no",
                ])
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key)
                .arg("--tls-ca-cert-file")
                .arg(ca),
        };
        let mut child = cmd
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed");
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                self.child = Some(child);
                return true;
            }
            if child.try_wait().unwrap().is_some() {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = child.kill();
        false
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, ...) to the server with `kill(1)`.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("redis is running").id();
        let ok = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .expect("kill(1)")
            .success();
        assert!(ok, "kill -{signal} {pid}");
    }

    pub async fn restart(&mut self) {
        self.kill();
        assert!(self.spawn().await, "restart redis on port {}", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.url()).unwrap();
        client.get_multiplexed_async_connection().await.unwrap()
    }

    /// Every key, by SCAN.
    pub async fn keys(&self) -> Vec<String> {
        let mut conn = self.conn().await;
        let (mut cursor, mut keys) = (0u64, Vec::new());
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .unwrap();
            keys.extend(batch);
            if next == 0 {
                return keys;
            }
            cursor = next;
        }
    }

    /// The units a rolling-window hash holds (sum of its sub-buckets).
    pub async fn rolling_sum(&self, key: &str) -> f64 {
        let mut conn = self.conn().await;
        let v: Vec<(String, f64)> = redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        // Sub-bucket fields are indices; `s` and `lo` are bookkeeping.
        v.iter()
            .filter(|(field, _)| field.parse::<u64>().is_ok())
            .map(|(_, u)| u)
            .sum()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `cfg` with its `[state]` switched to Redis.
pub fn with_redis(cfg: &str, redis: &RedisServer, on_error: &str) -> String {
    let state = format!(
        "[state]\nbackend = \"redis\"\nredis_url = {}\nredis_prefix = \"qp\"\non_backend_error = {}\n",
        toml_str(&redis.url()),
        toml_str(on_error)
    );
    cfg.replace("[state]\nbackend = \"memory\"\n", &state)
}

/// `cfg` with a generous bound on one Redis call, for the sharing tests: on a loaded test
/// machine a timeout would (by design) let the local engine decide, which is not what they test.
pub fn patient(cfg: &str) -> String {
    cfg.replace(
        "redis_prefix = \"qp\"\n",
        "redis_prefix = \"qp\"\nredis_timeout = \"2s\"\n",
    )
}
