//! Name resolution with static overrides (`[proxy.resolve]`, like curl's `--resolve`).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;

/// Resolves through the overrides first, then the system resolver.
#[derive(Clone)]
pub struct OverrideResolver {
    overrides: Arc<HashMap<String, IpAddr>>,
}

impl OverrideResolver {
    pub fn new(overrides: Arc<HashMap<String, IpAddr>>) -> Self {
        OverrideResolver { overrides }
    }
}

/// Resolves `host` (port 0 placeholder) with the overrides, else the system resolver.
pub async fn resolve(
    overrides: &HashMap<String, IpAddr>,
    host: &str,
    port: u16,
) -> std::io::Result<Vec<SocketAddr>> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    if let Some(ip) = overrides.get(&bare.to_ascii_lowercase()) {
        return Ok(vec![SocketAddr::new(*ip, port)]);
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((bare, port)).await?.collect();
    if addrs.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{bare} has no addresses"),
        ));
    }
    Ok(addrs)
}

impl tower_service::Service<Name> for OverrideResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let overrides = self.overrides.clone();
        Box::pin(async move {
            // The connector sets the real port on each address itself.
            resolve(&overrides, name.as_str(), 0)
                .await
                .map(|v| v.into_iter())
        })
    }
}
