//! The listener's first-bytes check: HTTP/2 preface, TLS, or an HTTP/1 head validated with
//! httparse plus the request-smuggling checks (`quota_proxy::listener::sniff`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use quota_proxy::listener::{sniff, Sniff};

fuzz_target!(|data: &[u8]| {
    // Small and default limits: both the "too large" and the parsing paths.
    for max in [64, 65536] {
        match sniff(data, max) {
            Sniff::Invalid(err) => {
                let status = err.status().as_u16();
                assert!((400..500).contains(&status), "bad head answered {status}");
            }
            Sniff::Partial | Sniff::H2 | Sniff::Tls | Sniff::Http1 => {}
        }
    }
});
