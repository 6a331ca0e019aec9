//! Values with units, parsed once at load time: durations (`"5s"`), sizes
//! (`"64MiB"`) and fuel (`1_000_000` or `"unlimited"`). The grammar of
//! durations and sizes is `lifehook-units`', shared with the plugin SDK.
//!
//! Each has its own serde visitor so that a wrong value fails with a message
//! saying what was expected, located by the `toml` crate at the exact line and
//! column.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserialize, Deserializer, Visitor};

pub use lifehook_units::{format_duration, format_size};

/// A duration written with its unit: `"250ms"`, `"5s"`, `"1m 30s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct DurationValue(pub Duration);

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DurationValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration with its unit, like \"500ms\", \"5s\" or \"1m\"")
            }
            // Zero is refused: a zero timeout or deadline would fail every
            // step at once, which is never what the author meant.
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationValue, E> {
                match lifehook_units::parse_duration(v) {
                    Ok(d) if d.is_zero() => Err(E::custom(format!(
                        "invalid duration {v:?}: it must be more than zero"
                    ))),
                    Ok(d) => Ok(DurationValue(d)),
                    Err(e) => Err(E::custom(e)),
                }
            }
            // A bare number is refused rather than read as seconds or
            // milliseconds: both readings are common, and a wrong guess is
            // off by a thousand.
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<DurationValue, E> {
                Err(E::custom(format!(
                    "a bare number is not a duration: write the unit, like \"{v}s\" or \"{v}ms\""
                )))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<DurationValue, E> {
                Err(E::custom(format!(
                    "a bare number is not a duration: write the unit, like \"{v}s\""
                )))
            }
        }
        d.deserialize_any(V)
    }
}

/// A size in bytes written with its unit: `"64MiB"`, `"512KiB"`, `"1GB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SizeValue(pub u64);

impl<'de> Deserialize<'de> for SizeValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = SizeValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size with its unit, like \"64MiB\" or \"512KiB\"")
            }
            // Zero is refused: no plugin runs, or writes anything, in it.
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SizeValue, E> {
                match lifehook_units::parse_size(v) {
                    Ok(0) => Err(E::custom(format!(
                        "invalid size {v:?}: it must be more than zero"
                    ))),
                    Ok(size) => Ok(SizeValue(size)),
                    Err(e) => Err(E::custom(e)),
                }
            }
            // Bytes or mebibytes? Written with a unit, never guessed.
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SizeValue, E> {
                Err(E::custom(format!(
                    "a bare number is not a size: write the unit, like \"{v}MiB\" or \"{v}B\""
                )))
            }
        }
        d.deserialize_any(V)
    }
}

impl fmt::Display for SizeValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_size(self.0))
    }
}

/// A fuel budget: a positive integer (roughly one unit per WebAssembly
/// instruction), or `"unlimited"`.
/// `"unlimited"` must be written out: no default is unlimited, so a plugin
/// without a budget is always a visible choice in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fuel {
    /// At most this much fuel.
    Limited(u64),
    /// No CPU budget: only the wall-time limits stop the step.
    Unlimited,
}

impl<'de> Deserialize<'de> for Fuel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Fuel;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a positive integer (like 1_000_000_000) or \"unlimited\"")
            }
            // Fuel is a count, so a bare integer is right here; TOML's
            // `1_000_000` digit separators keep large ones readable.
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Fuel, E> {
                match u64::try_from(v) {
                    Ok(v) if v > 0 => Ok(Fuel::Limited(v)),
                    _ => Err(E::custom(format!(
                        "invalid fuel {v}: it must be a positive integer, or \"unlimited\""
                    ))),
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Fuel, E> {
                if v == "unlimited" {
                    Ok(Fuel::Unlimited)
                } else {
                    Err(E::custom(format!(
                        "invalid fuel {v:?}: write a positive integer (like 1_000_000_000) or \"unlimited\""
                    )))
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl fmt::Display for Fuel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fuel::Limited(n) => write!(f, "{n}"),
            Fuel::Unlimited => f.write_str("unlimited"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    struct T {
        d: Option<DurationValue>,
        s: Option<SizeValue>,
        f: Option<Fuel>,
    }

    fn parse(src: &str) -> Result<T, String> {
        toml::from_str::<T>(src).map_err(|e| e.message().to_owned())
    }

    #[test]
    fn parses_units() {
        let t = parse("d = \"1m 30s\"\ns = \"64MiB\"\nf = 1_000").expect("valid");
        assert_eq!(t.d, Some(DurationValue(Duration::from_secs(90))));
        assert_eq!(t.s, Some(SizeValue(64 << 20)));
        assert_eq!(t.f, Some(Fuel::Limited(1000)));
        assert_eq!(
            parse("f = \"unlimited\"").expect("valid").f,
            Some(Fuel::Unlimited)
        );
    }

    #[test]
    fn bare_numbers_and_garbage_are_explained() {
        assert!(
            parse("d = 5")
                .unwrap_err()
                .contains("write the unit, like \"5s\"")
        );
        assert!(
            parse("d = \"5 parsecs\"")
                .unwrap_err()
                .contains("invalid duration")
        );
        assert!(parse("d = \"0s\"").unwrap_err().contains("more than zero"));
        assert!(parse("s = 64").unwrap_err().contains("\"64MiB\""));
        assert!(parse("s = \"64\"").unwrap_err().contains("has no unit"));
        assert!(parse("s = \"lots\"").unwrap_err().contains("invalid size"));
        assert!(parse("f = -1").unwrap_err().contains("positive integer"));
        assert!(parse("f = \"lots\"").unwrap_err().contains("unlimited"));
    }
}
