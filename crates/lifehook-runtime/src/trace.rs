//! W3C trace context for a phase run. The caller (the command line, or
//! `serve` continuing a trigger's `traceparent`) picks the trace and the
//! phase's span; each step's and each attempt's span id is derived from
//! them, so the runner can put a step's `traceparent` on the plugin's
//! outgoing HTTP requests while it runs, and the caller can build the same
//! spans from the report afterwards without any state passed back.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The trace a phase run belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace.
    pub trace_id: [u8; 16],
    /// The phase run's own span.
    pub span_id: [u8; 8],
    /// The span the phase run continues (a trigger's), if any.
    pub parent_id: Option<[u8; 8]>,
    /// Put `traceparent` on the steps' outgoing HTTP requests.
    pub propagate: bool,
}

impl TraceContext {
    /// A new trace, or a new span in the trace of `parent` (a
    /// `traceparent` header's value; ignored when malformed).
    pub fn new(parent: Option<&str>, propagate: bool) -> TraceContext {
        let random = random_bytes();
        let parent = parent.and_then(parse_traceparent);
        let mut trace_id: [u8; 16] = random[..16].try_into().unwrap_or([1; 16]);
        let mut parent_id = None;
        if let Some((trace, span)) = parent {
            trace_id = trace;
            parent_id = Some(span);
        }
        let span_id = nonzero(u64::from_le_bytes(
            random[16..24].try_into().unwrap_or([1; 8]),
        ));
        TraceContext {
            trace_id,
            span_id,
            parent_id,
            propagate,
        }
    }

    /// The span of the step named `step`.
    pub fn step_span(&self, step: &str) -> [u8; 8] {
        let seed = u64::from_le_bytes(self.span_id);
        let mut key = self.trace_id.to_vec();
        key.extend_from_slice(step.as_bytes());
        nonzero(xxh3_64_with_seed(&key, seed))
    }

    /// The span of attempt `n` (from 1) of the step named `step`.
    pub fn attempt_span(&self, step: &str, n: u32) -> [u8; 8] {
        let seed = u64::from_le_bytes(self.step_span(step));
        nonzero(xxh3_64_with_seed(&n.to_le_bytes(), seed))
    }

    /// The `traceparent` header naming `span` in this trace (sampled).
    pub fn traceparent(&self, span: [u8; 8]) -> String {
        format!("00-{}-{}-01", hex(&self.trace_id), hex(&span))
    }
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The trace and span ids of a W3C `traceparent` value (version 00, or a
/// later one read as 00 as the recommendation says); `None` when malformed
/// or when either id is all zeros.
pub fn parse_traceparent(value: &str) -> Option<([u8; 16], [u8; 8])> {
    let mut parts = value.trim().split('-');
    let version = parts.next()?;
    let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2 || version == "ff" || flags.len() != 2 {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let trace: [u8; 16] = unhex(trace)?.try_into().ok()?;
    let span: [u8; 8] = unhex(span)?.try_into().ok()?;
    unhex(version)?;
    unhex(flags)?;
    (trace != [0; 16] && span != [0; 8]).then_some((trace, span))
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2)
        || !text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok())
        .collect()
}

fn nonzero(id: u64) -> [u8; 8] {
    id.max(1).to_be_bytes()
}

/// 24 random bytes from the kernel; should it fail, bytes no other run
/// shares (the time, the process id, the address of a local).
fn random_bytes() -> [u8; 24] {
    let mut bytes = [0u8; 24];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_ok()
    {
        return bytes;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let seed = now ^ (u128::from(std::process::id()) << 64) ^ (&bytes as *const _ as u128);
    let a = xxhash_rust::xxh3::xxh3_128(&seed.to_le_bytes()).to_le_bytes();
    let b = xxhash_rust::xxh3::xxh3_64(&a).to_le_bytes();
    bytes[..16].copy_from_slice(&a);
    bytes[16..].copy_from_slice(&b);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_bad_values_are_refused() {
        let t = TraceContext::new(None, true);
        let header = t.traceparent(t.step_span("notify"));
        assert_eq!(header.len(), 55, "{header}");
        let (trace, span) = parse_traceparent(&header).expect("parses");
        assert_eq!((trace, span), (t.trace_id, t.step_span("notify")));
        let child = TraceContext::new(Some(&header), true);
        assert_eq!(child.trace_id, t.trace_id);
        assert_eq!(child.parent_id, Some(t.step_span("notify")));
        assert_ne!(child.span_id, t.step_span("notify"));
        for bad in [
            "",
            "00-00000000000000000000000000000000-0000000000000001-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
            "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
            assert_eq!(TraceContext::new(Some(bad), true).parent_id, None);
        }
        assert!(
            parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").is_some()
        );
    }

    #[test]
    fn step_and_attempt_spans_differ_and_are_stable() {
        let t = TraceContext::new(None, true);
        assert_eq!(t.step_span("a"), t.step_span("a"));
        assert_ne!(t.step_span("a"), t.step_span("b"));
        assert_ne!(t.attempt_span("a", 1), t.attempt_span("a", 2));
        assert_ne!(t.attempt_span("a", 1), t.step_span("a"));
        assert_ne!(TraceContext::new(None, true).trace_id, t.trace_id);
    }
}
