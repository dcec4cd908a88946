//! The layering check `cargo xtask test` runs with the lints: imports in the product run
//! one way, policy → plan → kernel → control → present (docs/architecture.md), and the
//! shipped binary embeds only the programs the product loads.
//!
//! It reads every `use` and every path of `policyroute/src` with `syn`, resolving
//! `super::` and `self::` against the module a path is written in, so a grouped import
//! (`use crate::{control::x, present}`) or an inline path counts as much as a `use` line.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context};
use syn::visit::Visit;

/// Each top module of the product's library and its layer: a module imports only from
/// lower layers, never from another module of its own layer. `reference` (the judge) and
/// `import` (a front end that writes policy text) sit beside `plan`; `health` (the checks'
/// probes) beside `kernel`; `manual` (the manual pages' text) beside `present`.
const LAYERS: &[(&str, u8)] = &[
    ("policy", 0),
    ("plan", 1),
    ("reference", 1),
    ("import", 1),
    ("kernel", 2),
    ("health", 2),
    ("control", 3),
    ("present", 4),
    ("manual", 4),
];

/// The eBPF objects the product embeds: what it loads and nothing else (benchmark
/// programs live in the bench crate).
const PRODUCT_OBJECTS: &[&str] = &["policyroute-classifier", "policyroute-probes"];

pub fn check(root: &Path) -> anyhow::Result<()> {
    let mut wrong = imports(&root.join("policyroute/src"))?;
    wrong.extend(embedded(&root.join("policyroute"))?);
    if !wrong.is_empty() {
        bail!("the layering does not hold:\n  {}", wrong.join("\n  "));
    }
    println!("xtask: layering holds ({} layers)", LAYERS.len());
    Ok(())
}

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|&(_, l)| l)
}

/// Every import that runs the wrong way, as `file:line: A imports B`.
fn imports(src: &Path) -> anyhow::Result<Vec<String>> {
    let mut wrong = Vec::new();
    for file in rust_files(src)? {
        let rel = file.strip_prefix(src)?;
        let module = module_of(rel);
        // The binary's files (main.rs and what it declares) sit on top of every layer.
        let Some(own) = module.first().and_then(|m| layer(m)) else {
            continue;
        };
        let text = std::fs::read_to_string(&file)?;
        let ast = syn::parse_file(&text).with_context(|| format!("parsing {}", file.display()))?;
        let mut paths = Paths {
            module: module.clone(),
            found: Vec::new(),
        };
        paths.visit_file(&ast);
        for (target, line) in paths.found {
            let Some(to) = layer(&target) else { continue };
            if target != module[0] && to >= own {
                wrong.push(format!(
                    "policyroute/src/{}:{line}: {} (layer {own}) imports {target} (layer {to})",
                    rel.display(),
                    module[0]
                ));
            }
        }
    }
    Ok(wrong)
}

/// `control/run.rs` → `[control, run]`; `control/mod.rs` → `[control]`.
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The top modules a file's paths reach, with the line each is written on.
struct Paths {
    /// The module the visitor is in (inline `mod` blocks included).
    module: Vec<String>,
    found: Vec<(String, usize)>,
}

impl Paths {
    /// The top module a path starting with these segments names, if it leaves the file's
    /// own names (`crate::x`, or enough `super`s to reach the crate root).
    fn resolve(&mut self, segments: &[String], line: usize) {
        let mut at = self.module.clone();
        let mut rest = segments;
        match rest.first().map(String::as_str) {
            Some("crate") => {
                at.clear();
                rest = &rest[1..];
            }
            Some("self") => rest = &rest[1..],
            Some("super") => {
                while rest.first().is_some_and(|s| s == "super") {
                    at.pop();
                    rest = &rest[1..];
                }
            }
            _ => return,
        }
        let top = at.first().or(rest.first());
        if let Some(top) = top {
            self.found.push((top.clone(), line));
        }
    }
}

impl<'ast> Visit<'ast> for Paths {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        self.module.push(m.ident.to_string());
        syn::visit::visit_item_mod(self, m);
        self.module.pop();
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        let mut prefixes = Vec::new();
        use_paths(&u.tree, &mut Vec::new(), &mut prefixes);
        let line = u.use_token.span.start().line;
        for p in prefixes {
            self.resolve(&p, line);
        }
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segments: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        if let Some(first) = p.segments.first() {
            self.resolve(&segments, first.ident.span().start().line);
        }
        syn::visit::visit_path(self, p);
    }
}

/// Each leaf of a use tree as its full path (a glob or `self` ends at its parent).
fn use_paths(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            use_paths(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) if n.ident == "self" => out.push(prefix.clone()),
        syn::UseTree::Name(n) => out.push([prefix.clone(), vec![n.ident.to_string()]].concat()),
        syn::UseTree::Rename(r) => out.push([prefix.clone(), vec![r.ident.to_string()]].concat()),
        syn::UseTree::Glob(_) => out.push(prefix.clone()),
        syn::UseTree::Group(g) => {
            for t in &g.items {
                use_paths(t, prefix, out);
            }
        }
    }
}

/// What the product's sources embed (`include_bytes*!` of a built object), against
/// `PRODUCT_OBJECTS`.
fn embedded(product: &Path) -> anyhow::Result<Vec<String>> {
    let mut wrong = Vec::new();
    let allowed: BTreeSet<&str> = PRODUCT_OBJECTS.iter().copied().collect();
    for file in rust_files(&product.join("src"))? {
        let text = std::fs::read_to_string(&file)?;
        let embeds = text
            .lines()
            .enumerate()
            .filter(|(_, l)| l.contains("include_bytes"));
        for (i, line) in embeds {
            for name in object_names(line) {
                if !allowed.contains(name) {
                    wrong.push(format!(
                        "{}:{}: the product embeds {name}, which it does not load",
                        file.display(),
                        i + 1
                    ));
                }
            }
        }
    }
    Ok(wrong)
}

/// The `policyroute-NAME` object names a line mentions in quotes or after a `/`.
fn object_names(line: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("policyroute-") {
        let before = rest[..i].chars().last();
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
            .unwrap_or(tail.len());
        if matches!(before, Some('"') | Some('/')) {
            names.push(&tail[..end]);
        }
        rest = &tail[end..];
    }
    names
}

/// The `.rs` files under `dir`, in subdirectories too, sorted.
pub fn rust_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(rust_files(&path)?);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grouped_import_and_a_super_path_are_found() {
        let ast = syn::parse_file(
            "use crate::{kernel::x, present::{self, y}};\n\
             fn f() { super::super::health::g(); }",
        )
        .unwrap();
        let mut p = Paths {
            module: vec!["control".into(), "run".into()],
            found: Vec::new(),
        };
        p.visit_file(&ast);
        let tops: BTreeSet<_> = p.found.iter().map(|(t, _)| t.as_str()).collect();
        assert!(tops.contains("present") && tops.contains("kernel") && tops.contains("health"));
    }

    #[test]
    fn the_product_holds_to_its_layers() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        check(root).unwrap();
    }

    #[test]
    fn object_names_are_read_from_quotes_and_paths() {
        let line =
            r#"include!(concat!(env!("OUT_DIR"), "/policyroute-noop")); "policyroute-probes""#;
        assert_eq!(
            object_names(line),
            ["policyroute-noop", "policyroute-probes"]
        );
    }
}
