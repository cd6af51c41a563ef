//! The body-agnostic core of the usage tap: takes response chunks, returns the bytes to
//! pass on, and accumulates usage.
//!
//! - **SSE**: each chunk is passed on as it is (the same `Bytes`, no copy) while the
//!   incremental parser reads usage from the events.
//! - **SSE with the OpenAI usage chunk removed**: complete events are passed on at once;
//!   only the current partial event (bytes after the last blank line) is held until its
//!   blank line arrives, so the usage-only event can be cut out whole. A partial event that
//!   outgrows the hold cap is released and can no longer be removed.
//! - **JSON**: chunks are passed on and copied up to a cap; the copy is parsed at the end.
//! - **Opaque**: passed on untouched; usage unknown.

use bytes::{Bytes, BytesMut};
use serde_json::Value;

use crate::signals::include_usage::is_usage_only_chunk;
use crate::signals::sse::SseParser;
use crate::signals::tap::{BodyKind, TapConfig, TapOutcome};
use crate::signals::usage::{apply, Usage, UsageFormat};

/// Per-mode state.
#[derive(Debug)]
enum Mode {
    Sse(Box<SseState>),
    Json { copy: BytesMut, cap: usize },
    Opaque,
}

#[derive(Debug)]
struct SseState {
    parser: SseParser,
    strip: bool,
    /// Held bytes of the current partial event (strip mode only).
    held: BytesMut,
    /// Part of the current event was already passed on; it can no longer be removed.
    released: bool,
    /// The last chunk ended with a block's `\r`: a leading `\n` next belongs to that block,
    /// which was removed (`Some(true)`) or kept (`Some(false)`).
    cr_edge: Option<bool>,
    max_hold: usize,
}

/// Reads usage from a response as it streams past.
#[derive(Debug)]
pub(crate) struct Collector {
    format: UsageFormat,
    mode: Mode,
    usage: Option<Usage>,
    over_cap: bool,
    bytes_out: u64,
    removed: bool,
}

impl Collector {
    pub(crate) fn new(config: TapConfig) -> Self {
        let mode = match config.kind {
            BodyKind::Sse => Mode::Sse(Box::new(SseState {
                parser: SseParser::new(config.json_cap.min(crate::signals::sse::DEFAULT_MAX_EVENT)),
                strip: config.strip_openai_usage_chunk && config.format == UsageFormat::OpenAi,
                held: BytesMut::new(),
                released: false,
                cr_edge: None,
                max_hold: config.json_cap,
            })),
            BodyKind::Json => Mode::Json {
                copy: BytesMut::new(),
                cap: config.json_cap,
            },
            BodyKind::Opaque => Mode::Opaque,
        };
        Collector {
            format: config.format,
            mode,
            usage: None,
            over_cap: false,
            bytes_out: 0,
            removed: false,
        }
    }

    /// Does this collector change the bytes (so the body length is no longer known)?
    pub(crate) fn rewrites(&self) -> bool {
        matches!(&self.mode, Mode::Sse(s) if s.strip)
    }

    /// Process one upstream chunk; returns what to pass on now (possibly empty).
    pub(crate) fn chunk(&mut self, chunk: Bytes) -> Bytes {
        let out = match &mut self.mode {
            Mode::Opaque => chunk,
            Mode::Json { copy, cap } => {
                if !self.over_cap {
                    if copy.len() + chunk.len() > *cap {
                        self.over_cap = true;
                        *copy = BytesMut::new();
                    } else {
                        copy.extend_from_slice(&chunk);
                    }
                }
                chunk
            }
            Mode::Sse(sse) => {
                let (format, usage, removed) = (&self.format, &mut self.usage, &mut self.removed);
                sse.chunk(chunk, format, usage, removed)
            }
        };
        self.bytes_out += out.len() as u64;
        out
    }

    /// The upstream body ended (or reached its trailers): release anything held.
    pub(crate) fn flush(&mut self) -> Bytes {
        let Mode::Sse(sse) = &mut self.mode else {
            return Bytes::new();
        };
        sse.released = false;
        let out = sse.held.split().freeze();
        self.bytes_out += out.len() as u64;
        out
    }

    /// The final account; `completed` tells whether the body reached its end.
    pub(crate) fn outcome(&mut self, completed: bool) -> TapOutcome {
        let mut body = None;
        match &mut self.mode {
            Mode::Sse(sse) => {
                let (format, usage) = (&self.format, &mut self.usage);
                sse.parser.finish(|ev| {
                    read_event(format, ev.data, usage);
                });
            }
            Mode::Json { copy, .. } if !self.over_cap => {
                let bytes = copy.split().freeze();
                if let Ok(doc) = serde_json::from_slice::<Value>(&bytes) {
                    apply(&self.format, &doc, &mut self.usage);
                }
                body = completed.then_some(bytes);
            }
            Mode::Json { .. } | Mode::Opaque => {}
        }
        TapOutcome {
            usage: self.usage.take(),
            completed,
            failed: false,
            over_cap: self.over_cap,
            bytes: self.bytes_out,
            removed_usage_chunk: self.removed,
            body,
        }
    }
}

/// Read usage from one event's data; returns whether it is OpenAI's usage-only chunk.
fn read_event(format: &UsageFormat, data: &[u8], usage: &mut Option<Usage>) -> bool {
    if !format.may_carry_usage(data) {
        return false;
    }
    let Ok(doc) = serde_json::from_slice::<Value>(data) else {
        return false;
    };
    apply(format, &doc, usage);
    *format == UsageFormat::OpenAi && is_usage_only_chunk(&doc)
}

impl SseState {
    fn chunk(
        &mut self,
        chunk: Bytes,
        format: &UsageFormat,
        usage: &mut Option<Usage>,
        removed: &mut bool,
    ) -> Bytes {
        if chunk.is_empty() {
            return chunk;
        }
        if !self.strip {
            self.parser.feed(&chunk, |_, ev| {
                if let Some(ev) = ev {
                    read_event(format, ev.data, usage);
                }
            });
            return chunk;
        }
        // Blocks that end in this chunk: (end offset, remove it?).
        let mut blocks: Vec<(usize, bool)> = Vec::new();
        self.parser.feed(&chunk, |end, ev| {
            let usage_only = ev.is_some_and(|ev| read_event(format, ev.data, usage));
            blocks.push((end, usage_only));
        });
        let mut pieces: Vec<Bytes> = Vec::new();
        let (mut block_start, mut keep_from) = (0, 0);
        if let Some(removed) = self.cr_edge.take() {
            if chunk.first() == Some(&b'\n') {
                // The rest of the previous block's `\r\n`: goes (or went) with that block.
                block_start = 1;
                keep_from = usize::from(removed);
            }
        }
        for (i, &(end, usage_only)) in blocks.iter().enumerate() {
            // The first block may have begun in an earlier chunk.
            let remove = usage_only && !(i == 0 && self.released);
            if i == 0 {
                let held = self.held.split().freeze();
                if !remove && !held.is_empty() {
                    pieces.push(held);
                }
                self.released = false;
            }
            if remove {
                *removed = true;
                if keep_from < block_start {
                    pieces.push(chunk.slice(keep_from..block_start));
                }
                keep_from = end;
            }
            if end == chunk.len() && chunk.last() == Some(&b'\r') {
                self.cr_edge = Some(remove);
            }
            block_start = end.max(block_start);
        }
        if self.released {
            // Still inside an event that outgrew the hold cap: pass it straight on.
            block_start = chunk.len();
        }
        if keep_from < block_start {
            pieces.push(chunk.slice(keep_from..block_start));
        }
        if block_start < chunk.len() {
            self.held.extend_from_slice(&chunk[block_start..]);
            if self.held.len() > self.max_hold {
                pieces.push(self.held.split().freeze());
                self.released = true;
            }
        }
        join(pieces)
    }
}

fn join(mut pieces: Vec<Bytes>) -> Bytes {
    match pieces.len() {
        0 => Bytes::new(),
        1 => pieces.pop().unwrap_or_default(),
        _ => {
            let mut out = BytesMut::with_capacity(pieces.iter().map(Bytes::len).sum());
            pieces.iter().for_each(|p| out.extend_from_slice(p));
            out.freeze()
        }
    }
}
