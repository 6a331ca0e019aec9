//! Unknown keys, found before serde sees the file: every misspelt key is
//! reported (serde stops at the first), located, with the closest known key
//! as a suggestion and the table's keys listed otherwise.
//!
//! The known keys come from the serde types themselves ([`fields_of`]), so
//! this check and the schema cannot drift apart.

use std::fmt;
use std::path::Path;

use serde::de::{self, Deserialize, Deserializer, Visitor};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diagnostic::Diagnostic;
use crate::schema::{
    RawAllow, RawDefaults, RawDirTable, RawHttpTable, RawOci, RawPhase, RawPipeline, RawRetries,
    RawState, RawStep, RawTcpTable, RawTelemetry,
};

/// The field names serde's derive gave struct `T`, read by asking `T` to
/// deserialize itself from a deserializer that only records them.
pub(crate) fn fields_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Introspect(&mut fields));
    fields
}

/// A deserializer that records the field list a derived `Deserialize` hands
/// to `deserialize_struct`, then stops. serde keeps that list private to the
/// derive; asking for it this way means a field added to a schema type is a
/// known key here with no second list to update.
struct Introspect<'a>(&'a mut &'static [&'static str]);

/// The only error [`Introspect`] returns: introspection never produces a
/// value, so every path ends in it.
#[derive(Debug)]
struct Stop;

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("field introspection")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Stop
    }
}

impl<'de> Deserializer<'de> for Introspect<'_> {
    type Error = Stop;

    // Anything but a struct (an enum, a map) has no field list to give.
    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Stop> {
        *self.0 = fields;
        Err(Stop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

/// Which table of the schema a TOML table is. The walk descends only into
/// tables the schema defines (see [`Table::child`]): a step's `config` or
/// `env` take any keys, so they are never checked here. Phases and steps
/// carry their phase's name for the message.
#[derive(Clone, Copy)]
enum Table {
    Top,
    Defaults,
    State,
    Oci,
    Telemetry,
    Phase(&'static str),
    Step(&'static str),
    Retries,
    Allow,
    Dir,
    HttpGrant,
    TcpGrant,
}

impl Table {
    /// The keys the schema type behind this table accepts.
    fn fields(self) -> &'static [&'static str] {
        match self {
            Table::Top => fields_of::<RawPipeline>(),
            Table::Defaults => fields_of::<RawDefaults>(),
            Table::State => fields_of::<RawState>(),
            Table::Oci => fields_of::<RawOci>(),
            Table::Telemetry => fields_of::<RawTelemetry>(),
            Table::Phase(_) => fields_of::<RawPhase>(),
            Table::Step(_) => fields_of::<RawStep>(),
            Table::Retries => fields_of::<RawRetries>(),
            Table::Allow => fields_of::<RawAllow>(),
            Table::Dir => fields_of::<RawDirTable>(),
            Table::HttpGrant => fields_of::<RawHttpTable>(),
            Table::TcpGrant => fields_of::<RawTcpTable>(),
        }
    }

    /// Where the table is, as the message says it: `in [pre-stop]`.
    fn describe(self) -> String {
        match self {
            Table::Top => "at the top level".into(),
            Table::Defaults => "in [defaults]".into(),
            Table::State => "in [state]".into(),
            Table::Oci => "in [oci]".into(),
            Table::Telemetry => "in [telemetry]".into(),
            Table::Phase(p) => format!("in [{p}]"),
            Table::Step(p) => format!("in a step of [{p}]"),
            Table::Retries => "in `retries`".into(),
            Table::Allow => "in `allow`".into(),
            Table::Dir => "in an `allow.dirs` table".into(),
            Table::HttpGrant => "in an `allow.http` table".into(),
            Table::TcpGrant => "in an `allow.tcp` table".into(),
        }
    }

    /// The table a key of this one holds, when it is a table of the schema.
    fn child(self, key: &str) -> Option<Child> {
        Some(match (self, key) {
            (Table::Top, "defaults") => Child::Table(Table::Defaults),
            (Table::Top, "state") => Child::Table(Table::State),
            (Table::Top, "oci") => Child::Table(Table::Oci),
            (Table::Top, "telemetry") => Child::Table(Table::Telemetry),
            (Table::Top, "pre-stop") => Child::Table(Table::Phase("pre-stop")),
            (Table::Top, "post-start") => Child::Table(Table::Phase("post-start")),
            (Table::Phase(p), "steps") => Child::Array(Table::Step(p)),
            (Table::Defaults | Table::Step(_), "retries") => Child::Table(Table::Retries),
            (Table::Step(_), "allow") => Child::Table(Table::Allow),
            (Table::Allow, "dirs") => Child::Array(Table::Dir),
            (Table::Allow, "http") => Child::Array(Table::HttpGrant),
            (Table::Allow, "tcp") => Child::Array(Table::TcpGrant),
            _ => return None,
        })
    }
}

/// A key holding a schema table: one table (`[defaults]`) or an array of
/// them (`[[pre-stop.steps]]`, `allow.dirs`), each checked as `Table`.
enum Child {
    Table(Table),
    Array(Table),
}

/// Every unknown key in the document, in file order. All are reported at
/// once, not just the first, so that one edit fixes a file: serde would
/// stop at the first and hide the others behind it.
pub(crate) fn check(doc: &Spanned<DeTable<'_>>, path: &Path, source: &str) -> Vec<Diagnostic> {
    let mut problems = Vec::new();
    let lines = crate::diagnostic::LineIndex::new(source);
    let at = Located {
        path,
        source,
        lines: &lines,
    };
    walk(doc.get_ref(), Table::Top, &at, &mut problems);
    problems.sort_by_key(|d| (d.line, d.column));
    problems
}

/// The file diagnostics point into.
struct Located<'a> {
    path: &'a Path,
    source: &'a str,
    lines: &'a crate::diagnostic::LineIndex,
}

/// Checks the keys of `table` as a `kind`, then the schema tables inside it.
/// An unknown key is not descended into: what is inside it is unknown too,
/// and one diagnostic for it says enough.
fn walk(table: &DeTable<'_>, kind: Table, at: &Located<'_>, problems: &mut Vec<Diagnostic>) {
    let fields = kind.fields();
    for (key, value) in table {
        let name: &str = key.get_ref();
        if !fields.contains(&name) {
            let help = match closest(name, fields) {
                Some(known) => format!("did you mean `{known}`?"),
                None => format!("the keys {} are: {}", kind.describe(), fields.join(", ")),
            };
            problems.push(
                Diagnostic::indexed(
                    at.lines,
                    at.path,
                    at.source,
                    key.span(),
                    format!("unknown key `{name}` {}", kind.describe()),
                )
                .with_help(help),
            );
            continue;
        }
        match (kind.child(name), value.get_ref()) {
            (Some(Child::Table(child)), DeValue::Table(t)) => walk(t, child, at, problems),
            (Some(Child::Array(child)), DeValue::Array(items)) => {
                for item in items.iter() {
                    if let DeValue::Table(t) = item.get_ref() {
                        walk(t, child, at, problems);
                    }
                }
            }
            // Wrong types are serde's to report, with its own message.
            _ => {}
        }
    }
}

/// The known key nearest to `name`, if it is near enough to be a typo: at
/// most two edits, or a quarter of the key's length for long keys
/// (`max-concurency`), so that a short unrelated key is never suggested for
/// a long one.
fn closest(name: &str, fields: &[&'static str]) -> Option<&'static str> {
    fields
        .iter()
        .map(|f| (edit_distance(name, f), *f))
        .filter(|(d, f)| *d <= 2.max(f.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, f)| f)
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_come_from_the_schema() {
        let step = fields_of::<RawStep>();
        assert!(
            step.contains(&"plugin") && step.contains(&"needs") && step.contains(&"output-limit")
        );
        assert_eq!(
            fields_of::<RawRetries>(),
            ["attempts", "backoff", "multiplier", "max-backoff"]
        );
        assert_eq!(fields_of::<RawDirTable>(), ["host", "guest", "access"]);
    }

    #[test]
    fn typos_get_a_suggestion() {
        let step = fields_of::<RawStep>();
        assert_eq!(closest("timout", step), Some("timeout"));
        assert_eq!(closest("need", step), Some("needs"));
        assert_eq!(closest("frobnicate", step), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn every_unknown_key_is_reported_where_it_is() {
        let source = "[defaults]\ntimeot = \"1s\"\n[[pre-stop.steps]]\nname = \"a\"\nplugn = \"p\"\nallow = { htp = [] }\nconfig = { anything = 1 }\n";
        let doc = DeTable::parse(source).expect("valid toml");
        let problems = check(&doc, Path::new("l.toml"), source);
        let found: Vec<(String, usize)> = problems
            .iter()
            .map(|d| (d.message.clone(), d.line))
            .collect();
        assert_eq!(
            found,
            [
                ("unknown key `timeot` in [defaults]".to_string(), 2),
                ("unknown key `plugn` in a step of [pre-stop]".to_string(), 5),
                ("unknown key `htp` in `allow`".to_string(), 6),
            ]
        );
    }
}
