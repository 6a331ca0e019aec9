//! `[config]` flattened to the `wasi:config/store` key-value pairs a plugin
//! reads: nested tables become dotted keys (`redis.url`), arrays one item
//! per line, scalars their TOML text, strings interpolated.
//!
//! Flat on purpose: `wasi:config/store` is a string-to-string map, and a
//! plugin in any language reads it with no TOML parser; the SDK's
//! `config::list` and `config::table` undo the array and table forms.

use std::ops::Range;

use toml::Spanned;

use super::Resolver;

impl Resolver<'_> {
    /// Flattens one `[config]` value. Nested values carry no span of their
    /// own, so their problems point at the top-level key's value.
    pub(super) fn flatten_config(
        &mut self,
        key: String,
        span: Range<usize>,
        value: &toml::Value,
        out: &mut Vec<(String, String)>,
    ) {
        match value {
            // `headers.accept`: tables of tables nest as far as they go.
            toml::Value::Table(table) => {
                for (k, v) in table {
                    self.flatten_config(format!("{key}.{k}"), span.clone(), v, out);
                }
            }
            toml::Value::Array(items) => {
                let mut lines = Vec::with_capacity(items.len());
                for item in items {
                    match self.scalar(span.clone(), item) {
                        // An item with a line break would read back as two.
                        Some(text) if text.contains('\n') => self.problem_at(
                            span.clone(),
                            "array items in [config] cannot contain line breaks",
                            "arrays reach the plugin one item per line; use a plain string for multi-line text",
                        ),
                        Some(text) => lines.push(text),
                        None => {}
                    }
                }
                out.push((key, lines.join("\n")));
            }
            _ => {
                if let Some(text) = self.scalar(span, value) {
                    out.push((key, text));
                }
            }
        }
    }

    /// One scalar as the plugin reads it: a number or boolean as its TOML
    /// text (the plugin parses what it expects), a string interpolated.
    fn scalar(&mut self, span: Range<usize>, value: &toml::Value) -> Option<String> {
        match value {
            toml::Value::String(s) => self.text(&Spanned::new(span, s.clone())),
            toml::Value::Integer(i) => Some(i.to_string()),
            toml::Value::Float(f) => Some(f.to_string()),
            toml::Value::Boolean(b) => Some(b.to_string()),
            toml::Value::Datetime(d) => Some(d.to_string()),
            toml::Value::Array(_) | toml::Value::Table(_) => {
                self.problem_at(
                    span,
                    "nested arrays and tables inside arrays are not supported in [config]",
                    "use an array of strings, numbers or booleans, or a table of them",
                );
                None
            }
        }
    }
}
