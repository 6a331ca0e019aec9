//! The record of what a step tried to reach without a grant, shared by the
//! sandbox's gates (which record) and the step's report (which lists them).

use std::sync::{Arc, Mutex, PoisonError};

/// Things a step tried to do without a grant, shared between the store's
/// hooks and the executor's report.
#[derive(Clone, Default)]
pub(crate) struct Denials(Arc<Mutex<Vec<String>>>);

impl Denials {
    /// Records and logs one denied attempt: what was denied, and the grant
    /// that would allow it.
    pub(crate) fn record(&self, what: String, grant: String) {
        self.push(format!("denied {what}; to allow it: {grant}"));
    }

    /// Records and logs a TLS connection the grant's settings could not
    /// make: to whom, why, and what to change in the grant.
    pub(crate) fn record_tls(&self, peer: &str, refusal: &crate::tls::Refusal) {
        self.push(format!(
            "denied TLS to {peer}: {}; to fix it: {}",
            refusal.cause, refusal.fix
        ));
    }

    fn push(&self, line: String) {
        tracing::warn!("{line}");
        let mut list = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        // A plugin retrying in a loop would fill memory; keep the first few.
        if list.len() < 16 {
            list.push(line);
        }
    }

    /// The first denial, which the report leads with.
    pub(crate) fn first(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .first()
            .cloned()
    }

    /// The denials recorded so far.
    pub(crate) fn snapshot(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
