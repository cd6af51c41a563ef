//! The `check` command: validates a config, prints providers, or names `file:line:col`.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;

use support::*;

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts the output names `file:line:COL` (any column) and says something beyond it.
fn assert_names_position(text: &str, file: &str, line: usize) {
    let needle = format!("{file}:{line}:");
    let at = text
        .find(&needle)
        .unwrap_or_else(|| panic!("expected {needle}COL in output:\n{text}"));
    let rest = &text[at + needle.len()..];
    let col: String = rest.chars().take_while(char::is_ascii_digit).collect();
    assert!(
        !col.is_empty(),
        "no column after {needle} in output:\n{text}"
    );
    let words = text
        .split_whitespace()
        .filter(|w| w.chars().all(char::is_alphabetic))
        .count();
    assert!(
        words >= 3,
        "expected a plain sentence explaining the error:\n{text}"
    );
}

/// Runs `check` on `cfg` written as `name`; asserts it fails naming the first line that
/// starts with `at`, and returns its output.
fn check_fails_at(name: &str, cfg: &str, at: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let line = cfg.lines().position(|l| l.starts_with(at)).unwrap() + 1;
    let file = write(dir.path(), name, cfg);

    let out = run_cli(&["check", "-c", &file], dir.path());

    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert_names_position(&text, &file, line);
    text
}

fn valid_config() -> String {
    ConfigBuilder::new()
        .resolve(MOCK_HOST, "127.0.0.1")
        .simple_provider("mock", MOCK_HOST, "http://api.mock.test:9")
        .simple_provider("other", "*.other.test", "https://api.other.test")
        .build()
}

#[test]
fn check_accepts_a_valid_config_and_prints_each_provider() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "ok.toml", &valid_config());

    let out = run_cli(&["check", "-c", &file], dir.path());

    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for expected in ["mock", MOCK_HOST, "other", "*.other.test"] {
        assert!(
            text.contains(expected),
            "`check` output lacks {expected:?}:\n{text}"
        );
    }
}

#[test]
fn check_rejects_an_unknown_key_with_its_position() {
    let cfg = valid_config().replacen("[proxy]\n", "[proxy]\nlisten_typo = 1\n", 1);
    let text = check_fails_at("unknown.toml", &cfg, "listen_typo");
    assert!(
        text.contains("listen_typo"),
        "the unknown key is named:\n{text}"
    );
}

#[test]
fn check_rejects_a_bad_duration_with_its_position() {
    let cfg = valid_config().replacen("[proxy]\n", "[proxy]\ndrain_timeout = \"30 parsecs\"\n", 1);
    check_fails_at("duration.toml", &cfg, "drain_timeout");
}

#[test]
fn check_rejects_a_limit_name_the_ratelimit_headers_cannot_quote() {
    let cfg = format!(
        "{}\n[[providers.mock.limits]]\nname = \"per \\\"minute\\\"\"\nunit = \"requests\"\namount = 10\nwindow = \"1m\"\n",
        valid_config()
    );
    let text = check_fails_at("name.toml", &cfg, "[[providers.mock.limits]]");
    assert!(
        text.contains("printable ASCII"),
        "the rule is named:\n{text}"
    );

    let dir = tempfile::tempdir().unwrap();
    let ok = cfg.replace("per \\\"minute\\\"", "per-minute");
    let file = write(dir.path(), "name-ok.toml", &ok);
    let out = run_cli(&["check", "-c", &file], dir.path());
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
}

#[test]
fn run_with_an_invalid_config_exits_1_without_serving() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = valid_config().replacen("[proxy]\n", "[proxy]\nunmatched = \"maybe\"\n", 1);
    let line = cfg
        .lines()
        .position(|l| l.starts_with("unmatched"))
        .unwrap()
        + 1;
    let file = write(dir.path(), "bad.toml", &cfg);

    let out = run_cli(&["run", "-c", &file], dir.path());

    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(!text.contains("quota-proxy listening"), "{text}");
    assert_names_position(&text, &file, line);
}
