//! Every ready-made config under `examples/configs/` and the default config pass
//! `quota-proxy check`, with placeholder values for the keys they name.

use std::path::Path;
use std::process::Command;

fn check(path: &Path) -> (bool, String) {
    let text = std::fs::read_to_string(path).expect("readable config");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_quota-proxy"));
    cmd.arg("check").arg("-c").arg(path);
    // Every `env = "NAME"` the file names gets a placeholder value.
    for line in text.lines() {
        for part in line.split("env = \"").skip(1) {
            if let Some(name) = part.split('"').next() {
                cmd.env(name, "placeholder-key");
            }
        }
    }
    let out = cmd.output().expect("run quota-proxy check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn example_configs_pass_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/configs");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/configs exists") {
        let path = entry.expect("dir entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let (ok, text) = check(&path);
            assert!(ok, "{} failed check:\n{text}", path.display());
            assert!(
                !text.contains("placeholder-key"),
                "check must not print key values:\n{text}"
            );
            seen += 1;
        }
    }
    assert!(seen >= 6, "expected the six example configs, found {seen}");
}

#[test]
fn default_config_passes_check() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/quota-proxy.toml");
    let (ok, text) = check(&path);
    assert!(ok, "default config failed check:\n{text}");
    for provider in ["openai", "anthropic", "gemini"] {
        assert!(text.contains(&format!("provider {provider}")), "{text}");
    }
}
