//! The first bytes of a connection [pure]: an HTTP/2 preface, a TLS ClientHello, or an
//! HTTP/1 request head that is checked before hyper sees it, so malformed and oversized heads
//! get the proxy's JSON error instead of a bare status.

use crate::proxy::ProxyError;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// hyper's own limit for every later request on the connection (and Apache's default):
/// raising it in hyper costs a heap-allocated, filled header array on every request.
pub const MAX_HEADERS: usize = 100;

/// What the bytes read so far are.
#[derive(Debug)]
pub enum Sniff {
    /// Need more bytes.
    Partial,
    /// HTTP/2 with prior knowledge.
    H2,
    /// A TLS record (ClientHello): 0x16 0x03.
    Tls,
    /// A complete, well-formed HTTP/1 request head.
    Http1,
    /// A bad head: answer with this error and close.
    Invalid(ProxyError),
}

/// Classifies the start of a connection. `max_header_bytes` bounds an HTTP/1 head.
pub fn sniff(buf: &[u8], max_header_bytes: usize) -> Sniff {
    if buf.is_empty() {
        return Sniff::Partial;
    }
    if buf[0] == 0x16 {
        return if buf.len() < 2 {
            Sniff::Partial
        } else if buf[1] == 0x03 {
            Sniff::Tls
        } else {
            bad("not TLS or HTTP")
        };
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Sniff::H2
        } else {
            Sniff::Partial
        };
    }
    check_head(buf, max_header_bytes)
}

fn bad(msg: &str) -> Sniff {
    Sniff::Invalid(ProxyError::BadRequest(msg.to_string()))
}

/// Validates an HTTP/1 request head with httparse (the parser hyper itself uses), plus the
/// framing checks that matter for request smuggling.
pub fn check_head(buf: &[u8], max_header_bytes: usize) -> Sniff {
    // Left uninitialised: httparse fills what it parses (as hyper does), where an
    // initialised array would cost 3 KiB of writes per head.
    let mut headers =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > max_header_bytes {
                Sniff::Invalid(ProxyError::HeadersTooLarge(max_header_bytes))
            } else {
                Sniff::Partial
            };
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Sniff::Invalid(ProxyError::HeadersTooLarge(max_header_bytes));
        }
        Err(e) => return bad(&format!("malformed HTTP request head: {e}")),
    };
    if len > max_header_bytes {
        return Sniff::Invalid(ProxyError::HeadersTooLarge(max_header_bytes));
    }
    let target = req.path.unwrap_or("");
    if http::Uri::try_from(target).is_err() {
        return bad("malformed request target (URI)");
    }
    let mut content_length: Option<&[u8]> = None;
    let mut chunked = false;
    let mut last_coding: &[u8] = b"";
    let mut hosts = 0;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            if content_length.is_some_and(|v| v != h.value) {
                return bad("conflicting Content-Length headers");
            }
            if h.value.is_empty() || !h.value.iter().all(u8::is_ascii_digit) {
                return bad("Content-Length must be a number");
            }
            content_length = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
            last_coding = h
                .value
                .rsplit(|b| *b == b',')
                .next()
                .unwrap_or(b"")
                .trim_ascii();
        } else if h.name.eq_ignore_ascii_case("host") {
            hosts += 1;
        }
    }
    if chunked && content_length.is_some() {
        return bad("both Content-Length and Transfer-Encoding are set");
    }
    if hosts > 1 {
        return bad("more than one Host header");
    }
    if chunked && !last_coding.eq_ignore_ascii_case(b"chunked") {
        // RFC 9112 §6.3: a request body whose framing cannot be determined.
        return bad("Transfer-Encoding must end in chunked");
    }
    if hosts == 0 && req.version == Some(1) && req.method != Some("CONNECT") {
        return bad("an HTTP/1.1 request needs a Host header");
    }
    Sniff::Http1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(s: Sniff) -> String {
        match s {
            Sniff::Invalid(e) => format!("invalid {}", e.status().as_u16()),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn classifies_first_bytes() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "Partial"),
            (b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n", "Http1"),
            (b"GET http://a/ HTTP/1.1\r\nHost: a\r\n", "Partial"),
            (b"CONNECT a:443 HTTP/1.1\r\n\r\n", "Http1"),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "H2"),
            (b"PRI * HTTP/2", "Partial"),
            (b"\x16\x03\x01\x02\x00", "Tls"),
            (b"\x16\x01", "invalid 400"),
            (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", "invalid 400"),
            (b"G\x01T / HTTP/1.1\r\n\r\n", "invalid 400"),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "invalid 400",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
                "Http1",
            ),
            (b"GET / HTTP/1.1\r\n\r\n", "invalid 400"),
            (b"GET / HTTP/1.0\r\n\r\n", "Http1"),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                "Http1",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                "invalid 400",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
                "invalid 400",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                "invalid 400",
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                "invalid 400",
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                "invalid 400",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                kind(sniff(input, 1024)),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn oversized_heads_are_431() {
        let mut head = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
        head.extend(std::iter::repeat_n(b'a', 2000));
        assert_eq!(kind(sniff(&head, 1024)), "invalid 431");
        head.extend_from_slice(b"\r\n\r\n");
        assert_eq!(kind(sniff(&head, 1024)), "invalid 431");
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..300 {
            many.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(kind(sniff(&many, 1 << 20)), "invalid 431");
    }
}
