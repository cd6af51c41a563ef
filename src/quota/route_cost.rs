//! Credits known before a call is sent: per-route rules (`path` glob, `credits` a number or
//! a product of query-parameter value counts) and a running average of what each route
//! actually cost.

use std::collections::HashMap;
use std::str::FromStr;

use crate::quota::fit::non_negative;

/// How many credits a matching route costs.
#[derive(Debug, Clone, PartialEq)]
pub enum CreditRule {
    /// A fixed number.
    Fixed(f64),
    /// The product of the counts of comma-separated values of these query parameters
    /// (`"markets * regions"`); a missing or empty parameter counts 1.
    Product(Vec<String>),
}

/// A `credits` expression that is neither a number nor `name * name ...`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid credits expression {0:?} (expected a number or query parameter names joined by `*`)"
)]
pub struct InvalidCreditRule(pub String);

impl FromStr for CreditRule {
    type Err = InvalidCreditRule;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidCreditRule(s.to_string());
        if let Ok(n) = s.trim().parse::<f64>() {
            return if n.is_finite() && n >= 0.0 {
                Ok(CreditRule::Fixed(n))
            } else {
                Err(invalid())
            };
        }
        let names: Vec<String> = s.split('*').map(|p| p.trim().to_string()).collect();
        let valid = |n: &String| {
            !n.is_empty()
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '[' | ']'))
        };
        if names.iter().all(valid) {
            Ok(CreditRule::Product(names))
        } else {
            Err(invalid())
        }
    }
}

impl CreditRule {
    /// Credits for a call with this query string.
    pub fn credits(&self, query: Option<&str>) -> f64 {
        match self {
            CreditRule::Fixed(n) => *n,
            CreditRule::Product(names) => names
                .iter()
                .map(|n| param_value_count(query.unwrap_or(""), n) as f64)
                .product(),
        }
    }
}

/// One `[[providers.X.costs]]` rule.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteCost {
    /// Path glob: `*` matches exactly one non-empty segment.
    pub path: String,
    /// Credits of a matching call.
    pub credits: CreditRule,
}

/// Whether `path` matches `pattern` segment by segment (`*` = one non-empty segment).
pub fn glob_match(pattern: &str, path: &str) -> bool {
    let mut p = pattern.split('/');
    let mut s = path.split('/');
    loop {
        match (p.next(), s.next()) {
            (None, None) => return true,
            (Some("*"), Some(seg)) if !seg.is_empty() => {}
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

/// Comma-separated values of `name` in `query` (also `%2C`), summed over repeats;
/// 1 when missing or empty.
pub fn param_value_count(query: &str, name: &str) -> u64 {
    let mut count = 0u64;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != name || value.is_empty() {
            continue;
        }
        let commas = value.matches(',').count()
            + value.matches("%2C").count()
            + value.matches("%2c").count();
        count = count.saturating_add(commas as u64 + 1);
    }
    count.max(1)
}

/// Most routes tracked; later routes share one overall average.
const MAX_ROUTES: usize = 1024;
/// Weight of a new observation in the moving average.
const ALPHA: f64 = 0.25;

/// Exponential moving average of actual credits per route (the first observation sets it;
/// 1 until a route is seen). Bounded: past 1024 routes, new ones share one average.
#[derive(Debug, Clone, Default)]
pub struct RouteAverages {
    routes: HashMap<String, f64>,
    overall: Option<f64>,
}

impl RouteAverages {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The estimate for `route`.
    pub fn get(&self, route: &str) -> f64 {
        self.routes
            .get(route)
            .copied()
            .or(self.overall)
            .unwrap_or(1.0)
    }

    /// Records what a call on `route` actually cost (negative or NaN ignored).
    pub fn observe(&mut self, route: &str, actual: f64) {
        if !(actual >= 0.0 && actual.is_finite()) {
            return;
        }
        let blend = |old: Option<f64>| old.map_or(actual, |o| o + ALPHA * (actual - o));
        self.overall = Some(blend(self.overall));
        if let Some(v) = self.routes.get_mut(route) {
            *v = blend(Some(*v));
        } else if self.routes.len() < MAX_ROUTES {
            self.routes.insert(route.to_string(), non_negative(actual));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse() {
        assert_eq!("3".parse(), Ok(CreditRule::Fixed(3.0)));
        assert_eq!(
            "markets * regions".parse(),
            Ok(CreditRule::Product(vec![
                "markets".into(),
                "regions".into()
            ]))
        );
        for bad in ["", "-1", "a * ", "a + b", "NaN", "inf", "a**b"] {
            assert!(bad.parse::<CreditRule>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn globs() {
        let cases = [
            ("/v4/sports/*/odds", "/v4/sports/soccer_epl/odds", true),
            ("/v4/sports/*/odds", "/v4/sports//odds", false),
            ("/v4/sports/*/odds", "/v4/sports/a/b/odds", false),
            ("/v4/sports/*/odds", "/v4/sports/a/odds/", false),
            ("/search", "/search", true),
            ("/search", "/searches", false),
            ("*", "", false),
        ];
        for (p, s, want) in cases {
            assert_eq!(glob_match(p, s), want, "{p} vs {s}");
        }
    }

    #[test]
    fn odds_api_credits() {
        let rule: CreditRule = "markets * regions"
            .parse()
            .unwrap_or(CreditRule::Fixed(0.0));
        let cases = [
            (
                Some("regions=us,uk&markets=h2h,spreads,totals&apiKey=x"),
                6.0,
            ),
            (Some("regions=us%2Cuk%2ceu&markets=h2h"), 3.0),
            (Some("regions=us&regions=uk"), 2.0),
            (Some("markets=&regions=us"), 1.0),
            (Some("garbage&&=&==,"), 1.0),
            (None, 1.0),
        ];
        for (q, want) in cases {
            assert_eq!(rule.credits(q), want, "{q:?}");
        }
        assert_eq!(CreditRule::Fixed(2.5).credits(None), 2.5);
    }

    #[test]
    fn running_average() {
        let mut a = RouteAverages::new();
        assert_eq!(a.get("/search"), 1.0);
        a.observe("/search", 2.0);
        assert_eq!(a.get("/search"), 2.0);
        a.observe("/search", 6.0);
        assert_eq!(a.get("/search"), 3.0);
        a.observe("/search", f64::NAN);
        a.observe("/search", -5.0);
        assert_eq!(a.get("/search"), 3.0);
        assert_eq!(a.get("/extract"), a.overall.unwrap_or(0.0));
        for i in 0..(MAX_ROUTES + 10) {
            a.observe(&format!("/r{i}"), 1.0);
        }
        assert_eq!(a.routes.len(), MAX_ROUTES);
    }
}
