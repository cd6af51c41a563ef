//! `quota-proxy status`: the admin `/status` as a terminal table with a bar per limit,
//! coloured (green/amber/red by `warn_at`) when stdout is a terminal.

use std::fmt::Write;

use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Fetches `/status` from the admin API at `base` (e.g. `http://127.0.0.1:9090`).
pub async fn fetch(base: &str, token: Option<&str>) -> Result<Value, String> {
    let url = format!("{}/status", base.trim_end_matches('/'));
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("{base:?} is not a URL like http://127.0.0.1:9090"))?;
    if uri.scheme_str() != Some("http") {
        return Err("the admin URL must start with http://".into());
    }
    let host = uri.host().ok_or("the admin URL has no host")?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot reach the admin API at {base}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("admin API handshake failed: {e}"))?;
    tokio::spawn(conn);
    let mut req =
        http::Request::get(uri.clone()).header(http::header::HOST, format!("{host}:{port}"));
    if let Some(t) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("admin API request failed: {e}"))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!(
            "admin API answered {status}: {}",
            String::from_utf8_lossy(&body)
        ));
    }
    serde_json::from_slice(&body).map_err(|e| format!("admin API sent invalid JSON: {e}"))
}

const GREEN: &str = "\x1b[32m";
const AMBER: &str = "\x1b[33m";
const RED: &str = "\x1b[31m";
const DIM: &str = "\x1b[2m";
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

/// Renders a `/status` document.
pub fn render(status: &Value, color: bool) -> String {
    let paint = |code: &str, text: &str| {
        if color {
            format!("{code}{text}{RESET}")
        } else {
            text.to_string()
        }
    };
    let mut out = String::new();
    let Some(providers) = status["providers"].as_object() else {
        return "no providers\n".into();
    };
    for (name, p) in providers {
        let mode = p["mode"].as_str().unwrap_or("enforce");
        let t = &p["totals"];
        let _ = writeln!(
            out,
            "{}  {}  queue {}  requests {}  tokens {}  usd {:.4}  delayed {}  rejected {}  upstream 429 {}",
            paint(BOLD, name),
            paint(DIM, mode),
            p["queue_length"],
            t["requests"],
            t["tokens"],
            t["usd"].as_f64().unwrap_or(0.0),
            t["delayed"],
            t["rejected"],
            t["upstream_429"],
        );
        for l in p["limits"].as_array().into_iter().flatten() {
            let used = l["used"].as_f64().unwrap_or(0.0);
            let amount = l["amount"].as_f64().unwrap_or(0.0);
            let frac = if amount > 0.0 {
                (used / amount).clamp(0.0, 1.0)
            } else {
                0.0
            };
            let warn = l["warn_at"].as_f64().unwrap_or(0.8);
            let shade = if frac >= 1.0 {
                RED
            } else if frac >= warn {
                AMBER
            } else {
                GREEN
            };
            let filled = (frac * 20.0).round() as usize;
            let bar = format!("{}{}", "█".repeat(filled), "░".repeat(20 - filled));
            let scope = match (l["scope"].as_str(), l["scope_id"].as_str()) {
                (Some("provider"), _) | (_, Some("")) => String::new(),
                (Some(s), Some(id)) => format!(" [{s} {id}]"),
                _ => String::new(),
            };
            let reset = l["seconds_until_reset"]
                .as_f64()
                .map(|s| format!("resets in {}", human(s)))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  {:<18} {} {:>5.1}%  {} / {} {} per {}{}  {}",
                format!("{}{}", l["name"].as_str().unwrap_or(""), ""),
                paint(shade, &bar),
                frac * 100.0,
                trim(used),
                trim(amount),
                l["unit"].as_str().unwrap_or(""),
                l["window"].as_str().unwrap_or(""),
                scope,
                paint(DIM, &reset),
            );
        }
        for k in p["keys"].as_array().into_iter().flatten() {
            let state = k["state"].as_str().unwrap_or("?");
            let shade = if state == "active" {
                GREEN
            } else if state == "cooling" || state == "exhausted" {
                AMBER
            } else {
                RED
            };
            let until = k["until"]
                .as_str()
                .map(|u| format!(" until {u}"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  key {:<14} {}{}  in flight {}  sent {}",
                k["id"].as_str().unwrap_or(""),
                paint(shade, state),
                until,
                k["in_flight"],
                k["sent"]
            );
        }
        out.push('\n');
    }
    out
}

fn trim(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x:.2}")
    }
}

fn human(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86_400, (s % 86_400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_bars_and_keys_plain() {
        let status = serde_json::json!({"providers": {"openai": {
            "mode": "enforce", "queue_length": 2,
            "totals": {"requests": 10, "tokens": 500, "usd": 0.25, "delayed": 1, "rejected": 3, "upstream_429": 0},
            "limits": [
                {"name": "rpm", "used": 50.0, "amount": 100.0, "unit": "requests", "window": "1m", "scope": "provider", "scope_id": "", "seconds_until_reset": 30.0, "warn_at": 0.8},
                {"name": "per-key", "used": 9.0, "amount": 10.0, "unit": "requests", "window": "day (UTC)", "scope": "key", "scope_id": "k1", "seconds_until_reset": 7300.0}
            ],
            "keys": [{"id": "k1", "state": "cooling", "until": "2026-01-01T00:00:00Z", "in_flight": 0, "sent": 4}]
        }}});
        let text = render(&status, false);
        assert!(text.contains("openai  enforce  queue 2  requests 10"));
        assert!(
            text.contains("rpm")
                && text.contains("50.0%")
                && text.contains("50 / 100 requests per 1m")
        );
        assert!(text.contains("██████████░░░░░░░░░░"));
        assert!(text.contains("[key k1]") && text.contains("resets in 2h1m"));
        assert!(text.contains("key k1             cooling until 2026-01-01T00:00:00Z"));
        assert!(!text.contains('\x1b'), "no colour codes when plain");
        assert!(render(&status, true).contains(AMBER), "90% is past warn_at");
    }
}
