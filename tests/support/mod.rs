//! Shared integration-test support: the proxy launcher, mock upstreams, clients and test CAs.
//!
//! - [`proxy::Proxy`] runs the real binary on `127.0.0.1:0` listeners and collects its logs.
//! - [`upstream::MockUpstream`] is an in-process upstream (plain HTTP/1.1 + h2c, or TLS with
//!   ALPN) that records every request; [`handlers`] builds its behaviour.
//! - [`client`] talks to the proxy (absolute-form, origin-form, raw bytes, CONNECT, TLS).
//! - [`ca::TestCa`] makes certificate authorities at runtime.
//! - [`config::ConfigBuilder`] renders config files.
#![allow(dead_code, unused_imports)]

pub mod ca;
pub mod client;
pub mod config;
pub mod handlers;
pub mod measure;
pub mod proxy;
pub mod quota;
pub mod redis_server;
pub mod upstream;
pub mod wait;

pub use ca::{client_config_for_roots, roots_from_pem_file, TestCa};
pub use client::*;
pub use config::{toml_str, ConfigBuilder};
pub use handlers::*;
pub use measure::*;
pub use proxy::{run_cli, run_cli_with_env, Proxy};
pub use quota::*;
pub use redis_server::{free_port, patient, with_redis, RedisServer};
pub use upstream::{MockUpstream, Recorded};
pub use wait::eventually;

/// Host name the tests' providers use; the proxy resolves it to 127.0.0.1.
pub const MOCK_HOST: &str = "api.mock.test";

/// A config with provider `mock` (host [`MOCK_HOST`], route `/mock`) whose upstream is `up`,
/// reached by name through `[proxy.resolve]`.
pub fn mock_config(up: &MockUpstream) -> ConfigBuilder {
    ConfigBuilder::new()
        .resolve(MOCK_HOST, "127.0.0.1")
        .simple_provider("mock", MOCK_HOST, &up.url_for(MOCK_HOST))
}

/// A config whose provider `mock` (host [`MOCK_HOST`], route `/mock`) is intercepted and
/// forwards to the TLS mock `up`, whose certificate `ca` issued (trusted as an extra root).
pub fn intercepted_mock(ca: &TestCa, up: &MockUpstream) -> ConfigBuilder {
    ConfigBuilder::new()
        .resolve(MOCK_HOST, "127.0.0.1")
        .extra_roots(ca.pem_path())
        .provider(
            "mock",
            &[
                ("hosts", &format!("[{}]", toml_str(MOCK_HOST))),
                ("intercept", "true"),
                ("route", "\"/mock\""),
                ("upstream", &toml_str(&up.url_for(MOCK_HOST))),
            ],
        )
}

/// `http://api.mock.test:PORT{path}` for the plain mock `up`.
pub fn mock_url(up: &MockUpstream, path: &str) -> String {
    format!("{}{path}", up.url_for(MOCK_HOST))
}
