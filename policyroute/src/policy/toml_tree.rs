//! Reading the spanned TOML tree by hand rather than through serde derive: every value
//! keeps its span (serde's `Spanned` is lost inside untagged enums, which "a port or a
//! list" needs), every key path is known exactly, and all problems are collected instead
//! of stopping at the first.
use std::borrow::Cow;
use std::fmt::Display;
use std::ops::{Range, RangeInclusive};

use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::error::{escape_controls, key_near, line_of};
use super::ConfigError;

pub(super) type Value<'i> = Spanned<DeValue<'i>>;

/// The file being read and the problems found so far.
pub(super) struct Doc<'t> {
    pub file: &'t str,
    pub text: &'t str,
    errors: Vec<ConfigError>,
    /// Byte offsets where lines start: a line number is a binary search, not a scan (a
    /// policy of 100,000 rules asks for one per rule).
    line_starts: Vec<usize>,
}

/// A value and its key path (`rule[2].dport`).
#[derive(Clone, Copy)]
pub(super) struct Field<'a, 'i> {
    pub key: &'a str,
    pub value: &'a Value<'i>,
}

/// A table whose keys have been checked against the allowed ones.
pub(super) struct Section<'a, 'i> {
    pub key: String,
    pub span: Range<usize>,
    fields: Vec<(&'a str, String, &'a Value<'i>)>,
}

impl<'t> Doc<'t> {
    pub fn new(file: &'t str, text: &'t str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            file,
            text,
            errors: Vec::new(),
            line_starts,
        }
    }

    /// Parses the TOML syntax; a syntax error is reported alone.
    pub fn parse_tree(&self) -> Result<Spanned<DeTable<'t>>, ConfigError> {
        DeTable::parse(self.text).map_err(|e| {
            let line = line_of(self.text, e.span().map_or(0, |s| s.start));
            ConfigError::Invalid {
                file: self.file.to_owned(),
                line,
                key: key_near(self.text, line),
                message: e.message().to_owned(),
            }
        })
    }

    pub fn line(&self, span: &Range<usize>) -> usize {
        self.line_starts
            .partition_point(|&start| start <= span.start)
    }

    pub fn error(&mut self, span: &Range<usize>, key: &str, message: impl Display) {
        self.errors.push(ConfigError::Invalid {
            file: self.file.to_owned(),
            line: self.line(span),
            key: key.to_owned(),
            message: message.to_string(),
        });
    }

    /// A problem found elsewhere than in this document (a set's list file).
    pub fn push(&mut self, error: ConfigError) {
        self.errors.push(error);
    }

    /// The file this document is, as errors name it.
    pub fn file(&self) -> &str {
        self.file
    }

    pub fn error_count(&self) -> usize {
        self.errors.len()
    }

    pub fn finish<T>(self, value: T) -> Result<T, ConfigError> {
        ConfigError::from_all(self.errors).map(|()| value)
    }

    /// Checks that `value` is a table with only `allowed` keys.
    pub fn section<'a, 'i>(
        &mut self,
        key: &str,
        value: &'a Value<'i>,
        allowed: &[&str],
    ) -> Option<Section<'a, 'i>> {
        let DeValue::Table(table) = value.get_ref() else {
            self.mismatch(key, value, "a table");
            return None;
        };
        Some(self.table(key, value.span(), table, allowed))
    }

    pub fn table<'a, 'i>(
        &mut self,
        key: &str,
        span: Range<usize>,
        table: &'a DeTable<'i>,
        allowed: &[&str],
    ) -> Section<'a, 'i> {
        let mut fields = Vec::new();
        for (name, value) in table.iter() {
            let name: &'a str = name.get_ref();
            let path = join(key, &quoted(name));
            if allowed.contains(&name) {
                fields.push((name, path, value));
            } else {
                let expected = allowed.join(", ");
                self.error(
                    &value.span(),
                    &path,
                    format_args!("unknown key (expected one of: {expected})"),
                );
            }
        }
        Section {
            key: key.to_owned(),
            span,
            fields,
        }
    }

    pub fn mismatch(&mut self, key: &str, value: &Value<'_>, expected: &str) {
        let found = value.get_ref().type_str();
        self.error(
            &value.span(),
            key,
            format_args!("expected {expected}, found {found}"),
        );
    }

    pub fn string(&mut self, f: Field<'_, '_>) -> Option<String> {
        match f.value.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            _ => {
                self.mismatch(f.key, f.value, "a string");
                None
            }
        }
    }

    pub fn boolean(&mut self, f: Field<'_, '_>) -> Option<bool> {
        match f.value.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.mismatch(f.key, f.value, "true or false");
                None
            }
        }
    }

    /// An integer within `range`.
    pub fn int(&mut self, f: Field<'_, '_>, range: RangeInclusive<i64>) -> Option<i64> {
        let DeValue::Integer(i) = f.value.get_ref() else {
            self.mismatch(f.key, f.value, "an integer");
            return None;
        };
        let n = i64::from_str_radix(i.as_str(), i.radix()).ok();
        match n.filter(|n| range.contains(n)) {
            Some(n) => Some(n),
            None => {
                let (lo, hi) = (range.start(), range.end());
                // The integer as written: the toml crate lets control characters through
                // in one with underscores (`6_5<NUL>3`).
                let written = i.to_string();
                let written = escape_controls(&written);
                self.error(
                    &f.value.span(),
                    f.key,
                    format_args!("{written} is out of range ({lo} to {hi})"),
                );
                None
            }
        }
    }

    pub fn u32(&mut self, f: Field<'_, '_>) -> Option<u32> {
        self.int(f, 0..=i64::from(u32::MAX)).map(|n| n as u32)
    }

    /// The elements of an array, keyed `key[1]`, `key[2]`, ...
    pub fn array<'a, 'i>(&mut self, f: Field<'a, 'i>) -> Option<Vec<(String, &'a Value<'i>)>> {
        match f.value.get_ref() {
            DeValue::Array(items) => Some(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (format!("{}[{}]", f.key, i + 1), v))
                    .collect(),
            ),
            _ => {
                self.mismatch(f.key, f.value, "an array");
                None
            }
        }
    }
}

impl<'a, 'i> Section<'a, 'i> {
    pub fn get(&self, name: &str) -> Option<Field<'_, 'i>> {
        self.fields
            .iter()
            .find(|(n, _, _)| *n == name)
            .map(|(_, key, value)| Field { key, value })
    }

    /// The key path of a field of this section, present or not.
    pub fn key(&self, name: &str) -> String {
        join(&self.key, name)
    }

    /// A required field; reports its absence at the section's header.
    pub fn require(&self, doc: &mut Doc<'_>, name: &str) -> Option<Field<'_, 'i>> {
        let field = self.get(name);
        if field.is_none() {
            doc.error(&self.span, &self.key(name), "missing (required)");
        }
        field
    }
}

/// A key as TOML writes it: bare when it can be, else quoted and escaped. An error's key
/// path then names an empty key (`""`), or one with a dot or a newline in it, without
/// ambiguity and on the error's one line.
fn quoted(name: &str) -> Cow<'_, str> {
    let bare = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if !name.is_empty() && name.chars().all(bare) {
        return Cow::Borrowed(name);
    }
    let name = name.replace('\\', "\\\\").replace('"', "\\\"");
    Cow::Owned(format!("\"{}\"", escape_controls(&name)))
}

fn join(table: &str, name: &str) -> String {
    if table.is_empty() {
        name.to_owned()
    } else {
        format!("{table}.{name}")
    }
}
