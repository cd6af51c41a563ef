//! In-process costs on the request path, each beside a yardstick measured in the same run:
//!
//! - `head`: the listener's first-head check (`listener::sniff`) on a typical forward-proxy
//!   request head, beside a bare `httparse` parse of the same bytes.
//! - `signals`: reading rate-limit signals from an OpenAI response's headers
//!   (`signals::from_headers`), and from headers that carry none.
//! - `leaf`: minting an intercepted host's leaf (ECDSA P-256 key, signed by the local CA,
//!   wrapped in a rustls `ServerConfig`), a leaf-cache hit, and the bare rcgen key + signature.
//! - `handshake`: the public-key work of the server's side of each new intercepted TLS 1.3
//!   connection, through ring as rustls does it: an X25519 key share (a key pair and the
//!   agreement with the client's share), beside a P-256 one, and the ECDSA P-256 signature
//!   with the leaf's key.
//! - `tap`: the usage tap over a 4 MiB OpenAI SSE stream in 16 KiB chunks (MB/s), beside a
//!   plain pass-through copy of the same chunks.
//!
//! Run: `cargo bench --bench hot_path -- --warm-up-time 1 --measurement-time 3`

use std::collections::VecDeque;
use std::hint::black_box;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use quota_proxy::listener::{sniff, Sniff};
use quota_proxy::signals::{from_headers, Family, TapConfig, UsageFormat, UsageTap};
use quota_proxy::tls::{leaf, CaFiles, CertificateAuthority, LeafCache};

const HEAD: &[u8] = b"POST http://api.openai.com/v1/chat/completions HTTP/1.1\r\n\
Host: api.openai.com\r\n\
User-Agent: OpenAI/Python 1.54.0\r\n\
Accept: application/json\r\n\
Accept-Encoding: gzip, deflate\r\n\
Content-Type: application/json\r\n\
Authorization: Bearer sk-bench-0000000000000000000000000000000000000000\r\n\
X-Stainless-Lang: python\r\n\
X-Stainless-Package-Version: 1.54.0\r\n\
Connection: keep-alive\r\n\
Content-Length: 142\r\n\r\n";

fn head(c: &mut Criterion) {
    let mut g = c.benchmark_group("head");
    g.throughput(Throughput::Elements(1));
    g.bench_function("sniff_check", |b| {
        b.iter(|| match sniff(black_box(HEAD), 64 * 1024) {
            Sniff::Http1 => {}
            other => panic!("head rejected: {other:?}"),
        })
    });
    g.bench_function("httparse_only", |b| {
        b.iter(|| {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(black_box(HEAD)) {
                Ok(httparse::Status::Complete(n)) => n,
                other => panic!("httparse: {other:?}"),
            }
        })
    });
    g.finish();
}

fn openai_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("content-type", "application/json"),
        ("x-ratelimit-limit-requests", "10000"),
        ("x-ratelimit-limit-tokens", "2000000"),
        ("x-ratelimit-remaining-requests", "9999"),
        ("x-ratelimit-remaining-tokens", "1999100"),
        ("x-ratelimit-reset-requests", "6ms"),
        ("x-ratelimit-reset-tokens", "27ms"),
        ("openai-processing-ms", "412"),
        ("x-request-id", "req_0123456789abcdef"),
    ] {
        h.append(k, HeaderValue::from_static(v));
    }
    h
}

fn signals(c: &mut Criterion) {
    let now = 1_800_000_000_000_000u64;
    let with = openai_headers();
    let mut without = HeaderMap::new();
    without.insert("content-type", HeaderValue::from_static("application/json"));
    let fams = [Family::OpenAi];
    let mut g = c.benchmark_group("signals");
    g.throughput(Throughput::Elements(1));
    g.bench_function("openai_headers", |b| {
        b.iter(|| {
            let s = from_headers(&fams, &[], 200, black_box(&with), now);
            assert!(!s.is_empty());
            s
        })
    });
    g.bench_function("no_signal_headers", |b| {
        b.iter(|| from_headers(&fams, &[], 200, black_box(&without), now))
    });
    g.finish();
}

fn bench_ca() -> (tempfile::TempDir, Arc<CertificateAuthority>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let files = CaFiles {
        cert: dir.path().join("ca.crt"),
        key: dir.path().join("ca.key"),
    };
    quota_proxy::tls::create(&files, false, &[]).expect("create CA");
    let ca = CertificateAuthority::load(&files.cert, &files.key).expect("load CA");
    (dir, Arc::new(ca))
}

fn leaves(c: &mut Criterion) {
    let (_dir, ca) = bench_ca();
    let issuer_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
    let issuer = rcgen::CertificateParams::new(vec!["bench ca".to_string()])
        .expect("params")
        .self_signed(&issuer_key)
        .expect("self-signed");
    let mut g = c.benchmark_group("leaf");
    g.throughput(Throughput::Elements(1));
    g.bench_function("mint_server_config", |b| {
        b.iter(|| leaf::server_config(&ca, black_box("api.openai.com")).expect("mint"))
    });
    g.bench_function("rcgen_p256_key_and_sign", |b| {
        b.iter(|| {
            let key =
                rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("leaf key");
            let params = leaf::leaf_params("api.openai.com", time::OffsetDateTime::now_utc())
                .expect("params");
            params.signed_by(&key, &issuer, &issuer_key).expect("sign")
        })
    });
    let cache = LeafCache::new(ca.clone(), 1024, Duration::from_secs(3600));
    cache.get("api.openai.com").expect("first mint");
    g.bench_function("cache_hit", |b| {
        b.iter(|| cache.get(black_box("api.openai.com")).expect("hit"))
    });
    g.finish();
}

fn handshake(c: &mut Criterion) {
    use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey};
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
    let rng = SystemRandom::new();
    let mut g = c.benchmark_group("handshake");
    g.throughput(Throughput::Elements(1));
    for (name, alg) in [
        ("x25519_key_share", &agreement::X25519),
        ("p256_key_share", &agreement::ECDH_P256),
    ] {
        let client = EphemeralPrivateKey::generate(alg, &rng).expect("client key");
        let client_share = client.compute_public_key().expect("client share");
        g.bench_function(name, |b| {
            b.iter(|| {
                let ours = EphemeralPrivateKey::generate(alg, &rng).expect("key");
                let share = ours.compute_public_key().expect("share");
                black_box(share.as_ref());
                let peer = UnparsedPublicKey::new(alg, client_share.as_ref());
                agreement::agree_ephemeral(ours, &peer, |secret| secret[0]).expect("agreement")
            })
        });
    }
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("pkcs8");
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
        .expect("leaf key");
    let transcript = [0x20u8; 130];
    g.bench_function("leaf_signature", |b| {
        b.iter(|| key.sign(&rng, black_box(&transcript)).expect("signature"))
    });
    g.finish();
}

/// A body that yields prepared chunks, ready at once.
struct Chunks(VecDeque<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Polls `body` to its end, copying every data frame into `out` (as a socket write would
/// copy it into the kernel). Returns the bytes seen.
fn drain<B: Body<Data = Bytes> + Unpin>(mut body: B, out: &mut Vec<u8>) -> usize
where
    B::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    out.clear();
    loop {
        match Pin::new(&mut body).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    out.extend_from_slice(&data);
                }
            }
            Poll::Ready(Some(Err(e))) => panic!("body error: {e:?}"),
            Poll::Ready(None) => return out.len(),
            Poll::Pending => panic!("bench body pending"),
        }
    }
}

/// An OpenAI chat completion stream of about `size` bytes with a final usage-only event,
/// cut into `chunk`-byte pieces (cuts fall inside events, as on the wire).
fn sse_stream(size: usize, chunk: usize) -> Vec<Bytes> {
    let mut s = String::with_capacity(size + 1024);
    let mut i = 0;
    while s.len() < size {
        s.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1800000000,\
\"model\":\"gpt-4o-mini\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"token {i} \"}},\
\"finish_reason\":null}}]}}\n\n"
        ));
        i += 1;
    }
    s.push_str(
        "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"model\":\"gpt-4o-mini\",\
\"choices\":[],\"usage\":{\"prompt_tokens\":17,\"completion_tokens\":900,\"total_tokens\":917}}\n\n\
data: [DONE]\n\n",
    );
    let all = Bytes::from(s);
    (0..all.len())
        .step_by(chunk)
        .map(|at| all.slice(at..(at + chunk).min(all.len())))
        .collect()
}

fn tap(c: &mut Criterion) {
    let chunk = 16 * 1024;
    let chunks = sse_stream(4 << 20, chunk);
    let total: usize = chunks.iter().map(Bytes::len).sum();
    let mut headers = HeaderMap::new();
    headers.insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    let config = TapConfig::for_response(UsageFormat::OpenAi, &headers);
    let mut out = Vec::with_capacity(total + 1024);
    let mut g = c.benchmark_group("tap");
    g.throughput(Throughput::Bytes(total as u64));
    g.sample_size(20);
    g.bench_with_input(
        BenchmarkId::new("plain_copy", "4MiB_sse"),
        &chunks,
        |b, ch| {
            b.iter(|| {
                let n = drain(Chunks(ch.iter().cloned().collect()), &mut out);
                assert_eq!(n, total);
            })
        },
    );
    g.bench_with_input(
        BenchmarkId::new("usage_tap", "4MiB_sse"),
        &chunks,
        |b, ch| {
            b.iter(|| {
                let seen = Arc::new(std::sync::Mutex::new(None));
                let s = seen.clone();
                let body = UsageTap::new(Chunks(ch.iter().cloned().collect()), config.clone(), {
                    move |o| *s.lock().unwrap_or_else(|p| p.into_inner()) = Some(o)
                });
                let n = drain(body, &mut out);
                assert_eq!(n, total);
                let outcome = seen.lock().expect("lock").take().expect("outcome");
                let usage = outcome.usage.expect("usage read");
                assert_eq!(usage.output_tokens, 900);
            })
        },
    );
    g.finish();
}

criterion_group!(benches, head, signals, leaves, handshake, tap);
criterion_main!(benches);
