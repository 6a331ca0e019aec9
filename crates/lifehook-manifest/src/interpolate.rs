//! `${VAR}` interpolation of pipeline values from the runner's environment.
//!
//! Syntax, a small subset of the shell's:
//! - `${NAME}` is the value of `NAME`; an unset variable is an error.
//! - `${NAME:-fallback}` is `fallback` when `NAME` is unset or empty.
//! - `$$` is a literal `$`; a `$` not followed by `{` or `$` stays as it is.

use std::fmt;

/// Why a value could not be interpolated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterpolationError {
    /// `${NAME}` names a variable the runner's environment does not have.
    Unset {
        /// The variable's name.
        name: String,
    },
    /// A `${` without its closing `}`.
    Unclosed,
    /// What is between `${` and `}` (or `:-`) is not a variable name.
    BadName {
        /// The text found where a name was expected.
        name: String,
    },
}

impl fmt::Display for InterpolationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unset { name } => write!(f, "environment variable `{name}` is not set"),
            Self::Unclosed => f.write_str("`${` is not closed by `}`"),
            Self::BadName { name } => {
                write!(f, "`{name}` is not a valid environment variable name")
            }
        }
    }
}

impl InterpolationError {
    /// How to fix it.
    pub fn help(&self) -> String {
        match self {
            Self::Unset { name } => format!(
                "set `{name}` in the runner's environment, or give a fallback: `${{{name}:-value}}`"
            ),
            Self::Unclosed => "close it (`${NAME}`), or write `$$` for a literal `$`".to_owned(),
            Self::BadName { .. } => {
                "names are letters, digits and `_`, not starting with a digit".to_owned()
            }
        }
    }
}

/// Replaces every `${...}` in `input` using `lookup`. One pass, left to
/// right: a value is never interpolated again, so a variable holding `${X}`
/// (or `$$`) ends up in the result as written, and no value can make the
/// pipeline read another variable.
pub fn interpolate(
    input: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<String, InterpolationError> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let close = body.find('}').ok_or(InterpolationError::Unclosed)?;
            let expr = &body[..close];
            let (name, fallback) = match expr.split_once(":-") {
                Some((name, fallback)) => (name, Some(fallback)),
                None => (expr, None),
            };
            if !is_env_name(name) {
                return Err(InterpolationError::BadName {
                    name: name.to_owned(),
                });
            }
            // An unset variable without a fallback is an error, not an empty
            // string: `url = "http://${HOST}/..."` with HOST unset would
            // otherwise be a request to the wrong place at shutdown.
            match (lookup(name), fallback) {
                (Some(value), Some(fallback)) if value.is_empty() => out.push_str(fallback),
                (Some(value), _) => out.push_str(&value),
                (None, Some(fallback)) => out.push_str(fallback),
                (None, None) => {
                    return Err(InterpolationError::Unset {
                        name: name.to_owned(),
                    });
                }
            }
            rest = &body[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// True for a portable environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "POD" => Some("web-0".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn replaces_set_variables_and_keeps_other_text() {
        assert_eq!(
            interpolate("pod=${POD}!", &env).as_deref(),
            Ok("pod=web-0!")
        );
        assert_eq!(interpolate("no vars", &env).as_deref(), Ok("no vars"));
    }

    #[test]
    fn fallback_applies_when_unset_or_empty() {
        assert_eq!(interpolate("${NOPE:-x}", &env).as_deref(), Ok("x"));
        assert_eq!(interpolate("${EMPTY:-y}", &env).as_deref(), Ok("y"));
        assert_eq!(interpolate("${POD:-z}", &env).as_deref(), Ok("web-0"));
        assert_eq!(
            interpolate("${NOPE:-http://a:1/}", &env).as_deref(),
            Ok("http://a:1/")
        );
    }

    #[test]
    fn dollar_escapes_and_lone_dollars() {
        assert_eq!(interpolate("$${POD}", &env).as_deref(), Ok("${POD}"));
        assert_eq!(interpolate("cost $5", &env).as_deref(), Ok("cost $5"));
        assert_eq!(interpolate("end$", &env).as_deref(), Ok("end$"));
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(
            interpolate("${NOPE}", &env),
            Err(InterpolationError::Unset {
                name: "NOPE".into()
            })
        );
        assert_eq!(
            interpolate("${POD", &env),
            Err(InterpolationError::Unclosed)
        );
        assert_eq!(
            interpolate("${1X}", &env),
            Err(InterpolationError::BadName { name: "1X".into() })
        );
    }
}
