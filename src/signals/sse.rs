//! An incremental `text/event-stream` parser that never waits for more than it has.
//!
//! Bytes are fed as they arrive, split anywhere: inside a line, between `\r` and `\n`, in
//! the middle of a UTF-8 sequence. Lines end with `\n`, `\r\n` or `\r` (WHATWG HTML
//! §9.2.6); `data:` lines accumulate, joined by `\n`; a blank line ends the block. For each
//! blank line the parser reports where in the current chunk the block ended, so a caller can
//! cut whole events out of the byte stream (see the usage tap), and the event if the block
//! had any data.
//!
//! Memory is bounded: an event whose data exceeds the cap is dropped (reported as no event).

/// One dispatched event, borrowed from the parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SseEvent<'a> {
    /// The `event:` field, empty when absent.
    pub event: &'a str,
    /// The `data:` lines joined by `\n`, without the final newline.
    pub data: &'a [u8],
}

/// Default cap on one event's data.
pub const DEFAULT_MAX_EVENT: usize = 1 << 20;

/// The parser state between chunks.
#[derive(Debug)]
pub struct SseParser {
    /// The unterminated tail of the current line.
    line: Vec<u8>,
    data: Vec<u8>,
    event: String,
    has_data: bool,
    /// The last byte seen was a `\r` ending a line: a leading `\n` next is part of it.
    after_cr: bool,
    /// The current block outgrew `max_event`; it will be dropped.
    overflow: bool,
    max_event: usize,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_EVENT)
    }
}

impl SseParser {
    /// A parser dropping events whose data exceeds `max_event` bytes.
    pub fn new(max_event: usize) -> Self {
        SseParser {
            line: Vec::new(),
            data: Vec::new(),
            event: String::new(),
            has_data: false,
            after_cr: false,
            overflow: false,
            max_event,
        }
    }

    /// Feed one chunk. `on_block(end, event)` is called for every blank line, with `end` the
    /// offset in `chunk` just past it (past its `\n` when it is a `\r\n` in this chunk).
    pub fn feed(&mut self, chunk: &[u8], mut on_block: impl FnMut(usize, Option<SseEvent<'_>>)) {
        let mut i = 0;
        if self.after_cr && chunk.first() == Some(&b'\n') {
            i = 1;
        }
        if !chunk.is_empty() {
            self.after_cr = false;
        }
        while i < chunk.len() {
            let Some(p) = chunk[i..].iter().position(|&b| b == b'\n' || b == b'\r') else {
                self.push_partial(&chunk[i..]);
                break;
            };
            let line_end = i + p;
            let mut next = line_end + 1;
            if chunk[line_end] == b'\r' {
                match chunk.get(next) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            if self.line.is_empty() {
                self.line_done(&chunk[i..line_end], next, &mut on_block);
            } else {
                self.push_partial(&chunk[i..line_end]);
                let line = std::mem::take(&mut self.line);
                self.line_done(&line, next, &mut on_block);
                self.line = line;
                self.line.clear();
            }
            i = next;
        }
    }

    /// The stream ended: an unterminated last line and block are processed leniently (a
    /// browser would drop them; for reading usage they are still evidence).
    pub fn finish(&mut self, mut on_event: impl FnMut(SseEvent<'_>)) {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, 0, &mut |_, _| {});
        }
        if self.has_data && !self.overflow {
            on_event(self.current());
        }
        self.reset_block();
    }

    fn push_partial(&mut self, bytes: &[u8]) {
        if self.line.len() + bytes.len() > self.max_event {
            self.overflow = true;
            return;
        }
        self.line.extend_from_slice(bytes);
    }

    fn current(&self) -> SseEvent<'_> {
        let data = self.data.strip_suffix(b"\n").unwrap_or(&self.data);
        SseEvent {
            event: &self.event,
            data,
        }
    }

    fn reset_block(&mut self) {
        self.data.clear();
        self.event.clear();
        self.has_data = false;
        self.overflow = false;
    }

    fn line_done(
        &mut self,
        line: &[u8],
        end: usize,
        on_block: &mut impl FnMut(usize, Option<SseEvent<'_>>),
    ) {
        if line.is_empty() {
            let ev = (self.has_data && !self.overflow).then(|| self.current());
            on_block(end, ev);
            self.reset_block();
            return;
        }
        if line[0] == b':' {
            return; // comment
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(c) => (&line[..c], &line[c + 1..]),
            None => (line, &[][..]),
        };
        let value = value.strip_prefix(b" ").unwrap_or(value);
        match name {
            b"data" => {
                if self.data.len() + value.len() + 1 > self.max_event {
                    self.overflow = true;
                    return;
                }
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
                self.has_data = true;
            }
            b"event" => {
                self.event.clear();
                self.event
                    .push_str(std::str::from_utf8(value).unwrap_or(""));
            }
            _ => {} // id, retry and unknown fields do not matter here
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// (end offsets in the whole stream, events as (type, data)) for a chunking.
    fn run(chunks: &[&[u8]]) -> (Vec<usize>, Vec<(String, String)>) {
        let mut p = SseParser::new(64);
        let (mut ends, mut events, mut base) = (vec![], vec![], 0);
        for c in chunks {
            p.feed(c, |end, ev| {
                ends.push(base + end);
                if let Some(ev) = ev {
                    let data = String::from_utf8_lossy(ev.data).into_owned();
                    events.push((ev.event.to_string(), data));
                }
            });
            base += c.len();
        }
        p.finish(|ev| {
            let data = String::from_utf8_lossy(ev.data).into_owned();
            events.push((format!("eof:{}", ev.event), data));
        });
        (ends, events)
    }

    fn ev(e: &str, d: &str) -> (String, String) {
        (e.to_string(), d.to_string())
    }

    #[test]
    fn basic_shapes() {
        let s = b"event: a\ndata: 1\n\n: comment\n\ndata:2\r\ndata: x\r\n\r\ndata: 3\r\rid: 9\n\n";
        let (ends, events) = run(&[s]);
        assert_eq!(events, vec![ev("a", "1"), ev("", "2\nx"), ev("", "3")]);
        assert_eq!(ends, vec![18, 29, 48, 57, 64]);
    }

    #[test]
    fn finish_yields_unterminated_event() {
        let (_, events) = run(&[b"data: 1\n\ndata: {\"a\"", b":1}"]);
        assert_eq!(events, vec![ev("", "1"), ev("eof:", "{\"a\":1}")]);
    }

    #[test]
    fn oversized_event_is_dropped_then_parsing_resumes() {
        let big = format!("data: {}\n\ndata: ok\n\n", "x".repeat(100));
        let (ends, events) = run(&[big.as_bytes()]);
        assert_eq!(events, vec![ev("", "ok")]);
        assert_eq!(ends.len(), 2);
        let (_, events) = run(&[&big.as_bytes()[..50], &big.as_bytes()[50..]]);
        assert_eq!(events, vec![ev("", "ok")]);
    }

    fn stream() -> impl Strategy<Value = Vec<u8>> {
        let line_end = prop_oneof![Just("\n"), Just("\r\n"), Just("\r")];
        let line = prop_oneof![
            "[a-z0-9{}\":, é]{0,12}".prop_map(|d| format!("data: {d}")),
            "[a-z]{0,5}".prop_map(|e| format!("event:{e}")),
            Just(": ping".to_string()),
            Just("id: 7".to_string()),
            Just(String::new()),
        ];
        prop::collection::vec((line, line_end), 0..40).prop_map(|lines| {
            lines
                .into_iter()
                .flat_map(|(l, e)| format!("{l}{e}").into_bytes())
                .collect()
        })
    }

    fn chunked(bytes: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut out = vec![];
        let mut prev = 0;
        for c in cuts.into_iter().chain([bytes.len()]) {
            out.push(bytes[prev..c].to_vec());
            prev = c;
        }
        out
    }

    proptest! {
        #[test]
        fn any_chunking_gives_the_same_events(
            s in stream(),
            cuts in prop::collection::vec(any::<usize>(), 0..12),
        ) {
            let whole = run(&[&s]);
            let chunks = chunked(&s, &cuts);
            let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            let split = run(&refs);
            // A block ending in a lone `\r` at a chunk edge reports its end before a `\n`
            // that follows in the next chunk; the events are the same either way.
            prop_assert_eq!(&whole.1, &split.1);
            prop_assert_eq!(whole.0.len(), split.0.len());
        }

        #[test]
        fn garbage_never_panics(
            bytes in prop::collection::vec(any::<u8>(), 0..300),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let chunks = chunked(&bytes, &cuts);
            let refs: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
            let _ = run(&refs);
        }
    }
}
