//! Limits and retry policies. `[defaults]` and each step write the same
//! limit keys; both resolve through [`Resolver::limits`], the step's over
//! what `[defaults]` resolved, which is itself over [`Limits::DEFAULT`].
//! A value out of range is a problem, reported where it is written (the
//! default's own line for `[defaults]`, the step's for a step), and
//! replaced by the range's lower end so resolving can go on.

use toml::Spanned;

use super::Resolver;
use crate::pipeline::{Limits, RetryPolicy};
use crate::schema::{OnFailure, RawDefaults, RawRetries, RawStep};
use crate::units::{DurationValue, Fuel, SizeValue};

/// Smallest accepted memory limit: one WebAssembly page.
const MIN_MEMORY: u64 = 64 << 10;
/// Most attempts a retry policy may ask for.
const MAX_ATTEMPTS: i64 = 100;
/// Most steps a phase may run at once.
const MAX_CONCURRENCY: i64 = 1024;

/// `[defaults]`, checked once and inherited by every step.
pub(super) struct Defaults {
    pub(super) limits: Limits,
    pub(super) on_failure: OnFailure,
    pub(super) retry: RetryPolicy,
    /// `None`: the runner picks (the number of CPUs).
    pub(super) max_concurrency: Option<usize>,
}

/// The limit keys as written, in `[defaults]` or in a step: a view, so one
/// function resolves both.
pub(crate) struct LimitKeys<'a> {
    timeout: Option<&'a Spanned<DurationValue>>,
    fuel: Option<Fuel>,
    memory: Option<&'a Spanned<SizeValue>>,
    output: Option<SizeValue>,
    max_open: Option<&'a Spanned<i64>>,
    max_write: Option<SizeValue>,
    max_http: Option<&'a Spanned<i64>>,
}

/// The [`LimitKeys`] of a raw table with the limit fields (`[defaults]` and
/// a step both have them, by the same names).
macro_rules! limit_keys {
    ($raw:expr) => {
        LimitKeys {
            timeout: $raw.timeout.as_ref(),
            fuel: $raw.fuel,
            memory: $raw.memory.as_ref(),
            output: $raw.output_limit,
            max_open: $raw.max_open.as_ref(),
            max_write: $raw.max_write,
            max_http: $raw.max_http.as_ref(),
        }
    };
}

// One macro for both because the two raw types repeat the limit fields:
// serde's `flatten` would share them, but it disables
// `deny_unknown_fields` and loses the spans the diagnostics point at.
impl RawDefaults {
    /// `[defaults]`' limit keys.
    pub(crate) fn limit_keys(&self) -> LimitKeys<'_> {
        limit_keys!(self)
    }
}

impl RawStep {
    /// A step's limit keys.
    pub(crate) fn limit_keys(&self) -> LimitKeys<'_> {
        limit_keys!(self)
    }
}

impl Resolver<'_> {
    /// `[defaults]`, resolved once, before any step: a problem in it is
    /// reported once, at its own line, rather than once per step.
    pub(super) fn defaults(&mut self, raw: &RawDefaults) -> Defaults {
        let max_concurrency =
            raw.max_concurrency
                .as_ref()
                .map(|n| match usize::try_from(*n.get_ref()) {
                    Ok(v) if (1..=MAX_CONCURRENCY).contains(n.get_ref()) => v,
                    _ => {
                        self.problem(
                            n,
                            format!(
                                "max-concurrency is {}, expected 1 to {MAX_CONCURRENCY}",
                                n.get_ref()
                            ),
                            Some(
                                "1 runs one step at a time; the default is the number of CPUs"
                                    .into(),
                            ),
                        );
                        1
                    }
                });
        Defaults {
            limits: self.limits(&raw.limit_keys(), &Limits::DEFAULT),
            on_failure: raw.on_failure.unwrap_or(OnFailure::Continue),
            retry: raw
                .retries
                .as_ref()
                .map_or_else(RetryPolicy::default, |r| self.retries(r)),
            max_concurrency,
        }
    }

    /// The limits `keys` set, the others taken from `inherited`. Durations
    /// and sizes were range-checked when parsed (`units`); what is left is
    /// the counts, whose sensible range depends on the key.
    pub(super) fn limits(&mut self, keys: &LimitKeys<'_>, inherited: &Limits) -> Limits {
        Limits {
            timeout: keys.timeout.map_or(inherited.timeout, |t| t.get_ref().0),
            fuel: keys.fuel.unwrap_or(inherited.fuel),
            memory: keys.memory.map_or(inherited.memory, |m| self.memory(m)),
            output: keys.output.map_or(inherited.output, |s| s.0),
            max_open: keys
                .max_open
                .map_or(inherited.max_open, |n| self.count(n, "max-open", 4, 65_536)),
            max_write: keys.max_write.map_or(inherited.max_write, |s| s.0),
            max_http: keys
                .max_http
                .map_or(inherited.max_http, |n| self.count(n, "max-http", 1, 1024)),
        }
    }

    /// A count limit within `min..=max`; a problem (and `min`) otherwise.
    /// Negative and huge values arrive here as written (TOML integers are
    /// i64), so the range check is also the conversion.
    fn count(&mut self, n: &Spanned<i64>, key: &str, min: u32, max: u32) -> u32 {
        match u32::try_from(*n.get_ref()) {
            Ok(v) if (min..=max).contains(&v) => v,
            _ => {
                self.problem(
                    n,
                    format!("{key} is {}, expected {min} to {max}", n.get_ref()),
                    Some(format!(
                        "{key} bounds what one step holds at once; the default suits normal plugins"
                    )),
                );
                min
            }
        }
    }

    /// A memory limit: below one page no plugin can even instantiate, so
    /// it is refused here rather than failing every attempt.
    fn memory(&mut self, m: &Spanned<SizeValue>) -> u64 {
        if m.get_ref().0 < MIN_MEMORY {
            self.problem(
                m,
                format!("memory limit {} is below the 64KiB minimum", m.get_ref()),
                Some("a WebAssembly page is 64KiB; most plugins need a few MiB".into()),
            );
        }
        m.get_ref().0
    }

    /// A retry policy over [`RetryPolicy::default`]. Without `max-backoff`
    /// the longest wait is at least the first one, so `backoff = "10s"`
    /// alone is not cut to the 5 s default cap.
    pub(super) fn retries(&mut self, raw: &Spanned<RawRetries>) -> RetryPolicy {
        let r = raw.get_ref();
        let mut policy = RetryPolicy::default();
        if let Some(a) = &r.attempts {
            match u32::try_from(*a.get_ref()) {
                Ok(n) if (1..=MAX_ATTEMPTS).contains(&i64::from(n)) => policy.attempts = n,
                _ => self.problem(
                    a,
                    format!(
                        "retries.attempts is {}, expected 1 to {MAX_ATTEMPTS}",
                        a.get_ref()
                    ),
                    Some("`attempts` counts the first attempt too: 3 means up to 2 retries".into()),
                ),
            }
        }
        // Below 1 the wait would shrink toward zero and retry in a tight
        // loop; above 100 the second retry already waits past any deadline.
        if let Some(m) = &r.multiplier {
            let v = *m.get_ref();
            if v.is_finite() && (1.0..=100.0).contains(&v) {
                policy.multiplier = v;
            } else {
                self.problem(
                    m,
                    format!("retries.multiplier is {v}, expected 1.0 to 100.0"),
                    Some("1.0 keeps the wait constant, 2.0 doubles it each time".into()),
                );
            }
        }
        if let Some(b) = r.backoff {
            policy.backoff = b.0;
        }
        policy.max_backoff = r
            .max_backoff
            .map_or(policy.max_backoff.max(policy.backoff), |m| m.0);
        policy
    }
}
