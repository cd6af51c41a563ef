//! Property tests for the usage tap on OpenAI streams: exact removal of the usage-only
//! event under any chunking, no holding beyond the partial event, frame-identical
//! pass-through, and garbage tolerance.

use bytes::Bytes;
use http_body_util::{BodyStream, StreamBody};
use proptest::prelude::*;

use crate::signals::collector::Collector;
use crate::signals::tests_support::*;
use crate::signals::*;

fn contents() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec("[a-zA-Z0-9 \n\"{}:,é]{0,16}", 0..12)
}

fn eol() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("\n"), Just("\r\n"), Just("\r")]
}

proptest! {
    #[test]
    fn strip_removes_exactly_the_usage_event(
        contents in contents(),
        eol in eol(),
        pings in any::<bool>(),
        cuts in prop::collection::vec(any::<usize>(), 0..20),
        via_stream_body in any::<bool>(),
    ) {
        let (upstream, expected) = openai_stream(&contents, eol, pings);
        let chunks = cut(&upstream, &cuts);
        let (data, seen) = if via_stream_body {
            let (t, seen) = tap(StreamBody::new(BodyStream::new(Chunks::data(&chunks))), sse(UsageFormat::OpenAi, true));
            (drain(t).0, seen)
        } else {
            let (t, seen) = tap(Chunks::data(&chunks), sse(UsageFormat::OpenAi, true));
            (drain(t).0, seen)
        };
        let got = concat(&data);
        prop_assert_eq!(String::from_utf8_lossy(&got), String::from_utf8_lossy(&expected));
        prop_assert!(data.iter().all(|d| !d.is_empty()));
        let seen = seen.lock().unwrap();
        prop_assert_eq!(seen.len(), 1);
        let o = &seen[0];
        prop_assert!(o.completed && o.removed_usage_chunk);
        prop_assert_eq!(o.bytes, expected.len() as u64);
        let u = o.usage.clone().unwrap();
        prop_assert_eq!((u.input_tokens, u.output_tokens), (17, contents.len() as u64));
        prop_assert_eq!(u.model.as_deref(), Some("gpt-4o-mini"));
    }

    /// Strip mode holds back only the current partial event: after each chunk, what went out
    /// is a prefix of the expected stream covering every event completed so far.
    #[test]
    fn strip_holds_back_only_the_partial_event(
        contents in contents(),
        eol in eol(),
        cuts in prop::collection::vec(any::<usize>(), 0..20),
    ) {
        let (upstream, expected) = openai_stream(&contents, eol, true);
        let blank = format!("{eol}{eol}");
        let mut c = Collector::new(sse(UsageFormat::OpenAi, true));
        let (mut out, mut pos) = (Vec::new(), 0);
        for chunk in cut(&upstream, &cuts) {
            pos += chunk.len();
            out.extend_from_slice(&c.chunk(Bytes::from(chunk)));
            prop_assert!(expected.starts_with(&out));
            // The last complete event boundary within what arrived.
            let seen = &upstream[..pos];
            let boundary = seen
                .windows(blank.len())
                .rposition(|w| w == blank.as_bytes())
                .map_or(0, |i| i + blank.len());
            let removed_len = upstream.len() - expected.len();
            let usage_end = upstream.len() - format!("data: [DONE]{eol}{eol}").len();
            let owed = if boundary >= usage_end { boundary - removed_len } else { boundary };
            // A `\r\n` blank line cut between `\r` and `\n` may owe its last byte.
            prop_assert!(out.len() + 1 >= owed, "out {} owed {}", out.len(), owed);
        }
        out.extend_from_slice(&c.flush());
        prop_assert_eq!(out, expected);
    }

    /// Without removal the tap passes each chunk on as it came: same frames, same bytes.
    #[test]
    fn passthrough_is_frame_identical(
        contents in contents(),
        eol in eol(),
        cuts in prop::collection::vec(any::<usize>(), 0..20),
    ) {
        let (upstream, _) = openai_stream(&contents, eol, true);
        let chunks: Vec<Vec<u8>> = cut(&upstream, &cuts).into_iter().filter(|c| !c.is_empty()).collect();
        let (t, seen) = tap(Chunks::data(&chunks), sse(UsageFormat::OpenAi, false));
        let (data, _, _) = drain(t);
        let data: Vec<Vec<u8>> = data.iter().map(|d| d.to_vec()).collect();
        prop_assert_eq!(data, chunks);
        let seen = seen.lock().unwrap();
        prop_assert_eq!(seen[0].usage.as_ref().map(|u| u.input_tokens), Some(17));
        prop_assert!(!seen[0].removed_usage_chunk);
    }

    #[test]
    fn garbage_sse_passes_through_and_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..400),
        cuts in prop::collection::vec(any::<usize>(), 0..10),
        strip in any::<bool>(),
        format in prop_oneof![Just(UsageFormat::OpenAi), Just(UsageFormat::Anthropic), Just(UsageFormat::Gemini)],
    ) {
        let (t, seen) = tap(Chunks::data(&cut(&bytes, &cuts)), sse(format, strip));
        let (data, _, _) = drain(t);
        prop_assert_eq!(concat(&data), bytes);
        prop_assert_eq!(seen.lock().unwrap().len(), 1);
    }

    /// With a hold cap smaller than the events, strip mode releases what it holds and
    /// removes nothing: the stream passes through byte-identical.
    #[test]
    fn tiny_hold_cap_passes_everything_through(
        contents in contents(),
        eol in eol(),
        cuts in prop::collection::vec(any::<usize>(), 0..20),
        cap in 1usize..64,
    ) {
        let (upstream, _) = openai_stream(&contents, eol, true);
        let config = TapConfig { json_cap: cap, ..sse(UsageFormat::OpenAi, true) };
        let (t, seen) = tap(Chunks::data(&cut(&upstream, &cuts)), config);
        prop_assert_eq!(concat(&drain(t).0), upstream);
        prop_assert!(!seen.lock().unwrap()[0].removed_usage_chunk);
    }
}

/// Every single cut position and byte-at-a-time delivery, for each line ending: the
/// deterministic form of the proptest (it found a `\r|\n` split after a kept event).
#[test]
fn strip_every_single_cut_and_bytewise() {
    for eol in ["\n", "\r\n", "\r"] {
        let (upstream, expected) = openai_stream(&["a\nb".into(), "c".into()], eol, true);
        for at in 0..=upstream.len() {
            let (t, seen) = tap(
                Chunks::data(&[&upstream[..at], &upstream[at..]]),
                sse(UsageFormat::OpenAi, true),
            );
            assert_eq!(concat(&drain(t).0), expected, "eol {eol:?} cut at {at}");
            assert!(seen.lock().unwrap()[0].removed_usage_chunk);
        }
        let bytes: Vec<&[u8]> = upstream.chunks(1).collect();
        let (t, seen) = tap(Chunks::data(&bytes), sse(UsageFormat::OpenAi, true));
        assert_eq!(concat(&drain(t).0), expected, "eol {eol:?} bytewise");
        assert_eq!(
            seen.lock().unwrap()[0]
                .usage
                .as_ref()
                .map(|u| u.output_tokens),
            Some(2)
        );
    }
}
