//! `quota-proxy check` output: each provider with its hosts, keys (ids only) and limits in words.

use std::fmt::Write;

use super::model::*;

/// A plain-text description of a valid config.
pub fn describe(cfg: &Config) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}: OK", cfg.source.display());
    let _ = writeln!(
        out,
        "proxy on {} (unmatched: {}), admin on {}, state: {}",
        cfg.proxy.listen,
        match cfg.proxy.unmatched {
            Unmatched::Tunnel => "tunnel",
            Unmatched::Deny => "deny",
        },
        cfg.admin.listen,
        match cfg.state.backend {
            Backend::Memory => "memory".to_string(),
            Backend::Local => format!("local file in {}", cfg.state.dir.display()),
            Backend::Redis => format!("redis ({})", cfg.state.redis_prefix),
        }
    );
    for p in &cfg.providers {
        let _ = writeln!(
            out,
            "\nprovider {}{}",
            p.name,
            p.preset
                .as_ref()
                .map(|s| format!(" (preset {s})"))
                .unwrap_or_default()
        );
        if !p.hosts.is_empty() {
            let hosts: Vec<String> = p.hosts.iter().map(|h| h.to_string()).collect();
            let how = if p.intercept {
                "intercepted"
            } else {
                "tunneled on CONNECT"
            };
            let _ = writeln!(out, "  hosts: {} ({how})", hosts.join(", "));
        }
        if let (Some(route), Some(up)) = (&p.route, &p.upstream) {
            let _ = writeln!(
                out,
                "  route: {route} -> {}://{}{}",
                up.scheme(),
                up.authority(),
                up.base_path
            );
        }
        if p.mode == Mode::Shadow {
            let _ = writeln!(
                out,
                "  mode: shadow (decides and records, never delays or rejects)"
            );
        }
        if p.keys.keys.is_empty() {
            let _ = writeln!(
                out,
                "  keys: none (the app's own credential is passed through)"
            );
        } else {
            let ids: Vec<&str> = p.keys.keys.iter().map(|k| k.id.as_str()).collect();
            let strategy = match p.keys.strategy {
                Strategy::RoundRobin => "round_robin",
                Strategy::LeastUsed => "least_used",
                Strategy::FillFirst => "fill_first",
                Strategy::Sticky => "sticky",
            };
            let _ = writeln!(out, "  keys: {} ({strategy})", ids.join(", "));
        }
        for l in &p.limits {
            let _ = writeln!(out, "  limit {}: {}", l.name, limit_in_words(l));
        }
        if !p.limits.is_empty() {
            let action = match p.on_limit.action {
                Action::Delay => format!(
                    "delay up to {}",
                    super::format_duration(p.on_limit.max_delay)
                ),
                Action::Reject => "reject with 429".to_string(),
            };
            let _ = writeln!(
                out,
                "  when a limit is reached: {action} (queue up to {})",
                p.on_limit.max_queue
            );
        }
    }
    out
}

fn limit_in_words(l: &Limit) -> String {
    let unit = super::validate::unit_name(l.unit).replace('_', " ");
    let scope = match l.scope {
        Scope::Provider => "for the whole provider",
        Scope::Key => "per key",
        Scope::Account => "per account",
        Scope::Client => "per client",
    };
    let window = match l.window {
        Window::Rolling(d) => format!("in any {}", super::format_duration(d)),
        Window::TokenBucket { every, burst } => {
            format!(
                "refilled every {} (token bucket, burst {burst})",
                super::format_duration(every)
            )
        }
        Window::Calendar { period, tz } => {
            format!("per calendar {:?} in {tz}", period).to_lowercase()
        }
        Window::InFlight => "at once".to_string(),
    };
    let mut s = format!("at most {} {unit} {window}, {scope}", l.amount);
    if let Some(w) = l.warn_at {
        let _ = write!(s, "; warns at {}%", w * 100.0);
    }
    s
}
