//! Reading a config file: parse (serde + toml, with spans), then validate. Every error names
//! `file:line:col` and says what was expected.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use super::model::Config;
use super::raw::RawConfig;

/// A config error with its location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line and column, when the error has a place in the file.
    pub position: Option<(usize, usize)>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.position {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.file.display(), self.message)
            }
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Turns byte spans into `file:line:col` errors for one file's text.
pub struct Locator<'a> {
    pub file: &'a Path,
    pub text: &'a str,
}

impl Locator<'_> {
    pub fn at(&self, span: Option<Range<usize>>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            position: span.map(|s| line_col(self.text, s.start)),
            message: message.into(),
        }
    }
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

/// Reads, parses and validates the config at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        position: None,
        message: format!("cannot read the config file: {e}"),
    })?;
    parse(path, &text)
}

/// Parses and validates config text (`path` is used for messages and relative paths).
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let loc = Locator { file: path, text };
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let message = e.message().trim().replace('\n', " ");
        loc.at(e.span(), message)
    })?;
    super::validate::validate(raw, &loc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column() {
        let text = "a = 1\nbb = 2\n  c = x";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        assert_eq!(line_col(text, 15), (3, 3));
        assert_eq!(line_col(text, 999), (3, 8));
    }
}
