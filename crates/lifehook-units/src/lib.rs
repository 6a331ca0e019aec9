//! The grammar of durations (`"250ms"`, `"5s"`, `"1m 30s"`) and sizes
//! (`"64MiB"`, `"512KiB"`), shared by the pipeline file (host side) and the
//! plugin SDK (guest side), so a value that works in one place works in the
//! other.
//!
//! Parsing is done by two well-kept crates, humantime and bytesize; this crate
//! adds what both sides want on top: a bare number is refused with a hint to
//! write its unit (`"5"` could mean seconds or milliseconds), and errors say
//! what was expected. Whether zero is acceptable is the caller's choice.
//!
//! ```
//! use std::time::Duration;
//! assert_eq!(lifehook_units::parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
//! assert_eq!(lifehook_units::parse_size("64MiB"), Ok(64 << 20));
//! assert!(lifehook_units::parse_duration("5").is_err());
//! assert_eq!(lifehook_units::format_duration(Duration::from_millis(1500)), "1.50s");
//! ```

use std::time::Duration;

/// Why a duration or size was refused. The message names the value and says
/// how to write it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// A number without its unit.
    #[error("{kind} {text:?} has no unit: write it like \"{text}{example_unit}\"")]
    MissingUnit {
        /// `duration` or `size`.
        kind: &'static str,
        /// The value as written.
        text: String,
        /// A unit that would make it valid.
        example_unit: &'static str,
    },
    /// Not a number and a unit at all.
    #[error("invalid {kind} {text:?}: {why}; write a number and a unit, like {examples}")]
    Invalid {
        /// `duration` or `size`.
        kind: &'static str,
        /// The value as written.
        text: String,
        /// What the parser found wrong.
        why: String,
        /// Values that would be valid.
        examples: &'static str,
    },
}

const DURATION_EXAMPLES: &str = "\"500ms\", \"5s\" or \"1m 30s\"";
const SIZE_EXAMPLES: &str = "\"64MiB\" or \"512KiB\"";

fn is_bare_number(text: &str) -> bool {
    let t = text.trim();
    !t.is_empty()
        && t.chars()
            .all(|c| c.is_ascii_digit() || c == '.' || c == '_')
}

/// Parses a duration with its unit: `ns`, `us`, `ms`, `s`, `m`, `h`, `d`
/// (and their long forms), several parts allowed (`"1m 30s"`).
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    if is_bare_number(text) {
        return Err(UnitError::MissingUnit {
            kind: "duration",
            text: text.trim().to_owned(),
            example_unit: "s",
        });
    }
    humantime::parse_duration(text.trim()).map_err(|e| UnitError::Invalid {
        kind: "duration",
        text: text.to_owned(),
        why: e.to_string(),
        examples: DURATION_EXAMPLES,
    })
}

/// Parses a size in bytes with its unit: `B`, `KiB`, `MiB`, `GiB` (powers of
/// two) or `KB`, `MB`, `GB` (powers of ten).
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    if is_bare_number(text) {
        return Err(UnitError::MissingUnit {
            kind: "size",
            text: text.trim().to_owned(),
            example_unit: "MiB",
        });
    }
    match text.trim().parse::<bytesize::ByteSize>() {
        Ok(size) => Ok(size.as_u64()),
        // bytesize's own message describes its parser, not the input.
        Err(_) => Err(UnitError::Invalid {
            kind: "size",
            text: text.to_owned(),
            why: "that is not a number followed by B, KiB, MiB, GiB, KB, MB or GB".into(),
            examples: SIZE_EXAMPLES,
        }),
    }
}

/// `35ms`, `1.50s`, `20s`, `2m03s`: short, for reports and messages.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        if ms.is_multiple_of(1000) {
            format!("{}s", ms / 1000)
        } else {
            format!("{:.2}s", d.as_secs_f64())
        }
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    }
}

/// `64 MiB`, `1.5 GiB`: a size for people.
pub fn format_size(bytes: u64) -> String {
    bytesize::ByteSize(bytes).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_follow_one_grammar() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration(" 2m "), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        let bare = parse_duration("5").unwrap_err().to_string();
        assert_eq!(bare, "duration \"5\" has no unit: write it like \"5s\"");
        let bad = parse_duration("5 parsecs").unwrap_err().to_string();
        assert!(bad.starts_with("invalid duration \"5 parsecs\": "), "{bad}");
        assert!(
            bad.ends_with("like \"500ms\", \"5s\" or \"1m 30s\""),
            "{bad}"
        );
    }

    #[test]
    fn sizes_follow_one_grammar() {
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert!(
            parse_size("64")
                .unwrap_err()
                .to_string()
                .contains("\"64MiB\"")
        );
        assert!(
            parse_size("lots")
                .unwrap_err()
                .to_string()
                .contains("invalid size")
        );
    }

    #[test]
    fn durations_print_short() {
        assert_eq!(format_duration(Duration::from_millis(35)), "35ms");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.50s");
        assert_eq!(format_duration(Duration::from_secs(20)), "20s");
        assert_eq!(format_duration(Duration::from_secs(123)), "2m03s");
        assert_eq!(format_size(64 << 20), "64.0 MiB");
    }
}

/// Durations as milliseconds in JSON, for `#[serde(serialize_with = ...)]`.
/// Two meanings, named apart: `whole` rounds down to whole milliseconds
/// (limits, deadlines: values written in the file), `fractional` keeps
/// microseconds (measured times, where a 0.4 ms load is worth seeing).
#[cfg(feature = "serde")]
pub mod millis {
    use std::time::Duration;

    /// Whole milliseconds, saturating at `u64::MAX`.
    pub fn whole<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis().try_into().unwrap_or(u64::MAX))
    }

    /// [`whole`], or `null`.
    pub fn opt_whole<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => whole(d, s),
            None => s.serialize_none(),
        }
    }

    /// Milliseconds with three decimals (microseconds), or `null`.
    pub fn opt_fractional<S: serde::Serializer>(
        d: &Option<Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_f64((d.as_secs_f64() * 1e6).round() / 1e3),
            None => s.serialize_none(),
        }
    }
}
