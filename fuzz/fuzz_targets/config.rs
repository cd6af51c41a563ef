//! The config loader: TOML parsing, validation and `${VAR}` expansion
//! (`quota_proxy::config::parse`), which must answer every input with a config or an error.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The loader reads key files (`file = "..."`): keep the fuzzer away from /dev and friends.
    if text.contains("file") {
        return;
    }
    let _ = quota_proxy::config::parse(std::path::Path::new("fuzz.toml"), text);
});
