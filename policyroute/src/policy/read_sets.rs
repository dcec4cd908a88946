//! `[[set]]`: a name and its prefixes, inline (`prefixes = [...]`) or from a list file
//! (`file = "lists/de.txt"`, relative to the policy file).
use std::{path::Path, sync::Arc};

use super::read::{non_empty, report_duplicates};
use super::sets::{parse_list, parse_prefix, PrefixSet};
use super::toml_tree::{Doc, Field, Section};
use super::ConfigError;

pub(super) const KEYS: &[&str] = &["name", "file", "prefixes"];

/// A set as read; `None` parts had an error reported.
pub(super) struct SetDraft {
    pub key: String,
    pub name: Option<(String, std::ops::Range<usize>)>,
    pub set: Option<Arc<PrefixSet>>,
}

pub(super) fn set(doc: &mut Doc<'_>, sec: &Section<'_, '_>) -> SetDraft {
    let name = sec.require(doc, "name").and_then(|f| {
        let name = non_empty(doc, f)?;
        if name.starts_with('@') || name.contains(char::is_whitespace) {
            let msg = "a set name has no '@' (rules add it) and no spaces";
            doc.error(&f.value.span(), f.key, msg);
            return None;
        }
        Some((name, f.value.span()))
    });
    let prefixes = match (sec.get("file"), sec.get("prefixes")) {
        (Some(_), Some(p)) => {
            let msg = "a set has either file or prefixes, not both";
            doc.error(&p.value.span(), p.key, msg);
            None
        }
        (None, None) => {
            let msg = "a set needs its prefixes: file = PATH or prefixes = [...]";
            doc.error(&sec.span, &sec.key, msg);
            None
        }
        (Some(f), None) => list_file(doc, f).map(|p| (Some(p.0), p.1)),
        (None, Some(f)) => inline(doc, f).map(|p| (None, p)),
    };
    let set = match (&name, prefixes) {
        (Some((name, _)), Some((file, prefixes))) => {
            let set = PrefixSet::new(name.clone(), file, prefixes);
            if set.prefixes.is_empty() {
                let from = set
                    .file
                    .as_deref()
                    .map_or(String::new(), |f| format!(" ({f} lists none)"));
                let msg = format!(
                    "set {name:?} is empty{from}: a rule using it would silently match nothing"
                );
                doc.error(&sec.span, &sec.key, msg);
                None
            } else {
                Some(Arc::new(set))
            }
        }
        _ => None,
    };
    SetDraft {
        key: sec.key.clone(),
        name,
        set,
    }
}

/// The file's prefixes; a bad line is reported as `FILE:LINE: key: problem`, with FILE as
/// the policy names it.
fn list_file(doc: &mut Doc<'_>, f: Field<'_, '_>) -> Option<(String, Vec<ipnet::IpNet>)> {
    let written = non_empty(doc, f)?;
    let path = Path::new(doc.file())
        .parent()
        .unwrap_or(Path::new(""))
        .join(&written);
    let text = match read_list(&path) {
        Ok(t) => t,
        Err(e) => {
            let msg = format!("cannot read the list {}: {e}", path.display());
            doc.error(&f.value.span(), f.key, msg);
            return None;
        }
    };
    match parse_list(&text) {
        Ok(prefixes) => Some((written, prefixes)),
        Err((line, e)) => {
            doc.push(ConfigError::Invalid {
                file: written,
                line,
                key: f.key.to_owned(),
                message: e.to_string(),
            });
            None
        }
    }
}

/// A list file's text: a regular file of at most `bounded_file::MAX_POLICY_FILE` bytes, so
/// `/dev/zero` or a FIFO cannot stall or swell a read.
fn read_list(path: &Path) -> std::io::Result<String> {
    super::bounded_file::read_to_string(path, super::bounded_file::MAX_POLICY_FILE)
}

fn inline(doc: &mut Doc<'_>, f: Field<'_, '_>) -> Option<Vec<ipnet::IpNet>> {
    let items = doc.array(f)?;
    let mut out = Vec::with_capacity(items.len());
    let mut ok = true;
    for (key, value) in &items {
        let Some(text) = doc.string(Field { key, value }) else {
            ok = false;
            continue;
        };
        match parse_prefix(&text) {
            Ok(p) => out.push(p),
            Err(e) => {
                doc.error(&value.span(), key, e);
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

/// Set names are unique.
pub(super) fn check(doc: &mut Doc<'_>, sets: &[SetDraft]) {
    let names = sets.iter().filter_map(|s| {
        let (name, span) = s.name.as_ref()?;
        Some((format!("{name:?}"), span.clone(), format!("{}.name", s.key)))
    });
    report_duplicates(doc, names, "set name");
}
