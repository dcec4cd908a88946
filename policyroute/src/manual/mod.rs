//! The manual pages, as `policyroute man` prints them and the Debian package installs them:
//!
//! - policyroute(8), the commands: NAME, SYNOPSIS, the options and every command with its
//!   options come from the CLI's clap definitions (so the page says what `--help` says),
//!   the rest (EXIT STATUS, FILES, EXAMPLES, SEE ALSO) from `policyroute.8.md` beside this
//!   file;
//! - policyroute.toml(5), the policy file: docs/policy.md, the reference a unit test keeps
//!   complete (`the_policy_reference_names_every_key`), converted by [`markdown`].
//!
//! Both are rendered by the binary (`policyroute man --section 5` embeds docs/policy.md)
//! rather than by `cargo xtask dist`: the binary then always carries the pages of its own
//! version, wherever it was installed from, the tests check the pages without building a
//! package, and the package gets them from the binary as it gets its completions. The
//! price is the document's few kilobytes in the binary.
pub mod markdown;

use roff::{bold, italic, roman, Inline, Roff};

/// The policy file reference (its first line is its `#` title, the page's NAME instead).
const POLICY_MD: &str = include_str!("../../../docs/policy.md");
/// What policyroute(8) says beyond the CLI definitions: text for DESCRIPTION up to the
/// first `##`, then EXIT STATUS, FILES, EXAMPLES and SEE ALSO.
const COMMANDS_MD: &str = include_str!("policyroute.8.md");
/// What policyroute.toml(5) says beyond docs/policy.md.
const POLICY_TAIL_MD: &str = "\
## FILES

| file | meaning |
|---|---|
| `/etc/policyroute/policy.toml` | The policy `policyroute.service` applies and keeps in force. |
| `/etc/policyroute/example.toml` | An example: a router with a LAN and three uplinks. |
| `/usr/share/doc/policyroute/README.md` | The README: whole policies, and what each feature does. |

## SEE ALSO

`policyroute`(8), `ip-rule`(8), `ip-route`(8), `tc`(8)
";

/// `.TH` arguments after name and section: no date (the build is reproducible), the
/// source with its version, the manual.
fn title(page: &mut Roff, name: &str, section: &str, manual: &str) {
    let source = format!("policyroute {}", env!("CARGO_PKG_VERSION"));
    // An empty argument must be quoted, or it is no argument at all.
    page.control("TH", [name, section, "\"\"", source.as_str(), manual]);
}

/// policyroute(8), from the CLI's definitions (`cli` is `Cli::command()`).
pub fn commands(mut cli: clap::Command) -> String {
    cli.build();
    let (description, sections) = COMMANDS_MD
        .split_once("\n## ")
        .expect("policyroute.8.md has sections");
    let mut page = Roff::new();
    title(&mut page, "POLICYROUTE", "8", "System Administration");
    page.control("SH", ["NAME"]);
    page.text([roman(format!(
        "policyroute - {}",
        lowercase_first(env!("CARGO_PKG_DESCRIPTION"))
    ))]);

    page.control("SH", ["SYNOPSIS"]);
    let mut synopsis = vec![bold("policyroute"), roman(" ")];
    let globals: Vec<&clap::Arg> = cli.get_arguments().filter(|a| a.is_global_set()).collect();
    for arg in &globals {
        synopsis.extend(usage(arg));
        synopsis.push(roman(" "));
    }
    synopsis.extend([
        italic("COMMAND"),
        roman(" ["),
        italic("OPTIONS"),
        roman("]"),
    ]);
    page.text(synopsis);
    page.control("br", []);
    page.text([
        bold("policyroute"),
        roman(" "),
        bold("--help"),
        roman(" | "),
        bold("--version"),
    ]);

    page.control("SH", ["DESCRIPTION"]);
    paragraphs(&mut page, &about(&cli), true);
    page.control("PP", []);
    rendered(markdown::render(description, &mut page), "policyroute.8.md");

    page.control("SH", ["OPTIONS"]);
    page.text([roman("Before or after the command:")]);
    for arg in cli.get_arguments() {
        option(&mut page, arg);
    }

    page.control("SH", ["COMMANDS"]);
    for sub in cli.get_subcommands().filter(|s| s.get_name() != "help") {
        command(&mut page, sub);
    }

    rendered(
        markdown::render(&format!("## {sections}"), &mut page),
        "policyroute.8.md",
    );
    finish(&page)
}

/// policyroute.toml(5), from docs/policy.md.
pub fn policy_file() -> String {
    let (heading, body) = POLICY_MD
        .split_once('\n')
        .expect("docs/policy.md has a title");
    assert!(
        heading.starts_with("# "),
        "docs/policy.md starts with its title"
    );
    let mut page = Roff::new();
    title(&mut page, "POLICYROUTE.TOML", "5", "File Formats");
    page.control("SH", ["NAME"]);
    page.text([roman(
        "policyroute.toml - the policy file of policyroute: gateways, groups, sets, rules \
         and where the classifier attaches",
    )]);
    page.control("SH", ["SYNOPSIS"]);
    page.text([bold("/etc/policyroute/policy.toml")]);
    page.control("SH", ["DESCRIPTION"]);
    rendered(markdown::render(body, &mut page), "docs/policy.md");
    rendered(
        markdown::render(POLICY_TAIL_MD, &mut page),
        "the page's tail",
    );
    finish(&page)
}

/// The documents are part of the source: one outside the subset is a bug the unit tests
/// catch, not a condition to handle at run time.
fn rendered(result: Result<(), markdown::Unsupported>, document: &str) {
    if let Err(e) = result {
        panic!("{document}: {e}");
    }
}

/// The rendered page, with every character outside ASCII as a groff special character
/// (`\[u2014]`): groff reads its input as Latin-1 unless a preprocessor converts it.
fn finish(page: &Roff) -> String {
    let mut out = String::new();
    for ch in page.render().chars() {
        if ch.is_ascii() {
            out.push(ch);
        } else {
            out.push_str(&format!("\\[u{:04X}]", ch as u32));
        }
    }
    out
}

fn lowercase_first(s: &str) -> String {
    let mut chars = s.chars();
    chars.next().map_or_else(String::new, |c| {
        c.to_lowercase().chain(chars).collect::<String>()
    })
}

fn about(cmd: &clap::Command) -> String {
    cmd.get_long_about()
        .or_else(|| cmd.get_about())
        .map(|s| s.to_string())
        .unwrap_or_default()
}

/// Help text as paragraphs, `code` in bold; the first needs no `.PP` after a heading.
fn paragraphs(page: &mut Roff, text: &str, first_after_heading: bool) {
    for (k, para) in text
        .split("\n\n")
        .filter(|p| !p.trim().is_empty())
        .enumerate()
    {
        if k > 0 || !first_after_heading {
            page.control("PP", []);
        }
        page.text(help_inline(&sentence(&para.replace('\n', " "))));
    }
}

/// clap drops the full stop of a one-sentence help text; prose on the page keeps it (not
/// after a closing backtick: a command example ends there).
fn sentence(text: &str) -> String {
    let text = text.trim_end();
    if text.is_empty() || text.ends_with(['.', ':', '!', '?', '`']) {
        text.to_string()
    } else {
        format!("{text}.")
    }
}

/// Inline code of a help text in bold. Help texts are plain text, not the markdown subset:
/// what is not a pair of backticks stays as written.
fn help_inline(text: &str) -> Vec<Inline> {
    markdown::code_spans(text).unwrap_or_else(|| vec![roman(text)])
}

/// `-c FILE`, `--json`, `SHELL`: an argument as the synopsis shows it.
fn usage(arg: &clap::Arg) -> Vec<Inline> {
    let value = || {
        arg.get_value_names()
            .map(|v| v.join(" "))
            .unwrap_or_else(|| arg.get_id().as_str().to_uppercase())
    };
    let mut out = Vec::new();
    if arg.is_positional() {
        out.push(italic(value()));
    } else {
        let flag = match (arg.get_short(), arg.get_long()) {
            (Some(s), _) => format!("-{s}"),
            (None, Some(l)) => format!("--{l}"),
            (None, None) => String::new(),
        };
        out.push(bold(flag));
        if arg.get_action().takes_values() {
            out.push(roman(" "));
            out.push(italic(value()));
        }
    }
    if matches!(arg.get_action(), clap::ArgAction::Append) {
        out.push(roman(" ..."));
    }
    if arg.is_required_set() {
        out
    } else {
        let mut optional = vec![roman("[")];
        optional.extend(out);
        optional.push(roman("]"));
        optional
    }
}

/// A tagged paragraph for one option: `-c, --config FILE`, its help and its default.
fn option(page: &mut Roff, arg: &clap::Arg) {
    if arg.is_hide_set() {
        return;
    }
    let mut tag = Vec::new();
    if arg.is_positional() {
        tag.extend(
            usage(arg)
                .into_iter()
                .filter(|i| *i != roman("[") && *i != roman("]")),
        );
    } else {
        if let Some(s) = arg.get_short() {
            tag.push(bold(format!("-{s}")));
        }
        if let Some(l) = arg.get_long() {
            if !tag.is_empty() {
                tag.push(roman(", "));
            }
            tag.push(bold(format!("--{l}")));
        }
        if arg.get_action().takes_values() {
            let names = arg.get_value_names().map(|v| v.join(" "));
            tag.push(roman(" "));
            tag.push(italic(names.unwrap_or_else(|| arg.get_id().to_string())));
        }
    }
    page.control("TP", []);
    page.text(tag);
    let help = arg
        .get_long_help()
        .or_else(|| arg.get_help())
        .map(|h| h.to_string())
        .unwrap_or_default();
    let mut body = help_inline(&sentence(&help.replace('\n', " ")));
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    if !defaults.is_empty() && arg.get_action().takes_values() {
        body.push(roman(" Default: "));
        body.push(bold(defaults.join(",")));
        body.push(roman("."));
    }
    page.text(body);
}

/// One command: its synopsis, description and options (global ones are under OPTIONS).
fn command(page: &mut Roff, sub: &clap::Command) {
    let own: Vec<&clap::Arg> = sub
        .get_arguments()
        .filter(|a| !a.is_global_set() && !a.is_hide_set())
        .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
        .collect();
    page.control("SS", [sub.get_name()]);
    let mut synopsis = vec![bold(format!("policyroute {}", sub.get_name()))];
    // Arguments of a required group (explain's --iif or --local) are shown as a choice.
    let mut grouped: Vec<&str> = Vec::new();
    for group in sub.get_groups().filter(|g| g.is_required_set()) {
        let members: Vec<&clap::Arg> = group
            .get_args()
            .filter_map(|id| own.iter().copied().find(|a| a.get_id() == id))
            .collect();
        synopsis.push(roman(" {"));
        for (k, arg) in members.iter().enumerate() {
            if k > 0 {
                synopsis.push(roman(" | "));
            }
            synopsis.extend(
                usage(arg)
                    .into_iter()
                    .filter(|i| *i != roman("[") && *i != roman("]")),
            );
            grouped.push(arg.get_id().as_str());
        }
        synopsis.push(roman("}"));
    }
    for arg in own
        .iter()
        .filter(|a| !grouped.contains(&a.get_id().as_str()))
    {
        synopsis.push(roman(" "));
        synopsis.extend(usage(arg));
    }
    page.text(synopsis);
    paragraphs(page, &about(sub), false);
    for arg in own {
        option(page, arg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_reference_renders_as_a_manual_page() {
        let page = policy_file();
        assert!(page.contains(".TH POLICYROUTE.TOML 5"), "{page}");
        // Every section of docs/policy.md is a section of the page, every key a paragraph.
        for heading in POLICY_MD.lines().filter(|l| l.starts_with("## ")) {
            let title = heading[3..].replace('`', "");
            let shown = if title.starts_with('[') {
                title
            } else {
                title.to_uppercase()
            };
            assert!(
                page.contains(&format!(".SH \"{shown}\""))
                    || page.contains(&format!(".SH {shown}\n")),
                "{shown}"
            );
        }
        assert!(page.contains(".TP\n\\fBmark_mask\\fR\n"), "{page}");
        assert!(page.contains("\\fBmembers[].weight\\fR"), "{page}");
        // Nothing of the markdown is left, and nothing outside ASCII.
        for raw in ["```", "|---", "| `", "## "] {
            assert!(!page.contains(raw), "{raw} in {page}");
        }
        assert!(page.is_ascii());
        assert!(page.contains("\\[u2014]"), "the table's em dash");
    }

    #[test]
    fn the_commands_page_tail_is_in_the_subset() {
        let (description, sections) = COMMANDS_MD.split_once("\n## ").unwrap();
        markdown::render(description, &mut Roff::new()).unwrap();
        markdown::render(&format!("## {sections}"), &mut Roff::new()).unwrap();
        markdown::render(POLICY_TAIL_MD, &mut Roff::new()).unwrap();
    }
}
