//! The floor for the comparison benchmark (`benches/compare.sh`): the least a forward proxy
//! built on the crates quota-proxy is built on (tokio, hyper 1's HTTP/1.1 server and client
//! connections, hyper-util) does per request, and nothing else: no configuration, no policy,
//! no quota, no header rewriting, no metrics, no timeouts. It runs on one thread (tokio's
//! current-thread scheduler, as quota-proxy does with one worker). Its CPU per request beside nginx's says what the hyper stack alone costs on
//! the machine; quota-proxy's beside it, what quota-proxy adds.
//!
//! ```text
//! cargo build --release --example bare_proxy
//! target/release/examples/bare_proxy --listen 127.0.0.1:0
//! curl -x http://ADDR http://127.0.0.1:9000/
//! ```
//!
//! Prints `listening ADDR` on stdout once bound. Serves absolute-form HTTP/1.1 requests
//! (`http://` only) over a pool of upstream connections shared by every client connection:
//! a request takes the newest free connection to its authority (a new one if none is free),
//! and puts it back as soon as the request is handed to it, as quota-proxy's pool does. Not a
//! product: errors end the request with 502 and nothing more; closed connections are dropped when a
//! request meets them.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use clap::Parser;
use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// The allocator quota-proxy uses, so the two differ in their code and not in malloc's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Body = http_body_util::combinators::BoxBody<bytes::Bytes, hyper::Error>;

#[derive(Parser)]
#[command(
    name = "bare_proxy",
    about = "Minimal hyper forward proxy (benchmark floor)"
)]
struct Args {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

/// The upstream connections: authority and sender, newest last.
type Pool = Arc<Mutex<Vec<(Authority, http1::SendRequest<Incoming>)>>>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("bind {}", args.listen))?;
    println!("listening {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let pool = Pool::default();
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let pool = pool.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| forward(req, pool.clone()));
            // A client that goes away mid-request is the usual end of a benchmark run.
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("client connection: {e}");
            }
        });
    }
}

async fn forward(mut req: Request<Incoming>, pool: Pool) -> Result<Response<Body>, hyper::Error> {
    let Some(authority) = req.uri().authority().cloned() else {
        return Ok(bad_gateway());
    };
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(path);
    let free = {
        let mut pool = pool.lock().unwrap();
        let mut i = pool.len();
        let mut free = None;
        while i > 0 {
            i -= 1;
            let (a, s) = &pool[i];
            if s.is_closed() {
                pool.swap_remove(i);
            } else if s.is_ready() && *a == authority {
                free = Some(pool.swap_remove(i).1);
                break;
            }
        }
        free
    };
    let mut sender = match free {
        Some(s) => s,
        None => match connect(&authority).await {
            Ok(s) => s,
            Err(_) => return Ok(bad_gateway()),
        },
    };
    let response = sender.send_request(req);
    // Busy until the response is read: a request takes it once it is free again.
    pool.lock().unwrap().push((authority, sender));
    match response.await {
        Ok(resp) => Ok(resp.map(BodyExt::boxed)),
        Err(_) => Ok(bad_gateway()),
    }
}

async fn connect(authority: &Authority) -> anyhow::Result<http1::SendRequest<Incoming>> {
    let port = authority.port_u16().unwrap_or(80);
    let stream = TcpStream::connect((authority.host(), port)).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

fn bad_gateway() -> Response<Body> {
    let mut resp = Response::new(Empty::new().map_err(|never| match never {}).boxed());
    *resp.status_mut() = StatusCode::BAD_GATEWAY;
    resp
}
