//! The `quota-proxy` command line: `run` and `check` (SPEC §3).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use quota_proxy::config::{self, Config};

/// mimalloc instead of the system allocator: a request allocates a few dozen small objects
/// (header maps, futures, buffers), and its per-thread free lists cost a fraction of glibc
/// malloc's instructions for them. Version 2 (the crate's `v2` feature): version 3 takes a
/// slow, over-allocating path for aligned requests over 1 KiB, and every Rust allocation is an
/// aligned request (docs/performance.md, "The allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "quota-proxy",
    version,
    about = "HTTP forward proxy that enforces API quotas transparently"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the proxy and the admin API.
    Run {
        /// Config file (default: $QUOTA_PROXY_CONFIG, else config/quota-proxy.toml).
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Validate the config and describe every provider.
    Check {
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Show every provider's limits, keys and totals from a running proxy's admin API.
    Status {
        /// Admin API base URL (default: admin.listen of the config, else http://127.0.0.1:9090).
        #[arg(long)]
        admin: Option<String>,
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Manage the local CA used for TLS interception.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Create ca.crt and ca.key (ECDSA P-256, key mode 0600).
    Init {
        /// Folder for ca.crt and ca.key.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// Replace an existing CA.
        #[arg(long)]
        force: bool,
        /// Limit the CA to the hosts of intercepting providers in this config (X.509 name
        /// constraints), so a leaked CA key cannot mint certificates for anything else.
        #[arg(long, value_name = "CONFIG", num_args = 0..=1, default_missing_value = "config/quota-proxy.toml")]
        constrain: Option<PathBuf>,
    },
    /// Print the CA's path, subject, fingerprint, expiry and how to trust it.
    Show {
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
    },
}

fn config_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os(config::PATH_ENV).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config_path(config)),
        Command::Status { admin, config } => match status(admin, config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("quota-proxy: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Ca { command } => match ca(command) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("quota-proxy: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            quota_proxy::telemetry::init_logging();
            match run(config_path(config)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e:#}");
                    eprintln!("quota-proxy: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match config::load(path) {
        Ok(cfg) => {
            print!("{}", quota_proxy::config::describe(&cfg));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn status(admin: Option<String>, config: Option<PathBuf>) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let (url, token) = match admin {
        Some(url) => (url, std::env::var("QUOTA_PROXY_ADMIN_TOKEN").ok()),
        None => match config::load(&config_path(config)) {
            Ok(cfg) => (
                format!("http://{}", cfg.admin.listen),
                cfg.admin.token.map(|t| t.expose().to_string()),
            ),
            Err(_) => ("http://127.0.0.1:9090".to_string(), None),
        },
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let doc = runtime
        .block_on(quota_proxy::admin::terminal::fetch(&url, token.as_deref()))
        .map_err(anyhow::Error::msg)?;
    print!(
        "{}",
        quota_proxy::admin::terminal::render(&doc, std::io::stdout().is_terminal())
    );
    Ok(())
}

fn ca(command: CaCommand) -> anyhow::Result<()> {
    use quota_proxy::tls;
    match command {
        CaCommand::Init {
            dir,
            force,
            constrain,
        } => {
            let files = tls::CaFiles {
                cert: dir.join("ca.crt"),
                key: dir.join("ca.key"),
            };
            let hosts = match constrain {
                Some(path) => {
                    let cfg = config::load(&path)?;
                    let hosts: Vec<String> = cfg
                        .providers
                        .iter()
                        .filter(|p| p.intercept)
                        .flat_map(|p| {
                            p.hosts
                                .iter()
                                .map(|h| h.to_string().trim_start_matches('*').to_string())
                        })
                        .map(|h| h.split(':').next().unwrap_or_default().to_string())
                        .collect();
                    anyhow::ensure!(
                        !hosts.is_empty(),
                        "{}: no provider has intercept = true",
                        path.display()
                    );
                    hosts
                }
                None => Vec::new(),
            };
            tls::create(&files, force, &hosts)?;
            println!(
                "created {} and {} (mode 0600)",
                files.cert.display(),
                files.key.display()
            );
            if !hosts.is_empty() {
                println!("constrained to: {}", hosts.join(", "));
            }
            print!("\n{}", tls::describe(&files.cert)?);
        }
        CaCommand::Show { dir } => print!("{}", tls::describe(&dir.join("ca.crt"))?),
    }
    Ok(())
}

/// Raises the soft open-files limit to the hard limit: each client connection holds a file
/// descriptor (two with its upstream), and `max_connections` defaults to 10,000, far above the
/// usual soft limit of 1,024. A failure only leaves the limit as it was.
fn raise_nofile_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::debug!(limit, "open-files soft limit raised to the hard limit"),
        Err(e) => tracing::debug!("open-files limit left unchanged: {e}"),
    }
}

/// Worker threads: `TOKIO_WORKER_THREADS` when set, else the cores this process may run on
/// (its CPU affinity and cgroup quota). One worker runs tokio's current-thread scheduler:
/// every task on the one thread that accepts, with no hand-over between threads.
fn worker_threads() -> anyhow::Result<usize> {
    match std::env::var("TOKIO_WORKER_THREADS") {
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => anyhow::bail!("TOKIO_WORKER_THREADS must be a whole number above 0, not {v:?}"),
        },
        Err(std::env::VarError::NotPresent) => {
            Ok(std::thread::available_parallelism().map_or(1, |n| n.get()))
        }
        Err(std::env::VarError::NotUnicode(_)) => {
            anyhow::bail!("TOKIO_WORKER_THREADS must be a whole number above 0")
        }
    }
}

fn run(path: PathBuf) -> anyhow::Result<()> {
    let cfg: Config = config::load(&path)?;
    raise_nofile_limit();
    let runtime = match worker_threads()? {
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build()?,
    };
    runtime.block_on(async move {
        let prepared = quota_proxy::app::prepare(cfg.clone()).await?;
        let proxy = tokio::net::TcpListener::bind(cfg.proxy.listen)
            .await
            .with_context(|| format!("cannot listen on {} (proxy.listen)", cfg.proxy.listen))?;
        let admin = tokio::net::TcpListener::bind(cfg.admin.listen)
            .await
            .with_context(|| format!("cannot listen on {} (admin.listen)", cfg.admin.listen))?;
        let metrics = quota_proxy::telemetry::init_metrics().map_err(anyhow::Error::msg)?;
        let (proxy_addr, admin_addr) = (proxy.local_addr()?, admin.local_addr()?);
        // Every signal handler exists before the ready line: a signal right after it must
        // never take its default action.
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = signal(SignalKind::hangup())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tracing::info!(proxy = %proxy_addr, admin = %admin_addr, providers = cfg.providers.len(), "listening");
        // One machine-readable line on stdout, for scripts and tests that bind port 0.
        let mut out = std::io::stdout();
        writeln!(out, "quota-proxy listening proxy={proxy_addr} admin={admin_addr}")?;
        out.flush()?;

        let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the config");
                if reload_tx.send(()).await.is_err() {
                    break;
                }
            }
        });
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        };
        quota_proxy::app::run(prepared, proxy, admin, Some(metrics), shutdown, reload_rx).await?;
        Ok(())
    })
}
