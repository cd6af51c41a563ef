//! Table tests for [`from_body`] and the usage shapes, on bodies as the providers send them.

use proptest::prelude::*;

use crate::signals::*;

const NOW: Micros = 1_712_340_000_000_000;
const S: u64 = 1_000_000;

fn body(families: &[Family], status: u16, text: &str) -> Signals {
    let mut s = from_headers(families, &[], status, &http::HeaderMap::new(), NOW);
    from_body(families, &[], status, text.as_bytes(), NOW, &mut s);
    s
}

#[test]
fn openai_error_codes() {
    let rate = r#"{"error":{"message":"Rate limit reached for gpt-4o-mini in organization org-x on tokens per min (TPM): Limit 200000, Used 199000, Requested 2000. Please try again in 300ms.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#;
    let quota = r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
    let key = r#"{"error":{"message":"Incorrect API key provided: sk-abc.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
    let cases = [
        (429, rate, Some(Verdict::RateLimited)),
        (429, quota, Some(Verdict::OutOfCredit)),
        (401, key, Some(Verdict::Invalid)),
        (
            429,
            "<html>Too Many Requests</html>",
            Some(Verdict::RateLimited),
        ),
        (200, quota, None), // success bodies are not error bodies
    ];
    for (status, text, want) in cases {
        assert_eq!(
            body(&[Family::OpenAi], status, text).verdict,
            want,
            "{text}"
        );
    }
}

#[test]
fn anthropic_error_types() {
    let cases = [
        (
            429,
            r#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"}}"#,
            Some(Verdict::RateLimited),
        ),
        (
            400,
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade or purchase credits."}}"#,
            Some(Verdict::OutOfCredit),
        ),
        (
            401,
            r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
            Some(Verdict::Invalid),
        ),
        (
            529,
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            None,
        ),
    ];
    for (status, text, want) in cases {
        assert_eq!(
            body(&[Family::Anthropic], status, text).verdict,
            want,
            "{text}"
        );
    }
}

#[test]
fn gemini_retry_info_and_quota_failure() {
    let text = r#"{
      "error": {
        "code": 429,
        "message": "You exceeded your current quota, please check your plan and billing details.",
        "status": "RESOURCE_EXHAUSTED",
        "details": [
          {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
           "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                           "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
                           "quotaDimensions": {"location": "global", "model": "gemini-2.0-flash"},
                           "quotaValue": "200"}]},
          {"@type": "type.googleapis.com/google.rpc.Help",
           "links": [{"description": "Learn more", "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
          {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12s"}
        ]
      }
    }"#;
    let s = body(&[Family::Gemini], 429, text);
    assert_eq!(s.verdict, Some(Verdict::RateLimited));
    assert_eq!(s.retry_after, Some(NOW + 12 * S));
    let array = format!("[{}]", text.replace("\"12s\"", "\"0.5s\""));
    assert_eq!(
        body(&[Family::Gemini], 429, &array).retry_after,
        Some(NOW + S / 2)
    );
    let bad = body(
        &[Family::Gemini],
        429,
        &text.replace("\"12s\"", "\"12 parsecs\""),
    );
    assert_eq!((bad.retry_after, bad.malformed), (None, 1));
    let key = r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}"#;
    assert_eq!(
        body(&[Family::Gemini], 400, key).verdict,
        Some(Verdict::Invalid)
    );
}

#[test]
fn odds_api_error_codes() {
    let s = body(
        &[Family::OddsApi],
        401,
        r#"{"message":"Usage quota has been reached.","error_code":"OUT_OF_USAGE_CREDITS","details_url":"https://the-odds-api.com/liveapi/guides/v4/api-error-codes.html#out-of-usage-credits"}"#,
    );
    assert_eq!(s.verdict, Some(Verdict::OutOfCredit));
    let s = body(
        &[Family::OddsApi],
        429,
        r#"{"message":"Requests are being sent too frequently.","error_code":"EXCEEDED_FREQ_LIMIT"}"#,
    );
    assert_eq!(s.verdict, Some(Verdict::RateLimited));
}

#[test]
fn keepa_token_fields() {
    let ok = r#"{"timestamp":1712340000000,"tokensLeft":1199,"refillIn":42000,"refillRate":20,"tokenFlowReduction":0.0,"tokensConsumed":1,"processingTimeInMs":3,"products":[{"asin":"B00X"}]}"#;
    let s = body(&[Family::Keepa], 200, ok);
    let c = s.unit(SignalUnit::Credits).unwrap();
    assert_eq!(
        (c.remaining, c.limit, c.reset_at),
        (Some(1199.0), Some(1200.0), None)
    );
    assert_eq!(s.cost, Some(1.0));

    // Negative balance: 45 tokens short at 20/min takes 3 refills: the next plus two more.
    let short = r#"{"tokensLeft":-45,"refillIn":5000,"refillRate":20,"tokensConsumed":60}"#;
    let s = body(&[Family::Keepa], 200, short);
    let c = s.unit(SignalUnit::Credits).unwrap();
    assert_eq!(
        (c.remaining, c.reset_at),
        (Some(-45.0), Some(NOW + 125 * S))
    );
    assert_eq!(s.cooling_until(), Some(NOW + 125 * S));

    let zero = r#"{"tokensLeft":0,"refillIn":1500,"refillRate":5}"#;
    let s = body(&[Family::Keepa], 429, zero);
    assert_eq!(
        s.unit(SignalUnit::Credits).unwrap().reset_at,
        Some(NOW + 1_500_000)
    );
    assert_eq!(
        (s.verdict, s.retry_after),
        (Some(Verdict::RateLimited), Some(NOW + 1_500_000))
    );

    let wrong = body(&[Family::Keepa], 200, r#"{"tokensLeft":"many"}"#);
    assert_eq!((wrong.units.len(), wrong.malformed), (0, 1));
    assert_eq!(body(&[Family::Keepa], 200, "<html/>").malformed, 0);
}

#[test]
fn custom_json_pointers() {
    let m = |pointer: &str, field, format| CustomSignal {
        source: Source::Json(pointer.into()),
        field,
        unit: SignalUnit::Credits,
        format,
    };
    let mappings = vec![
        m("/usage/credits_left", Field::Remaining, Format::Number),
        m("/usage/reset", Field::Reset, Format::Rfc3339),
        m("/cost", Field::Cost, Format::Number),
        m("/missing", Field::Limit, Format::Number),
        m("/usage/weird", Field::Limit, Format::Number),
    ];
    let text =
        r#"{"cost":"3","usage":{"credits_left":97,"reset":"2024-04-05T18:10:00Z","weird":[1]}}"#;
    let mut s = Signals::default();
    from_body(&[], &mappings, 200, text.as_bytes(), NOW, &mut s);
    let c = s.unit(SignalUnit::Credits).unwrap();
    assert_eq!(
        (c.remaining, c.reset_at, c.limit),
        (Some(97.0), Some(NOW + 600 * S), None)
    );
    assert_eq!((s.cost, s.malformed), (Some(3.0), 1));
}

#[test]
fn usage_shapes() {
    type Want = Option<(u64, u64, Option<&'static str>)>;
    let cases: &[(UsageFormat, &str, Want)] = &[
        (
            UsageFormat::OpenAi,
            r#"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o-mini-2024-07-18","choices":[],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":0}}}"#,
            Some((19, 10, Some("gpt-4o-mini-2024-07-18"))),
        ),
        (
            UsageFormat::OpenAi,
            r#"{"id":"resp_1","object":"response","model":"gpt-4.1","output":[],"usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":0},"output_tokens":87,"total_tokens":123}}"#,
            Some((36, 87, Some("gpt-4.1"))),
        ),
        (
            UsageFormat::OpenAi,
            r#"{"object":"list","data":[],"model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}}"#,
            Some((8, 0, Some("text-embedding-3-small"))),
        ),
        (UsageFormat::OpenAi, r#"{"error":{"code":"x"}}"#, None),
        (
            UsageFormat::Anthropic,
            r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-20250514","content":[],"stop_reason":"end_turn","usage":{"input_tokens":2095,"cache_creation_input_tokens":100,"cache_read_input_tokens":5,"output_tokens":503}}"#,
            Some((2200, 503, Some("claude-sonnet-4-20250514"))),
        ),
        (
            UsageFormat::Gemini,
            r#"{"candidates":[],"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":12,"thoughtsTokenCount":30,"totalTokenCount":46},"modelVersion":"gemini-2.5-flash"}"#,
            Some((4, 42, Some("gemini-2.5-flash"))),
        ),
        (
            UsageFormat::Gemini,
            r#"[{"usageMetadata":{"promptTokenCount":4}},{"usageMetadata":{"promptTokenCount":4,"candidatesTokenCount":9}}]"#,
            Some((4, 9, None)),
        ),
        (UsageFormat::OpenAi, "not json", None),
        (
            UsageFormat::Anthropic,
            r#"{"usage":{"input_tokens":"x"}}"#,
            None,
        ),
    ];
    for (format, text, want) in cases {
        let got = usage_from_json(format, text.as_bytes())
            .map(|u| (u.input_tokens, u.output_tokens, u.model));
        let want = want.map(|(i, o, m)| (i, o, m.map(str::to_string)));
        assert_eq!(got, want, "{text}");
    }
    let keepa = usage_from_json(
        &UsageFormat::Keepa,
        br#"{"tokensConsumed":5,"tokensLeft":3}"#,
    );
    assert_eq!(keepa.unwrap().credits, Some(5.0));
    let custom = UsageFormat::Custom(vec![
        ("/meta/in".into(), UsageField::InputTokens),
        ("/meta/out".into(), UsageField::OutputTokens),
        ("/meta/model".into(), UsageField::Model),
        ("/meta/credits".into(), UsageField::Credits),
    ]);
    let u = usage_from_json(
        &custom,
        br#"{"meta":{"in":3,"out":4.0,"model":"m","credits":"1.5"}}"#,
    )
    .unwrap();
    assert_eq!(
        u,
        Usage {
            input_tokens: 3,
            output_tokens: 4,
            model: Some("m".into()),
            credits: Some(1.5)
        }
    );
}

proptest! {
    #[test]
    fn garbage_bodies_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200), status in 100u16..600) {
        let mut s = Signals::default();
        let custom = vec![CustomSignal {
            source: Source::Json("/a/0".into()),
            field: Field::Reset,
            unit: SignalUnit::Tokens,
            format: Format::Rfc3339,
        }];
        from_body(&Family::ALL, &custom, status, &bytes, NOW, &mut s);
        for format in [UsageFormat::OpenAi, UsageFormat::Anthropic, UsageFormat::Gemini, UsageFormat::Keepa] {
            let _ = usage_from_json(&format, &bytes);
        }
    }
}

#[test]
fn usage_formats_that_report_credits() {
    let custom = |f: UsageField| UsageFormat::Custom(vec![("/usage/x".into(), f)]);
    let cases = [
        (UsageFormat::Keepa, true),
        (custom(UsageField::Credits), true),
        (custom(UsageField::InputTokens), false),
        (UsageFormat::OpenAi, false),
        (UsageFormat::Anthropic, false),
        (UsageFormat::Gemini, false),
    ];
    for (format, credits) in cases {
        assert_eq!(format.reports_credits(), credits, "{format:?}");
    }
}
