//! The forwarding pipeline shared by absolute-form, route-mode and intercepted requests:
//! caller hints → destination + policy → upstream request → streamed response.

use std::borrow::Cow;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use tokio::time::Instant;

use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::net::TcpStream;

use super::{
    count, headers, split_authority, Body, BoxError, ConnInfo, ProxyError, Runtime, Shared,
};
use crate::config::{Config, Provider, Unmatched};
use crate::policy;
use crate::runtime::ProviderRuntime;

/// Where a request goes.
struct Destination {
    https: bool,
    host: Arc<str>,
    port: u16,
    /// Shares the request's bytes in the usual case (no copy).
    path_and_query: PathAndQuery,
    provider: Option<Arc<Provider>>,
    /// The provider's runtime state, when the connection's [`LastDestination`] had it.
    handle: Option<Arc<ProviderRuntime>>,
    /// Whether the request URI's authority spells the destination as
    /// [`Destination::authority`] would, when the connection's [`LastDestination`] knew.
    spelled: Option<bool>,
    /// [`Destination::authority`] built once with the config, for a route-mode upstream.
    authority: Option<Authority>,
}

/// A connection's last absolute-form destination with a provider. A kept-alive client
/// calls one API, so the next request naming the same scheme and authority, under the same
/// runtime, takes it from here: the authority's split and lower-casing, the provider match,
/// the spelling check and the provider's runtime lookup happen once per connection and
/// authority instead of once per request (about 1k instructions of a forwarded request's
/// 34k). Every request's `Host` headers are still checked against it.
pub struct LastDestination {
    /// The runtime it was found under. Weak, so that the runtime's memory stays allocated
    /// while this lives: a reload's runtime never has its address, and never matches.
    runtime: Weak<crate::runtime::Runtime>,
    https: bool,
    /// The request URI's authority exactly as sent (compared byte for byte). A copy: the
    /// request's own shares the connection's read buffer, which it would keep allocated.
    authority: Box<str>,
    host: Arc<str>,
    port: u16,
    provider: Arc<Provider>,
    handle: Option<Arc<ProviderRuntime>>,
    spelled: bool,
}

/// The slot of a connection's [`LastDestination`].
#[derive(Default)]
pub struct DestinationSlot(Mutex<Option<LastDestination>>);

impl std::fmt::Debug for DestinationSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let last = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        // Host and port only: an authority may carry user information.
        f.debug_struct("DestinationSlot")
            .field("last", &last.as_ref().map(|l| (&*l.host, l.port)))
            .finish()
    }
}

impl DestinationSlot {
    /// The destination kept for `authority` under `runtime`, if it is the last one.
    fn get(
        &self,
        runtime: &Arc<crate::runtime::Runtime>,
        https: bool,
        authority: &Authority,
        path_and_query: &PathAndQuery,
    ) -> Option<Destination> {
        let last = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let last = last.as_ref().filter(|l| {
            l.https == https
                && std::ptr::eq(l.runtime.as_ptr(), Arc::as_ptr(runtime))
                && *l.authority == *authority.as_str()
        })?;
        Some(Destination {
            https,
            host: Arc::clone(&last.host),
            port: last.port,
            path_and_query: path_and_query.clone(),
            provider: Some(Arc::clone(&last.provider)),
            handle: last.handle.clone(),
            spelled: Some(last.spelled),
            authority: None,
        })
    }

    fn set(&self, last: LastDestination) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(last);
    }
}

impl Destination {
    fn authority(&self) -> String {
        crate::config::net::authority(&self.host, self.port, self.https)
    }

    /// Whether `a` is exactly what [`Destination::authority`] would build.
    fn spelled_by(&self, a: &str) -> bool {
        let default = crate::config::net::default_port(self.https);
        let rest = if self.host.contains(':') {
            a.strip_prefix('[')
                .and_then(|r| r.strip_prefix(&*self.host))
                .and_then(|r| r.strip_prefix(']'))
        } else {
            a.strip_prefix(&*self.host)
        };
        match rest {
            Some("") => self.port == default,
            Some(r) => {
                self.port != default
                    && r.strip_prefix(':').is_some_and(|d| {
                        !d.starts_with('0')
                            && d.bytes().all(|b| b.is_ascii_digit())
                            && d.parse::<u16>() == Ok(self.port)
                    })
            }
            None => false,
        }
    }
}

/// Forwards one request that is not a tunnel's CONNECT: absolute-form, route mode, or one
/// inside an intercepted tunnel; a provider's calls go through `metered::send`.
///
/// A plain function around an async block, as `metered::send` (an `async fn` would keep the
/// request twice in the per-request future).
#[allow(clippy::manual_async_fn)]
pub fn handle<'a>(
    shared: &'a Shared,
    runtime: &'a Arc<Runtime>,
    conn: &'a ConnInfo,
    mut req: Request<Incoming>,
    host: Option<HeaderValue>,
) -> impl Future<Output = Result<Response<Body>, ProxyError>> + Send + 'a {
    async move {
        let config = &runtime.config;
        let mut hints =
            headers::take_caller_hints(req.headers_mut()).map_err(ProxyError::BadRequest)?;
        check_proxy_auth(config, &hints, conn)?;
        if let Some(icpt) = &conn.intercepted {
            if req.method() == http::Method::CONNECT {
                return Err(ProxyError::BadRequest(
                    "CONNECT inside an intercepted tunnel is not supported".into(),
                ));
            }
            if !req.headers().contains_key(headers::CLIENT_HEADER)
                && hints.client == headers::ANONYMOUS
            {
                hints.client = icpt.client.clone().into();
            }
        }
        let mut dest = destination(runtime, conn, &req, host.as_ref())?;
        if let Some(p) = &dest.provider {
            refuse_clear_text_key(p, &dest)?;
        }
        let label = dest
            .provider
            .as_ref()
            .map_or("unmatched", |p| p.name.as_str());
        // The request's own authority when it spells the destination as `authority()` would:
        // the URI's in the usual absolute-form call, the Host header's in an intercepted one
        // (origin-form). Nothing to build then.
        let req_authority = req.uri().authority().cloned();
        let req_host = match (&req_authority, &conn.intercepted) {
            (None, Some(_)) => host.as_ref(),
            _ => None,
        };
        let spelled = req_authority
            .as_ref()
            .map(|a| a.as_str())
            .or_else(|| req_host.and_then(|h| h.to_str().ok()))
            .filter(|a| dest.spelled.unwrap_or_else(|| dest.spelled_by(a)));
        let original_authority: Cow<'_, str> = match (spelled, &dest.authority) {
            (Some(a), _) => Cow::Borrowed(a),
            (None, Some(built)) => Cow::Borrowed(built.as_str()),
            (None, None) => Cow::Owned(dest.authority()),
        };
        if dest.provider.is_none() {
            if config.proxy.unmatched == Unmatched::Deny {
                count(label, "denied");
                return Err(ProxyError::Forbidden(format!(
                    "{} is not a configured provider and unmatched = \"deny\"",
                    dest.host
                )));
            }
            // Resolve once and pin the address, so the policy check and the connection agree.
            let addr = resolve_checked(
                config,
                &dest.host,
                dest.port,
                !config.proxy.allow_private_destinations,
            )
            .await?;
            dest.host = addr.ip().to_string().into();
        }

        let (mut parts, body) = req.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        // Unmatched: the URI carries the pinned address, so its authority is built again.
        let pinned;
        let authority: &str = if dest.provider.is_none() {
            pinned = dest.authority();
            &pinned
        } else {
            &original_authority
        };
        if dest.provider.is_none() {
            // The URI carries the pinned address; Host keeps the name the client asked for.
            let host = HeaderValue::from_str(&original_authority)
                .map_err(|_| ProxyError::BadRequest("invalid host".into()))?;
            parts.headers.insert(header::HOST, host);
        } else {
            // A provider's upstream gets the Host of the upstream authority; a request already
            // carrying exactly that (the usual absolute-form call) keeps it, sparing a removal
            // and an insertion. (Only one Host is ever let through.) An h2 client's request
            // may go out over h2, where `:authority` says it: the upstream client adds Host
            // only if it goes out over HTTP/1.1.
            let want = crate::upstream::host_header(authority, dest.https);
            if host.as_ref().map(HeaderValue::as_bytes) != Some(want.as_bytes()) {
                if parts.version == http::Version::HTTP_2 {
                    parts.headers.remove(header::HOST);
                } else {
                    let want = HeaderValue::from_str(want)
                        .map_err(|_| ProxyError::BadRequest("invalid host".into()))?;
                    parts.headers.insert(header::HOST, want);
                }
            }
        }
        if let Some(uri) = upstream_uri(&dest, authority, &parts.uri)? {
            parts.uri = uri;
        }
        // An h2 client's request may go upstream over h2 (when TLS negotiates it); anything
        // else over HTTP/1.1 (see `upstream::client`).
        if parts.version != http::Version::HTTP_2 {
            parts.version = http::Version::HTTP_11;
        }
        let handle = match &dest.handle {
            Some(h) => Some(h),
            None => dest
                .provider
                .as_ref()
                .and_then(|p| runtime.provider(&p.name)),
        };
        if let Some(provider) = handle {
            let call = super::metered::Call {
                provider,
                engine: &shared.persistent.engine,
                client: &runtime.client,
                config,
                hints: &hints,
                timer: &conn.upstream_timer,
            };
            return super::metered::send(call, parts, body).await;
        }
        let upstream_req =
            Request::from_parts(parts, body.map_err(|e| Box::new(e) as BoxError).boxed());

        let started = Instant::now();
        let sent = conn
            .upstream_timer
            .timeout(
                config.proxy.upstream_timeout,
                runtime.client.request(upstream_req),
            )
            .await;
        let elapsed = started.elapsed();
        crate::telemetry::handles::upstream_duration(label).record(elapsed.as_secs_f64());
        let resp = match sent {
            None => {
                count(label, "upstream_error");
                return Err(ProxyError::GatewayTimeout(crate::config::format_duration(
                    config.proxy.upstream_timeout,
                )));
            }
            Some(Err(e)) => {
                count(label, "upstream_error");
                return Err(ProxyError::BadGateway(describe_client_error(
                    &original_authority,
                    &e,
                )));
            }
            Some(Ok(resp)) => resp,
        };
        let outcome = match (dest.provider.is_some(), resp.status().as_u16()) {
            (false, _) => "tunneled",
            (true, 429) => "upstream_429",
            (true, _) => "forwarded",
        };
        count(label, outcome);
        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        parts.version = http::Version::HTTP_11;
        Ok(Response::from_parts(
            parts,
            body.map_err(|e| Box::new(e) as BoxError).boxed(),
        ))
    }
}

/// SPEC §12: with `[proxy.auth]`, every call needs the proxy password (on the CONNECT for
/// intercepted requests, which are authenticated by their tunnel).
pub fn check_proxy_auth(
    config: &Config,
    hints: &headers::CallerHints,
    conn: &ConnInfo,
) -> Result<(), ProxyError> {
    let Some(expected) = &config.proxy.auth_password else {
        return Ok(());
    };
    if conn.intercepted.is_some() {
        return Ok(());
    }
    match &hints.proxy_password {
        Some(given) if constant_time_eq(given.as_bytes(), expected.expose().as_bytes()) => Ok(()),
        _ => Err(ProxyError::ProxyAuthRequired),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The `Host` header, if given, must name the URI's authority: a second request on a
/// kept-alive connection is not sniffed. The usual case, a `Host` spelling the authority,
/// needs no parsing.
fn check_host_header(
    given: Option<&HeaderValue>,
    authority: &Authority,
    host: &str,
    port: u16,
    default_port: u16,
) -> Result<(), ProxyError> {
    let Some(h) = given else {
        return Ok(());
    };
    // Byte for byte first: clients spell Host as they spell the URI (a compare of whole
    // words, where the case-blind one goes byte by byte).
    let agrees = h.as_bytes() == authority.as_str().as_bytes()
        || h.as_bytes()
            .eq_ignore_ascii_case(authority.as_str().as_bytes())
        || h.to_str()
            .ok()
            .and_then(|h| split_authority(h, default_port))
            .is_some_and(|(hh, hp)| hh == host && hp == port);
    if !agrees {
        return Err(ProxyError::BadRequest(format!(
            "the Host header does not match the request URI authority {authority}"
        )));
    }
    Ok(())
}

fn destination(
    runtime: &Arc<crate::runtime::Runtime>,
    conn: &ConnInfo,
    req: &Request<Incoming>,
    host_header: Option<&HeaderValue>,
) -> Result<Destination, ProxyError> {
    let config = &runtime.config;
    let uri = req.uri();
    let path_and_query = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    if let Some(icpt) = &conn.intercepted {
        check_tunnel_authorities(req, host_header, icpt)?;
        return Ok(Destination {
            https: icpt.tls,
            host: Arc::clone(&icpt.host),
            port: icpt.port,
            provider: policy::match_host(config, &icpt.host, icpt.port).cloned(),
            path_and_query,
            handle: None,
            spelled: None,
            authority: None,
        });
    }
    if let Some(authority) = uri.authority() {
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(ProxyError::BadRequest(
                    "only http:// and https:// URLs can be proxied".into(),
                ))
            }
        };
        let default_port = crate::config::net::default_port(https);
        if let Some(dest) = conn
            .last_destination
            .get(runtime, https, authority, &path_and_query)
        {
            check_host_header(host_header, authority, &dest.host, dest.port, default_port)?;
            return Ok(dest);
        }
        let (host, port) = super::split_parsed_authority(authority, default_port)
            .ok_or_else(|| ProxyError::BadRequest(format!("invalid authority {authority:?}")))?;
        check_host_header(host_header, authority, &host, port, default_port)?;
        let provider = policy::match_host(config, &host, port).cloned();
        let mut dest = Destination {
            https,
            host: host.into(),
            port,
            path_and_query,
            provider,
            handle: None,
            spelled: None,
            authority: None,
        };
        if let Some(provider) = &dest.provider {
            let handle = runtime.provider(&provider.name).cloned();
            let spelled = dest.spelled_by(authority.as_str());
            conn.last_destination.set(LastDestination {
                runtime: Arc::downgrade(runtime),
                https,
                authority: authority.as_str().into(),
                host: Arc::clone(&dest.host),
                port,
                provider: Arc::clone(provider),
                handle: handle.clone(),
                spelled,
            });
            dest.handle = handle;
            dest.spelled = Some(spelled);
        }
        return Ok(dest);
    }
    let (provider, rest) = policy::match_route(config, uri.path())
        .ok_or_else(|| ProxyError::NotFound(format!("no provider route matches {}", uri.path())))?;
    let Some(upstream) = &provider.upstream else {
        return Err(ProxyError::NotFound(format!(
            "provider {} has no upstream",
            provider.name
        )));
    };
    // The base path, the rest of the route and the query, in one buffer of their size.
    let query = uri.query();
    let mut pq = String::with_capacity(
        upstream.base_path.len() + rest.len() + query.map_or(0, |q| q.len() + 1),
    );
    pq.push_str(&upstream.base_path);
    pq.push_str(rest);
    if let Some(q) = query {
        pq.push('?');
        pq.push_str(q);
    }
    Ok(Destination {
        handle: None,
        spelled: None,
        https: upstream.https,
        host: Arc::clone(&upstream.host),
        port: upstream.port,
        path_and_query: PathAndQuery::try_from(pq)
            .map_err(|_| ProxyError::BadRequest("the request URI cannot be forwarded".into()))?,
        provider: Some(provider.clone()),
        authority: Some(upstream.uri_authority.clone()),
    })
}

/// SPEC §12: a pool key for a provider whose upstream is https never travels in clear text,
/// whatever scheme the app used (an `http://` absolute-form URL, or plain HTTP inside a
/// tunnel). Providers with plain upstreams (local mocks, internal services) are unaffected.
fn refuse_clear_text_key(p: &Provider, dest: &Destination) -> Result<(), ProxyError> {
    let tls_upstream = p.upstream.as_ref().is_some_and(|u| u.https);
    if dest.https || !tls_upstream || p.keys.keys.is_empty() {
        return Ok(());
    }
    let route = p
        .route
        .as_deref()
        .map(|r| format!(" or the route {r}"))
        .unwrap_or_default();
    Err(ProxyError::BadRequest(format!(
        "provider {} is served over https and its key is never sent in clear text: use https://{route}",
        p.name
    )))
}

/// Every authority the request names (the URI's — `:authority` in h2, an absolute-form
/// target in HTTP/1.1 — and each `Host`) must name the tunnel's host and port (SPEC §12),
/// so a `Host` disagreeing with `:authority` is refused too.
fn check_tunnel_authorities(
    req: &Request<Incoming>,
    host_header: Option<&HeaderValue>,
    icpt: &super::Intercepted,
) -> Result<(), ProxyError> {
    let uri = req.uri().authority().map(|a| Ok(a.as_str()));
    let hosts = host_header.into_iter().map(|h| {
        h.to_str()
            .map_err(|_| ProxyError::BadRequest("the Host header is not valid".into()))
    });
    for given in uri.into_iter().chain(hosts) {
        let given = given?;
        if !names_tunnel(given, icpt) {
            return Err(ProxyError::Misdirected(format!(
                "request for {given} inside a tunnel to {}:{}",
                icpt.host, icpt.port
            )));
        }
    }
    Ok(())
}

/// Whether `given` names the tunnel's host and port. The usual spellings, `host` (the
/// tunnel's port implied) and `host:port`, are compared in place; any other (IPv6 brackets, a
/// port with leading zeros) is parsed.
fn names_tunnel(given: &str, icpt: &super::Intercepted) -> bool {
    let host = &*icpt.host;
    if !host.contains(':') {
        if given.eq_ignore_ascii_case(host) {
            return true;
        }
        let port = given
            .get(..host.len())
            .filter(|h| h.eq_ignore_ascii_case(host))
            .and_then(|_| given[host.len()..].strip_prefix(':'));
        if port.is_some_and(|p| p == itoa::Buffer::new().format(icpt.port)) {
            return true;
        }
    }
    split_authority(given, icpt.port).is_some_and(|(h, p)| *h == *icpt.host && p == icpt.port)
}

/// The URI to send upstream; `None` when the request's own already is exactly that (an
/// absolute-form request to a normalised authority), which is then kept as it is.
fn upstream_uri(
    dest: &Destination,
    authority: &str,
    request_uri: &Uri,
) -> Result<Option<Uri>, ProxyError> {
    let bad = |_| ProxyError::BadRequest("the request URI cannot be forwarded".into());
    let scheme = if dest.https {
        Scheme::HTTPS
    } else {
        Scheme::HTTP
    };
    if request_uri.scheme() == Some(&scheme)
        && request_uri
            .authority()
            .is_some_and(|a| a.as_str() == authority)
        && request_uri
            .path_and_query()
            .is_some_and(|pq| *pq == dest.path_and_query)
    {
        return Ok(None);
    }
    let authority = match &dest.authority {
        Some(built) if built.as_str() == authority => built.clone(),
        _ => Authority::try_from(authority).map_err(bad)?,
    };
    let pq = dest.path_and_query.clone();
    Uri::builder()
        .scheme(scheme)
        .authority(authority)
        .path_and_query(pq)
        .build()
        .map(Some)
        .map_err(|_| ProxyError::BadRequest("the request URI cannot be forwarded".into()))
}

/// Resolves `host`, refusing private destinations when asked to; returns the first address.
pub async fn resolve_checked(
    config: &Config,
    host: &str,
    port: u16,
    refuse_private: bool,
) -> Result<SocketAddr, ProxyError> {
    let addrs = crate::upstream::resolve(&config.proxy.resolve, host, port)
        .await
        .map_err(|e| ProxyError::BadGateway(format!("cannot resolve {host}: {e}")))?;
    if refuse_private {
        if let Some(bad) = addrs
            .iter()
            .find(|a| policy::is_private_destination(a.ip()))
        {
            return Err(ProxyError::Forbidden(format!(
                "{host} resolves to {}, a private or local address (proxy.allow_private_destinations = false)",
                bad.ip()
            )));
        }
    }
    addrs
        .first()
        .copied()
        .ok_or_else(|| ProxyError::BadGateway(format!("{host} has no addresses")))
}

/// Resolves (with the private check), then connects within `connect_timeout`.
pub async fn connect_tcp(
    config: &Config,
    host: &str,
    port: u16,
    refuse_private: bool,
) -> Result<TcpStream, ProxyError> {
    let addr = resolve_checked(config, host, port, refuse_private).await?;
    let timeout = config.proxy.connect_timeout;
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err(ProxyError::BadGateway(format!(
            "cannot connect to {host}:{port}: {e}"
        ))),
        Err(_) => Err(ProxyError::GatewayTimeout(format!(
            "{} (connecting to {host}:{port})",
            crate::config::format_duration(timeout)
        ))),
    }
}

/// A plain sentence for an upstream client error, with its innermost cause.
pub(super) fn describe_client_error(authority: &str, e: &crate::upstream::UpstreamError) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    if e.is_connect() {
        format!("cannot connect to upstream {authority}: {cause}")
    } else {
        format!("upstream {authority} failed: {cause}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dest(https: bool, host: &str, port: u16) -> Destination {
        Destination {
            https,
            host: host.into(),
            port,
            path_and_query: PathAndQuery::from_static("/"),
            provider: None,
            handle: None,
            spelled: None,
            authority: None,
        }
    }

    #[test]
    fn an_authority_names_the_tunnel_only_with_its_host_and_port() {
        let tunnel = |host: &str, port: u16| super::super::Intercepted {
            host: host.into(),
            port,
            client: "anonymous".into(),
            tls: true,
        };
        let cases = [
            (tunnel("api.test", 443), "api.test", true),
            (tunnel("api.test", 443), "API.Test", true),
            (tunnel("api.test", 443), "api.test:443", true),
            (tunnel("api.test", 8443), "api.test:8443", true),
            (tunnel("api.test", 8443), "api.test", true),
            (tunnel("api.test", 443), "api.test:0443", true),
            (tunnel("api.test", 443), "api.test:444", false),
            (tunnel("api.test", 443), "api.test.evil:443", false),
            (tunnel("api.test", 443), "api.testx", false),
            (tunnel("api.test", 443), "other.test", false),
            (tunnel("api.test", 443), "user@api.test", false),
            (tunnel("api.test", 443), "", false),
            (tunnel("::1", 443), "[::1]:443", true),
            (tunnel("::1", 443), "[::1]", true),
            (tunnel("::1", 443), "[::2]:443", false),
        ];
        for (icpt, given, want) in cases {
            assert_eq!(
                names_tunnel(given, &icpt),
                want,
                "{given} in {}:{}",
                icpt.host,
                icpt.port
            );
        }
    }

    #[test]
    fn an_authority_is_borrowed_only_when_it_is_spelled_as_built() {
        let cases = [
            (dest(false, "api.test", 8080), "api.test:8080", true),
            (dest(false, "api.test", 80), "api.test", true),
            (dest(true, "api.test", 443), "api.test", true),
            (dest(false, "::1", 9000), "[::1]:9000", true),
            (dest(false, "api.test", 80), "api.test:80", false),
            (dest(false, "api.test", 8080), "api.test:08080", false),
            (dest(false, "api.test", 8080), "API.test:8080", false),
            (dest(false, "api.test", 8080), "api.test:8081", false),
            (dest(false, "api.test", 8080), "api.test.:8080", false),
            (dest(false, "::1", 9000), "::1:9000", false),
        ];
        for (d, given, want) in cases {
            assert_eq!(d.spelled_by(given), want, "{given}");
            if want {
                assert_eq!(d.authority(), given, "spelled as built");
            }
        }
    }

    #[test]
    fn a_route_upstreams_authority_built_with_the_config_is_the_one_built_per_request() {
        for url in [
            "https://api.test",
            "https://API.Test:443/v1",
            "https://api.test:8443/v1/",
            "http://api.test",
            "http://127.0.0.1:9000",
            "http://[::1]:9000/base",
            "https://[::1]",
        ] {
            let up = crate::config::validate::parse_upstream(url).unwrap();
            let d = dest(up.https, &up.host, up.port);
            assert_eq!(up.uri_authority.as_str(), d.authority(), "{url}");
            assert!(d.spelled_by(up.uri_authority.as_str()), "{url}");
        }
    }
}
