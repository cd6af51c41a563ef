//! Usage read from response bodies: the SSE parser fed in arbitrary chunks, and every usage
//! format applied to each event's data and to the whole body as JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quota_proxy::signals::{usage_from_json, SseParser, UsageFormat};

fuzz_target!(|data: &[u8]| {
    let formats = [
        UsageFormat::OpenAi,
        UsageFormat::Anthropic,
        UsageFormat::Gemini,
        UsageFormat::Keepa,
    ];
    for f in &formats {
        let _ = usage_from_json(f, data);
    }
    // The first byte picks the chunk size, so event boundaries fall anywhere.
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let step = usize::from(split % 17) + 1;
    let mut parser = SseParser::new(4096);
    let mut datas: Vec<Vec<u8>> = Vec::new();
    for chunk in rest.chunks(step) {
        parser.feed(chunk, |_, ev| {
            if let Some(ev) = ev {
                datas.push(ev.data.to_vec());
            }
        });
    }
    parser.finish(|ev| datas.push(ev.data.to_vec()));
    for d in &datas {
        for f in &formats {
            let _ = usage_from_json(f, d);
        }
    }
});
