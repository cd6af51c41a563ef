//! Cost estimation before a call is sent (pure): tokens from the request body, credits from
//! route rules, USD from prices. Garbage bodies never panic; they fall back to size only.

use serde::Deserialize;
use serde_json::Value;

use crate::quota::fit::non_negative;
use crate::quota::route_cost::{glob_match, RouteAverages, RouteCost};
use crate::quota::unit::Costs;

/// USD per 1M tokens.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Price {
    /// Per 1M input tokens.
    pub input: f64,
    /// Per 1M output tokens.
    pub output: f64,
}

/// How one provider's calls are priced.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CostModel {
    /// Per-route credit rules; the first matching one wins.
    pub routes: Vec<RouteCost>,
    /// The provider's fixed `cost` in credits, used when no route rule matches.
    pub fixed_credits: Option<f64>,
    /// Prices by model name (a dated model such as `gpt-4o-mini-2024-07-18` also matches
    /// the longest configured name it starts with).
    pub prices: Vec<(String, Price)>,
    /// USD per call when the model has no price.
    pub usd_per_request: Option<f64>,
}

/// The parts of a request that matter for its cost.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestInfo<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// Path as sent upstream (route prefix stripped), without the query.
    pub path: &'a str,
    /// Query string without `?`.
    pub query: Option<&'a str>,
    /// The buffered body, when there is one.
    pub body: Option<&'a [u8]>,
}

/// An estimate, and the model it was priced for (settle needs it to price actual tokens).
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    /// Estimated costs (requests = 1).
    pub costs: Costs,
    /// The request's `model`, if the body named one.
    pub model: Option<String>,
}

/// The few fields read from a JSON body; everything else is skipped without allocating.
#[derive(Deserialize, Default)]
struct Probe {
    model: Option<Value>,
    max_tokens: Option<Value>,
    max_completion_tokens: Option<Value>,
    max_output_tokens: Option<Value>,
    #[serde(rename = "generationConfig")]
    generation_config: Option<Value>,
}

impl Probe {
    fn output_tokens(&self) -> f64 {
        let nested = self
            .generation_config
            .as_ref()
            .and_then(|g| g.get("maxOutputTokens"));
        [
            self.max_tokens.as_ref(),
            self.max_completion_tokens.as_ref(),
            self.max_output_tokens.as_ref(),
            nested,
        ]
        .into_iter()
        .flatten()
        .find_map(Value::as_f64)
        .map(non_negative)
        .unwrap_or(0.0)
    }
}

fn probe(body: &[u8]) -> Option<Probe> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first != b'{' {
        return None;
    }
    serde_json::from_slice(body).ok()
}

impl CostModel {
    /// The price of `model`: exact name first, else the longest configured prefix.
    pub fn price(&self, model: &str) -> Option<Price> {
        if let Some((_, p)) = self.prices.iter().find(|(m, _)| m == model) {
            return Some(*p);
        }
        self.prices
            .iter()
            .filter(|(m, _)| !m.is_empty() && model.starts_with(m.as_str()))
            .max_by_key(|(m, _)| m.len())
            .map(|(_, p)| *p)
    }

    /// USD of a call: tokens × price when the model has one, else `usd_per_request`.
    pub fn usd(&self, model: Option<&str>, input_tokens: f64, output_tokens: f64) -> f64 {
        match model.and_then(|m| self.price(m)) {
            Some(p) => {
                (non_negative(input_tokens) * p.input + non_negative(output_tokens) * p.output)
                    / 1e6
            }
            None => self.usd_per_request.map_or(0.0, non_negative),
        }
    }

    /// Credits of a call: the first matching route rule, else the fixed `cost`, else the
    /// route's running average (1 until seen).
    pub fn credits(&self, req: &RequestInfo<'_>, averages: &RouteAverages) -> f64 {
        if let Some(r) = self.routes.iter().find(|r| glob_match(&r.path, req.path)) {
            return r.credits.credits(req.query);
        }
        self.fixed_credits
            .map(non_negative)
            .unwrap_or_else(|| averages.get(req.path))
    }

    /// Estimates every unit of a call before it is sent.
    ///
    /// Tokens: the body's `max_tokens` | `max_completion_tokens` | `max_output_tokens` |
    /// `generationConfig.maxOutputTokens` (first found) as output, plus body bytes / 4
    /// (rounded up) as input; a body that is not a JSON object counts bytes / 4 and no
    /// output.
    pub fn estimate(&self, req: &RequestInfo<'_>, averages: &RouteAverages) -> Estimate {
        let body = req.body.unwrap_or(&[]);
        let input = body.len().div_ceil(4) as f64;
        let probe = probe(body).unwrap_or_default();
        let output = probe.output_tokens();
        let model = match probe.model {
            Some(Value::String(m)) => Some(m),
            _ => None,
        };
        let costs = Costs {
            requests: 1.0,
            tokens: input + output,
            input_tokens: input,
            output_tokens: output,
            credits: self.credits(req, averages),
            usd: self.usd(model.as_deref(), input, output),
        };
        Estimate { costs, model }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::route_cost::CreditRule;
    use proptest::prelude::*;

    fn model() -> CostModel {
        CostModel {
            routes: vec![RouteCost {
                path: "/v4/sports/*/odds".into(),
                credits: CreditRule::Product(vec!["markets".into(), "regions".into()]),
            }],
            fixed_credits: None,
            prices: vec![
                (
                    "gpt-4o-mini".into(),
                    Price {
                        input: 0.15,
                        output: 0.60,
                    },
                ),
                (
                    "gpt-4o".into(),
                    Price {
                        input: 2.5,
                        output: 10.0,
                    },
                ),
            ],
            usd_per_request: Some(0.01),
        }
    }

    fn post(body: &[u8]) -> RequestInfo<'_> {
        RequestInfo {
            method: "POST",
            path: "/v1/chat/completions",
            query: None,
            body: Some(body),
        }
    }

    #[test]
    fn token_fields_table() {
        let m = model();
        let avg = RouteAverages::new();
        let cases: &[(&str, f64)] = &[
            (r#"{"model":"gpt-4o-mini","max_tokens":100}"#, 100.0),
            (r#"{"max_completion_tokens":50,"max_tokens":7}"#, 7.0),
            (r#"{"max_completion_tokens":50}"#, 50.0),
            (r#"{"max_output_tokens":30}"#, 30.0),
            (r#"{"generationConfig":{"maxOutputTokens":20}}"#, 20.0),
            (r#"{"max_tokens":"lots"}"#, 0.0),
            (r#"{"max_tokens":-5}"#, 0.0),
            (r#"{"messages":[]}"#, 0.0),
            (r#"[1,2,3]"#, 0.0),
            ("not json at all", 0.0),
            (r#"{"max_tokens":100"#, 0.0),
            ("", 0.0),
        ];
        for (body, out) in cases {
            let e = m.estimate(&post(body.as_bytes()), &avg);
            let input = body.len().div_ceil(4) as f64;
            assert_eq!(e.costs.output_tokens, *out, "{body}");
            assert_eq!(e.costs.input_tokens, input, "{body}");
            assert_eq!(e.costs.tokens, input + out, "{body}");
            assert_eq!(e.costs.requests, 1.0);
        }
    }

    #[test]
    fn usd_from_prices_or_per_request() {
        let m = model();
        let avg = RouteAverages::new();
        let body = br#"{"model":"gpt-4o-mini-2024-07-18","max_tokens":1000}"#;
        let e = m.estimate(&post(body), &avg);
        assert_eq!(e.model.as_deref(), Some("gpt-4o-mini-2024-07-18"));
        let want = (e.costs.input_tokens * 0.15 + 1000.0 * 0.60) / 1e6;
        assert!((e.costs.usd - want).abs() < 1e-12);
        assert_eq!(m.price("gpt-4o").map(|p| p.input), Some(2.5));
        let e = m.estimate(&post(br#"{"model":"claude"}"#), &avg);
        assert_eq!(e.costs.usd, 0.01);
        assert_eq!(m.usd(None, 10.0, 10.0), 0.01);
    }

    #[test]
    fn credits_precedence() {
        let mut m = model();
        let mut avg = RouteAverages::new();
        let odds = RequestInfo {
            method: "GET",
            path: "/v4/sports/soccer/odds",
            query: Some("regions=us,uk&markets=h2h,totals"),
            body: None,
        };
        assert_eq!(m.estimate(&odds, &avg).costs.credits, 4.0);
        assert_eq!(m.estimate(&odds, &avg).costs.tokens, 0.0);
        let other = RequestInfo {
            path: "/v4/sports",
            ..odds
        };
        assert_eq!(m.credits(&other, &avg), 1.0);
        avg.observe("/v4/sports", 3.0);
        assert_eq!(m.credits(&other, &avg), 3.0);
        m.fixed_credits = Some(2.0);
        assert_eq!(m.credits(&other, &avg), 2.0);
    }

    proptest! {
        #[test]
        fn garbage_never_panics(body in prop::collection::vec(any::<u8>(), 0..512), q in ".*") {
            let m = model();
            let req = RequestInfo { method: "POST", path: "/v4/sports/x/odds", query: Some(&q), body: Some(&body) };
            let e = m.estimate(&req, &RouteAverages::new());
            prop_assert!(e.costs.tokens >= 0.0 && e.costs.credits >= 1.0 && e.costs.usd >= 0.0);
        }
    }
}
