//! Builds proxy config files for tests. Values are raw TOML (`"\"deny\""`, `"[443]"`).

use std::fmt::Write;

/// A config under construction; `build` renders TOML.
#[derive(Clone, Debug, Default)]
pub struct ConfigBuilder {
    proxy: Vec<(String, String)>,
    resolve: Vec<(String, String)>,
    extra_roots: Option<String>,
    providers: Vec<(String, Vec<(String, String)>)>,
    raw: String,
}

impl ConfigBuilder {
    /// Loopback listeners on port 0, memory state, no providers.
    pub fn new() -> ConfigBuilder {
        ConfigBuilder::default()
    }

    /// Sets a `[proxy]` key to a raw TOML value.
    pub fn proxy(mut self, key: &str, toml_value: &str) -> Self {
        self.proxy.retain(|(k, _)| k != key);
        self.proxy.push((key.to_string(), toml_value.to_string()));
        self
    }

    /// Adds a `[proxy.resolve]` override `host = ip`.
    pub fn resolve(mut self, host: &str, ip: &str) -> Self {
        self.resolve.push((host.to_string(), ip.to_string()));
        self
    }

    /// Sets `tls.extra_upstream_roots`.
    pub fn extra_roots(mut self, path: &std::path::Path) -> Self {
        self.extra_roots = Some(path.display().to_string());
        self
    }

    /// Adds `[providers.NAME]` with raw TOML values.
    pub fn provider(mut self, name: &str, fields: &[(&str, &str)]) -> Self {
        self.providers.push((
            name.to_string(),
            fields
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ));
        self
    }

    /// A provider `name` for `host` with route `/name`, forwarding to `upstream`.
    pub fn simple_provider(self, name: &str, host: &str, upstream: &str) -> Self {
        let hosts = format!("[{}]", toml_str(host));
        let route = toml_str(&format!("/{name}"));
        let upstream = toml_str(upstream);
        self.provider(
            name,
            &[
                ("hosts", &hosts),
                ("route", &route),
                ("upstream", &upstream),
            ],
        )
    }

    /// Appends raw TOML at the end.
    pub fn raw(mut self, toml: &str) -> Self {
        self.raw.push_str(toml);
        self.raw.push('\n');
        self
    }

    pub fn build(&self) -> String {
        let mut s = String::from("[proxy]\nlisten = \"127.0.0.1:0\"\n");
        for (k, v) in &self.proxy {
            let _ = writeln!(s, "{k} = {v}");
        }
        if !self.resolve.is_empty() {
            s.push_str("\n[proxy.resolve]\n");
            for (h, ip) in &self.resolve {
                let _ = writeln!(s, "{} = {}", toml_str(h), toml_str(ip));
            }
        }
        s.push_str("\n[admin]\nlisten = \"127.0.0.1:0\"\n");
        if let Some(roots) = &self.extra_roots {
            let _ = write!(s, "\n[tls]\nextra_upstream_roots = {}\n", toml_str(roots));
        }
        s.push_str("\n[state]\nbackend = \"memory\"\n");
        for (name, fields) in &self.providers {
            let _ = writeln!(s, "\n[providers.{name}]");
            for (k, v) in fields {
                let _ = writeln!(s, "{k} = {v}");
            }
        }
        if !self.raw.is_empty() {
            s.push('\n');
            s.push_str(&self.raw);
        }
        s
    }
}

/// A TOML basic string literal.
pub fn toml_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
