//! Errors of the policy file, each located by file, line and key.
use std::borrow::Cow;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::str::Utf8Error;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `line` is 1-based; `key` is a path like `rule[2].dport` (1-based indices).
    #[error("{file}:{line}: {key}: {message}")]
    Invalid {
        file: String,
        line: usize,
        key: String,
        message: String,
    },
    /// Several problems, in file order, one per line; each is `Invalid`.
    #[error("{}", one_per_line(.0))]
    Many(Vec<ConfigError>),
}

impl ConfigError {
    /// The individual problems (`Many` flattened; otherwise just this one).
    pub fn errors(&self) -> Vec<&ConfigError> {
        match self {
            ConfigError::Many(all) => all.iter().flat_map(ConfigError::errors).collect(),
            one => vec![one],
        }
    }

    /// `Ok` for no errors, the error itself for one, `Many` (sorted by line) for more.
    pub(crate) fn from_all(mut errors: Vec<ConfigError>) -> Result<(), ConfigError> {
        errors.sort_by_key(|e| match e {
            ConfigError::Invalid { line, .. } => *line,
            _ => 0,
        });
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(ConfigError::Many(errors)),
        }
    }
}

fn one_per_line(errors: &[ConfigError]) -> String {
    let mut out = String::new();
    for (i, e) in errors.iter().enumerate() {
        let sep = if i == 0 { "" } else { "\n" };
        let _ = write!(out, "{sep}{e}");
    }
    out
}

/// The error for text that is not UTF-8 (as TOML must be), at its first invalid byte.
pub(super) fn not_utf8(bytes: &[u8], e: &Utf8Error, file: &str) -> ConfigError {
    let valid = &bytes[..e.valid_up_to()];
    // `valid_up_to` promises this prefix decodes; the fallback only avoids a panic path.
    let text = std::str::from_utf8(valid).unwrap_or_default();
    let line = line_of(text, text.len());
    let bad = bytes.get(e.valid_up_to()).copied().unwrap_or_default();
    ConfigError::Invalid {
        file: file.to_owned(),
        line,
        key: key_near(text, line),
        message: format!("invalid UTF-8 (byte {bad:#04x}); a policy file is UTF-8 text"),
    }
}

/// 1-based line of a byte offset.
pub(super) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Best guess at the key a TOML syntax error is in, since the parser reports only a
/// position: the last table header before `line` (with its 1-based array index) and the
/// key at the start of `line`. Falls back to `syntax`.
pub(super) fn key_near(text: &str, line: usize) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    let mut table = String::new();
    for (i, l) in text.lines().take(line).enumerate() {
        let l = l.trim();
        let at_error = i + 1 == line;
        if let Some(name) = header(l, "[[", "]]") {
            let n = match counts.iter_mut().find(|(c, _)| *c == name) {
                Some((_, n)) => {
                    *n += 1;
                    *n
                }
                None => {
                    counts.push((name, 1));
                    1
                }
            };
            table = format!("{}[{n}]", escape_controls(name));
        } else if let Some(name) = header(l, "[", "]") {
            table = escape_controls(name).into_owned();
        } else if at_error {
            return join_key(&table, bare_key(l));
        }
    }
    join_key(&table, None)
}

/// Control characters as TOML escapes them (`\t`, `\u001B`), so an error stays one line
/// of plain text whatever the file holds.
pub(super) fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The name in a `[name]` or `[[name]]` line, if every dotted part of it is non-empty:
/// `[a..b]` names no table, so the key falls back to the one before.
fn header<'a>(line: &'a str, open: &str, close: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(open)?;
    let name = rest.split(close).next()?.trim();
    let parts = name.split('.').all(|p| !p.trim().is_empty());
    (rest.contains(close) && parts && !name.starts_with('[')).then_some(name)
}

/// The bare (possibly dotted) key a `key = value` line starts with. Each part must be
/// non-empty: `.` or `a..b` name nothing, so they fall back to the table.
fn bare_key(line: &str) -> Option<&str> {
    let key = line.split('=').next()?.trim();
    let bare = |c: char| c.is_ascii_alphanumeric() || "_-".contains(c);
    let part = |p: &str| !p.is_empty() && p.chars().all(bare);
    (line.contains('=') && key.split('.').all(part)).then_some(key)
}

fn join_key(table: &str, key: Option<&str>) -> String {
    match (table.is_empty(), key) {
        (true, None) => "syntax".to_owned(),
        (true, Some(k)) => k.to_owned(),
        (false, None) => table.to_owned(),
        (false, Some(k)) => format!("{table}.{k}"),
    }
}
