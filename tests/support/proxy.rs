//! Launches the real `quota-proxy` binary for a test.
//!
//! The config is written to a fresh temp dir (also the child's working directory), the child
//! runs `quota-proxy run -c <file>` with `QUOTA_PROXY_LOG=debug`, and `start` returns once the
//! ready line `quota-proxy listening proxy=ADDR admin=ADDR` appears on stdout. Stdout and stderr
//! are collected into one buffer ([`Proxy::logs`]); the child is killed on drop.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long `start` waits for the ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

const READY_PREFIX: &str = "quota-proxy listening ";

/// Path of the binary under test.
pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_quota-proxy")
}

/// A running proxy process.
pub struct Proxy {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub pid: u32,
    child: Child,
    logs: Arc<Mutex<String>>,
    readers: Vec<JoinHandle<()>>,
    dir: tempfile::TempDir,
    config_path: PathBuf,
    exit: Option<ExitStatus>,
}

/// Parses `quota-proxy listening proxy=ADDR admin=ADDR`.
pub fn parse_ready_line(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let rest = line.trim().strip_prefix(READY_PREFIX)?;
    let mut proxy = None;
    let mut admin = None;
    for part in rest.split_whitespace() {
        if let Some(v) = part.strip_prefix("proxy=") {
            proxy = v.parse().ok();
        } else if let Some(v) = part.strip_prefix("admin=") {
            admin = v.parse().ok();
        }
    }
    Some((proxy?, admin?))
}

impl Proxy {
    /// Starts the proxy with `config_toml`; panics with its output if it is not ready in time.
    pub fn start(config_toml: &str) -> Proxy {
        Self::start_with_env(config_toml, &[])
    }

    /// Like [`Proxy::start`], with extra environment variables for the child.
    pub fn start_with_env(config_toml: &str, env: &[(&str, &str)]) -> Proxy {
        let dir = tempfile::tempdir().expect("proxy temp dir");
        let config_path = dir.path().join("quota-proxy.toml");
        std::fs::write(&config_path, config_toml).expect("write config");
        let mut cmd = Command::new(binary());
        cmd.arg("run")
            .arg("-c")
            .arg(&config_path)
            .current_dir(dir.path())
            .env("QUOTA_PROXY_LOG", "debug")
            .env_remove("QUOTA_PROXY_CONFIG")
            .env_remove("QUOTA_PROXY_LOG_FORMAT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", binary()));
        let pid = child.id();
        let logs = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = std_mpsc::channel();
        let stdout = child.stdout.take().expect("child stdout");
        let stderr = child.stderr.take().expect("child stderr");
        let readers = vec![
            spawn_reader(stdout, logs.clone(), Some(ready_tx)),
            spawn_reader(stderr, logs.clone(), None),
        ];
        let mut proxy = Proxy {
            proxy_addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            admin_addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            pid,
            child,
            logs,
            readers,
            dir,
            config_path,
            exit: None,
        };
        match ready_rx.recv_timeout(READY_TIMEOUT) {
            Ok((p, a)) => {
                proxy.proxy_addr = p;
                proxy.admin_addr = a;
                proxy
            }
            Err(_) => {
                let _ = proxy.child.kill();
                let status = proxy.child.wait().ok();
                for r in proxy.readers.drain(..) {
                    let _ = r.join();
                }
                panic!(
                    "quota-proxy did not print its ready line within {READY_TIMEOUT:?} (exit: {status:?})\n--- config ---\n{config_toml}\n--- output ---\n{}",
                    proxy.logs()
                );
            }
        }
    }

    /// Everything the child wrote so far (stdout and stderr, interleaved by line).
    pub fn logs(&self) -> String {
        self.logs.lock().expect("logs lock").clone()
    }

    /// The config file the child reads; rewrite it and reload to change the config.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The child's working directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Replaces the config file's content (does not reload).
    pub fn write_config(&self, toml: &str) {
        std::fs::write(&self.config_path, toml).expect("rewrite config");
    }

    /// Sends a signal by name (`TERM`, `HUP`, `INT`, `KILL`) with the `kill` command.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} {} failed", self.pid);
    }

    /// The exit status if the child has exited (without waiting).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().ok().flatten();
        }
        self.exit
    }

    /// Waits up to `timeout` for the child to exit (polling; does not block the runtime).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_exit() {
                return Some(s);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the collected output contains `needle` (panics with the logs after `timeout`).
    pub async fn wait_for_log(&self, needle: &str, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.logs().contains(needle) {
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "log line containing {needle:?} not seen within {timeout:?}; logs:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "--- quota-proxy output (pid {}) ---\n{}",
                self.pid,
                self.logs()
            );
        }
    }
}

fn spawn_reader<R: Read + Send + 'static>(
    pipe: R,
    logs: Arc<Mutex<String>>,
    ready: Option<std_mpsc::Sender<(SocketAddr, SocketAddr)>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut ready = ready;
        let mut reader = BufReader::new(pipe);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if let Some(addrs) = parse_ready_line(&line) {
                if let Some(tx) = ready.take() {
                    let _ = tx.send(addrs);
                }
            }
            logs.lock().expect("logs lock").push_str(&line);
        }
    })
}

/// How long [`run_cli`] lets a command run before killing it.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(20);

/// Runs the binary with `args` in `cwd` to completion (for `check`, `ca`, ...); a command still
/// running after [`CLI_TIMEOUT`] is killed and the test fails with its output.
pub fn run_cli(args: &[&str], cwd: &Path) -> Output {
    run_cli_with_env(args, cwd, &[])
}

/// Like [`run_cli`], with extra environment variables for the child.
pub fn run_cli_with_env(args: &[&str], cwd: &Path, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(binary());
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("QUOTA_PROXY_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {} {args:?}: {e}", binary()));
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let out = read_all(Box::new(child.stdout.take().expect("stdout")));
    let err = read_all(Box::new(child.stderr.take().expect("stderr")));
    let deadline = tokio::time::Instant::now() + CLI_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for cli") {
            break status;
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let (o, e) = (
                out.join().unwrap_or_default(),
                err.join().unwrap_or_default(),
            );
            panic!(
                "`quota-proxy {}` still running after {CLI_TIMEOUT:?}\n{}{}",
                args.join(" "),
                String::from_utf8_lossy(&o),
                String::from_utf8_lossy(&e)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}
