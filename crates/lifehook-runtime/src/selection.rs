//! Which steps of a phase one run runs: the filters a caller sets (by name
//! and by tag), and why a step was left out. The runtime says what excluded
//! a step; the caller, which knows what it calls its filters (the CLI's
//! `--only`, `--skip`, `--tag`, `--skip-tag`), words it.

use lifehook_manifest::Step;

/// Which steps of the phase one run runs. A step runs when it passes every
/// filter that is set.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Only these steps (all when empty).
    pub only: Vec<String>,
    /// Never these steps.
    pub skip: Vec<String>,
    /// Only steps with at least one of these tags (all when empty).
    pub tags: Vec<String>,
    /// Never steps with any of these tags.
    pub skip_tags: Vec<String>,
}

/// Why a [`Selection`] leaves a step out: the first filter it fails, in the
/// order name, skipped name, tags, skipped tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exclusion {
    /// Not among [`Selection::only`] (which it carries).
    NotListed(Vec<String>),
    /// Named in [`Selection::skip`].
    Skipped,
    /// Has none of [`Selection::tags`] (which it carries).
    NoTag(Vec<String>),
    /// Has this tag of [`Selection::skip_tags`].
    SkippedTag(String),
}

impl std::fmt::Display for Exclusion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exclusion::NotListed(only) => write!(f, "not selected (only {})", only.join(", ")),
            Exclusion::Skipped => f.write_str("left out by name"),
            Exclusion::NoTag(tags) => write!(f, "has none of the tags {}", tags.join(", ")),
            Exclusion::SkippedTag(tag) => write!(f, "tagged `{tag}`, left out"),
        }
    }
}

impl Selection {
    /// True when every step runs.
    pub fn is_everything(&self) -> bool {
        self.only.is_empty()
            && self.skip.is_empty()
            && self.tags.is_empty()
            && self.skip_tags.is_empty()
    }

    /// Why `step` is left out, or `None` when it runs.
    pub fn excludes(&self, step: &Step) -> Option<Exclusion> {
        if !self.only.is_empty() && !self.only.contains(&step.name) {
            return Some(Exclusion::NotListed(self.only.clone()));
        }
        if self.skip.contains(&step.name) {
            return Some(Exclusion::Skipped);
        }
        if !self.tags.is_empty() && !step.tags.iter().any(|t| self.tags.contains(t)) {
            return Some(Exclusion::NoTag(self.tags.clone()));
        }
        step.tags
            .iter()
            .find(|t| self.skip_tags.contains(t))
            .map(|tag| Exclusion::SkippedTag(tag.clone()))
    }
}
