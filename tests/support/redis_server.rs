//! A real `redis-server` per test, on a free port of its own (Redis's `--port 0` disables TCP),
//! so tests can kill, freeze and restart it without touching anyone else's data.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::config::toml_str;

/// A `redis-server` child on a port of its own, killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind for a free port");
    l.local_addr().expect("local addr").port()
}

impl RedisServer {
    pub async fn start() -> RedisServer {
        for _ in 0..20 {
            let mut s = RedisServer {
                port: free_port(),
                child: None,
            };
            if s.spawn().await {
                return s;
            }
        }
        panic!("could not start redis-server on a free port");
    }

    /// Starts the server on `self.port`; false when the port was taken meanwhile.
    pub async fn spawn(&mut self) -> bool {
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
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
            if child.try_wait().expect("poll redis-server").is_some() {
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

    pub async fn restart(&mut self) {
        self.kill();
        assert!(self.spawn().await, "restart redis on port {}", self.port);
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn conn(&self) -> redis::aio::MultiplexedConnection {
        let client = redis::Client::open(self.url()).expect("redis url");
        client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis")
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
                .expect("SCAN");
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
            .expect("HGETALL");
        v.iter().map(|(_, u)| u).sum()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

impl RedisServer {
    /// The server's process id (for SIGSTOP/SIGCONT).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis-server is running").id()
    }

    /// Sends signal `sig` (`STOP`, `CONT`) to the server.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} redis-server failed");
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
