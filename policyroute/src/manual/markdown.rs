//! Markdown to roff, for the subset the manual pages are written in: headings (`#`, `##`,
//! `###`), paragraphs, tables, fenced code blocks and inline code. Anything else (lists,
//! links, emphasis, quotes, HTML, indented code) is refused with its line, so a document
//! cannot drift out of the subset unnoticed: the unit tests render docs/policy.md.
//!
//! Why not a crate: mandown (the maintained markdown-to-man converter on crates.io)
//! renders GitHub tables as raw `| a | b |` lines and lists with mdoc macros (`.Bl`) that
//! `man --warnings` rejects; pulldown-cmark parses CommonMark well, but the roff output,
//! the actual work, would still be ours, and this subset parses in a few dozen lines.
//! So no dependency joins the binary for its manual page.
use roff::{bold, italic, roman, Inline, Roff};

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {what} (the manual pages render headings, paragraphs, tables, fenced code blocks and inline code)")]
pub struct Unsupported {
    pub line: usize,
    pub what: &'static str,
}

fn unsupported(line: usize, what: &'static str) -> Unsupported {
    Unsupported { line, what }
}

/// Appends the blocks of `md` to `page`, which has just started a section (`.SH`): the
/// first paragraph needs no `.PP`. `#` and `##` become sections (`.SH`; `##` headings in
/// capitals but for their code), `###` subsections (`.SS`). A table becomes one tagged
/// paragraph (`.TP`) per row: the first cell is the tag, the middle cells are named by
/// their column (`type: ...; default: ...`), the last cell is the text. Inline code is set
/// in bold, as man pages set literal text.
pub fn render(md: &str, page: &mut Roff) -> Result<(), Unsupported> {
    let lines: Vec<&str> = md.lines().collect();
    let mut i = 0;
    let mut after_heading = true;
    while i < lines.len() {
        let line = lines[i];
        if line.trim().is_empty() {
            i += 1;
            continue;
        }
        if line.starts_with("```") {
            let start = i + 1;
            i += 1;
            let body_start = i;
            while i < lines.len() && !lines[i].starts_with("```") {
                i += 1;
            }
            if i == lines.len() {
                return Err(unsupported(start, "a code block without its closing ```"));
            }
            page.control("PP", [])
                .control("RS", ["4"])
                .control("nf", []);
            for code in &lines[body_start..i] {
                page.text([roman(*code)]);
            }
            page.control("fi", []).control("RE", []);
            i += 1;
            after_heading = false;
        } else if line.starts_with('#') {
            heading(line, i + 1, page)?;
            i += 1;
            after_heading = true;
        } else if line.starts_with('|') {
            let start = i;
            while i < lines.len() && lines[i].starts_with('|') {
                i += 1;
            }
            table(&lines[start..i], start + 1, page)?;
            after_heading = false;
        } else {
            if !after_heading {
                page.control("PP", []);
            }
            while i < lines.len() && !lines[i].trim().is_empty() && !starts_block(lines[i]) {
                refuse_block(lines[i], i + 1)?;
                page.text(inline(lines[i].trim_start(), i + 1)?);
                i += 1;
            }
            after_heading = false;
        }
    }
    Ok(())
}

/// Lines that end a paragraph by starting a block of their own.
fn starts_block(line: &str) -> bool {
    line.starts_with('#') || line.starts_with('|') || line.starts_with("```")
}

/// Blocks outside the subset, recognized by how their lines start.
fn refuse_block(line: &str, n: usize) -> Result<(), Unsupported> {
    let t = line.trim_start();
    if line.starts_with("    ") || line.starts_with('\t') {
        return Err(unsupported(n, "an indented code block"));
    }
    if ["- ", "* ", "+ "].iter().any(|m| t.starts_with(m)) {
        return Err(unsupported(n, "a list"));
    }
    let digits = t.chars().take_while(char::is_ascii_digit).count();
    if digits > 0 && (t[digits..].starts_with(". ") || t[digits..].starts_with(") ")) {
        return Err(unsupported(n, "a numbered list"));
    }
    if t.starts_with('>') {
        return Err(unsupported(n, "a block quote"));
    }
    if t.starts_with('<') {
        return Err(unsupported(n, "HTML"));
    }
    if ["---", "***", "___", "==="]
        .iter()
        .any(|r| t.starts_with(r))
    {
        return Err(unsupported(n, "a rule or an underlined heading"));
    }
    Ok(())
}

fn heading(line: &str, n: usize, page: &mut Roff) -> Result<(), Unsupported> {
    let level = line.chars().take_while(|c| *c == '#').count();
    let text = line[level..]
        .strip_prefix(' ')
        .ok_or_else(|| unsupported(n, "a heading without a space after its #"))?;
    if text.contains('"') || text.contains('\\') {
        return Err(unsupported(n, "a heading with a quote or a backslash"));
    }
    let parts: Vec<&str> = text.split('`').collect();
    if parts.len().is_multiple_of(2) {
        return Err(unsupported(n, "an unmatched ` in a heading"));
    }
    // Code keeps its case; the rest of a section heading is in capitals.
    let title: String = parts
        .iter()
        .enumerate()
        .map(|(k, p)| {
            if k % 2 == 0 && level <= 2 {
                p.to_uppercase()
            } else {
                p.to_string()
            }
        })
        .collect();
    match level {
        1 | 2 => page.control("SH", [title.as_str()]),
        3 => page.control("SS", [title.as_str()]),
        _ => return Err(unsupported(n, "a heading deeper than ###")),
    };
    Ok(())
}

fn table(rows: &[&str], first: usize, page: &mut Roff) -> Result<(), Unsupported> {
    let cells: Vec<Vec<&str>> = rows
        .iter()
        .enumerate()
        .map(|(k, row)| split_row(row, first + k))
        .collect::<Result<_, _>>()?;
    let header = &cells[0];
    let separator = cells.get(1).is_some_and(|s| {
        s.iter()
            .all(|c| !c.is_empty() && c.chars().all(|ch| "-:".contains(ch)))
    });
    if !separator {
        return Err(unsupported(first + 1, "a table without its |---| line"));
    }
    if header.len() < 2 {
        return Err(unsupported(first, "a table of one column"));
    }
    for (k, row) in cells.iter().enumerate().skip(2) {
        let n = first + k;
        if row.len() != header.len() {
            return Err(unsupported(n, "a table row with another number of cells"));
        }
        page.control("TP", []);
        page.text(inline(row[0], n)?);
        let last = row.len() - 1;
        if last > 1 {
            let mut facts = Vec::new();
            for (name, cell) in header[1..last].iter().zip(&row[1..last]) {
                if !facts.is_empty() {
                    facts.push(roman("; "));
                }
                facts.push(italic(format!("{name}:")));
                facts.push(roman(" "));
                facts.extend(inline(cell, n)?);
            }
            facts.push(roman("."));
            page.text(facts);
            page.control("br", []);
        }
        page.text(inline(row[last], n)?);
    }
    Ok(())
}

/// The cells of `| a | b |`, split at the bars outside inline code.
fn split_row(row: &str, n: usize) -> Result<Vec<&str>, Unsupported> {
    let inner = row
        .trim()
        .strip_prefix('|')
        .and_then(|r| r.strip_suffix('|'))
        .ok_or_else(|| unsupported(n, "a table row that does not end with |"))?;
    let mut cells = Vec::new();
    let mut in_code = false;
    let mut start = 0;
    for (at, ch) in inner.char_indices() {
        match ch {
            '`' => in_code = !in_code,
            '|' if !in_code => {
                cells.push(inner[start..at].trim());
                start = at + 1;
            }
            '\\' => return Err(unsupported(n, "a backslash escape in a table")),
            _ => {}
        }
    }
    cells.push(inner[start..].trim());
    Ok(cells)
}

/// Text with inline code (`` `x` ``, set in bold); emphasis, links and HTML are refused.
pub fn inline(text: &str, n: usize) -> Result<Vec<Inline>, Unsupported> {
    for (mark, what) in [
        ("``", "a code span of two backticks"),
        ("](", "a link"),
        ("**", "strong emphasis"),
        ("__", "strong emphasis"),
        ("<http", "an autolink"),
    ] {
        if text.contains(mark) {
            return Err(unsupported(n, what));
        }
    }
    let spans = code_spans(text).ok_or_else(|| unsupported(n, "an unmatched `"))?;
    for plain in text.split('`').step_by(2) {
        if plain.contains('<') && plain.contains('>') {
            return Err(unsupported(n, "HTML"));
        }
        let emphasis = |c: char| {
            plain.starts_with(c)
                || plain.contains(&format!(" {c}"))
                || plain.contains(&format!("{c} "))
        };
        if emphasis('*') || emphasis('_') {
            return Err(unsupported(n, "emphasis"));
        }
    }
    Ok(spans)
}

/// Text with its code spans (between backticks) in bold; `None` when a backtick is
/// unmatched.
pub fn code_spans(text: &str) -> Option<Vec<Inline>> {
    let parts: Vec<&str> = text.split('`').collect();
    if parts.len().is_multiple_of(2) {
        return None;
    }
    let inlines = parts
        .iter()
        .enumerate()
        .filter(|(_, p)| !p.is_empty())
        .map(|(k, p)| if k % 2 == 1 { bold(*p) } else { roman(*p) });
    Some(inlines.collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roff(md: &str) -> String {
        let mut page = Roff::new();
        render(md, &mut page).unwrap();
        page.to_roff()
    }

    #[test]
    fn headings_paragraphs_and_inline_code() {
        let out = roff("## Top level\n\nKeys before the first `[table]`,\nall of them.\n\n### `check = { ... }`\n\nProbed.\n\nAgain.\n");
        assert_eq!(
            out,
            ".SH \"TOP LEVEL\"\nKeys before the first \\fB[table]\\fR,\nall of them.\n\
             .SS \"check = { ... }\"\nProbed.\n.PP\nAgain.\n"
        );
    }

    #[test]
    fn code_blocks_keep_their_lines_and_escape_them() {
        let out = roff("Text.\n\n```toml\n.leading = \"dot\"\na-b = 1\n```\n");
        assert_eq!(
            out,
            "Text.\n.PP\n.RS 4\n.nf\n\\&.leading = \"dot\"\na\\-b = 1\n.fi\n.RE\n"
        );
    }

    #[test]
    fn table_rows_become_tagged_paragraphs() {
        let out = roff(
            "| key | type | default | meaning |\n|---|---|---|---|\n\
             | `name` | string | required | How `status` names it. |\n",
        );
        assert_eq!(
            out,
            ".TP\n\\fBname\\fR\n\\fItype:\\fR string; \\fIdefault:\\fR required.\n.br\n\
             How \\fBstatus\\fR names it.\n"
        );
        let two = roff("| status | meaning |\n|---|---|\n| `0` | Success. |\n");
        assert_eq!(two, ".TP\n\\fB0\\fR\nSuccess.\n");
    }

    #[test]
    fn bars_inside_code_do_not_split_cells() {
        assert_eq!(split_row("| `a|b` | c |", 1).unwrap(), vec!["`a|b`", "c"]);
    }

    #[test]
    fn constructs_outside_the_subset_are_refused_with_their_line() {
        for (md, line, what) in [
            ("Text.\n\n- item\n", 3, "a list"),
            ("Text\n1. one\n", 2, "a numbered list"),
            ("> quoted\n", 1, "a block quote"),
            ("See [the README](README.md).\n", 1, "a link"),
            ("Very **strong**.\n", 1, "strong emphasis"),
            ("An *emphasized* word.\n", 1, "emphasis"),
            ("Half `open.\n", 1, "an unmatched `"),
            (
                "```\nnever closed\n",
                1,
                "a code block without its closing ```",
            ),
            ("#### Deep\n", 1, "a heading deeper than ###"),
            (
                "| a | b |\n| c | d |\n",
                2,
                "a table without its |---| line",
            ),
            (
                "| a | b |\n|---|---|\n| c |\n",
                3,
                "a table row with another number of cells",
            ),
            ("Text\n\n    indented\n", 3, "an indented code block"),
        ] {
            let err = render(md, &mut Roff::new()).unwrap_err();
            assert_eq!((err.line, err.what), (line, what), "{md:?}");
        }
    }
}
