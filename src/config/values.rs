//! Scalar config values that validate while they are deserialized, so a bad value is reported
//! by `toml` with its exact span (`file:line:col`). `${VAR}` is expanded in every string here.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer};
use serde::Deserialize;

/// Expands `${VAR}` from the environment. `$${` escapes a literal `${`.
pub fn expand_env(input: &str) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find("${") {
        if rest[..pos].ends_with('$') {
            out.push_str(&rest[..pos - 1]);
            out.push_str("${");
            rest = &rest[pos + 2..];
            continue;
        }
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unterminated `${{` in {input:?}"))?;
        let name = &after[..end];
        if name.is_empty() {
            return Err("empty variable name in `${}`".into());
        }
        let value =
            std::env::var(name).map_err(|_| format!("environment variable `{name}` is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A string with `${VAR}` expanded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(d)?;
        expand_env(&raw).map(Text).map_err(de::Error::custom)
    }
}

/// Parses a value of type `T` from an expanded string, with `T::from_str`'s message as the error.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed<T>(pub T);

impl<'de, T> Deserialize<'de> for Parsed<T>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let Text(s) = Text::deserialize(d)?;
        s.parse::<T>().map(Parsed).map_err(de::Error::custom)
    }
}

/// A Redis URL (`redis://`, `rediss://` for TLS, `redis+unix://`), checked when the config is
/// read. The error never repeats the value: it may hold a password.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisUrl(pub String);

impl FromStr for RedisUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        redis::Client::open(s)
            .map(|_| RedisUrl(s.to_string()))
            .map_err(|_| {
                "not a usable Redis URL: expected redis://[user:password@]host[:port][/db], \
             rediss://... for TLS, or redis+unix:///path"
                    .to_string()
            })
    }
}

/// A duration written like `500ms`, `30s`, `1m`, `1h30m`, `2d`, `1w`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_duration(s).map(Dur)
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Parsed::<Dur>::deserialize(d).map(|p| p.0)
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", format_duration(self.0))
    }
}

/// Parses `500ms`, `30s`, `1m`, `1h30m`, `2d`, `1w`, `1.5s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad =
        || format!("expected a duration like \"500ms\", \"30s\", \"1m\" or \"1h30m\", found {s:?}");
    let s = s.trim();
    if s.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let number: f64 = rest[..num_end].parse().map_err(|_| bad())?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86_400.0,
            "w" => 604_800.0,
            _ => return Err(bad()),
        };
        total += number * scale;
        rest = &rest[unit_end..];
    }
    if !total.is_finite() || total > 1e12 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(total))
}

/// Formats a duration the way the config writes it (`1m`, `30s`, `1h30m`, `250ms`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if ms % 1000 != 0 {
        return format!("{ms}ms");
    }
    let mut secs = d.as_secs();
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        let cases = [
            ("500ms", 500),
            ("30s", 30_000),
            ("1m", 60_000),
            ("1h30m", 5_400_000),
            ("2d", 172_800_000),
            ("1.5s", 1500),
            ("1w", 604_800_000),
        ];
        for (input, ms) in cases {
            assert_eq!(
                parse_duration(input).map(|d| d.as_millis()),
                Ok(ms),
                "{input}"
            );
        }
        for bad in ["", "5", "s", "1x", "1m2", "-1s", "1e9999s"] {
            assert!(parse_duration(bad).is_err(), "{bad} should fail");
        }
    }

    #[test]
    fn durations_format_round_trip() {
        for s in ["1m", "30s", "1h30m", "250ms", "2d"] {
            let d = parse_duration(s).unwrap();
            assert_eq!(format_duration(d), s);
        }
    }

    #[test]
    fn env_expansion() {
        std::env::set_var("QP_TEST_EXPAND", "v1");
        assert_eq!(expand_env("a${QP_TEST_EXPAND}b").unwrap(), "av1b");
        assert_eq!(
            expand_env("$${QP_TEST_EXPAND}").unwrap(),
            "${QP_TEST_EXPAND}"
        );
        assert!(expand_env("${QP_TEST_UNSET_VAR_X}")
            .unwrap_err()
            .contains("QP_TEST_UNSET_VAR_X"));
        assert!(expand_env("${oops").is_err());
    }
}
