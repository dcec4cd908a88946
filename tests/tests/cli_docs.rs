//! Completions and policyroute(8) come from the same definitions as `--help`, so they name
//! every command there is; policyroute.toml(5) comes from docs/policy.md. Both pages render
//! as `man` shows them, without warnings, and refer to no page that does not exist.
use std::process::Command;

use policyroute_tests::{cli, fixture::TempFile, manpage};

const COMMANDS: [&str; 11] = [
    "validate",
    "apply",
    "run",
    "status",
    "check",
    "explain",
    "trace",
    "flush",
    "import",
    "completions",
    "man",
];

fn output(args: &[&str]) -> String {
    cli::succeeds(Command::new(cli::bin()).args(args))
}

#[test]
fn the_bash_completion_is_valid_and_complete() {
    let script = output(&["completions", "bash"]);
    let file = TempFile::new("policyroute.bash", &script);
    let syntax = Command::new("bash")
        .args(["-n", file.arg()])
        .status()
        .unwrap();
    assert!(syntax.success(), "bash -n rejects the script");
    for command in COMMANDS {
        assert!(script.contains(command), "no {command} in the completion");
    }
    for shell in ["zsh", "fish"] {
        assert!(output(&["completions", shell]).contains("apply"), "{shell}");
    }
}

#[test]
fn the_manual_page_lists_every_command() {
    let page = output(&["man"]);
    assert!(page.contains(".TH POLICYROUTE 8"), "{page}");
    // Each command has its subsection, with its synopsis and options, on this page:
    // no other page is referred to for them.
    for command in COMMANDS {
        assert!(
            page.contains(&format!(".SS {command}\n\\fBpolicyroute {command}\\fR")),
            "no subsection for {command} in the manual page"
        );
    }
    for option in [
        "\\-\\-adopt",
        "\\-\\-flush\\-on\\-exit",
        "\\-\\-iptables\\-save",
        "\\-\\-section",
    ] {
        assert!(page.contains(option), "no {option} in the manual page");
    }
    // Taking over others' objects in the way: apply, run and the exit status say how.
    assert!(page.matches("\\-\\-adopt").count() >= 3, "{page}");
    let section = |name: &str| {
        page.split(&format!(".SH {name}\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("no {name} section"))
            .split("\n.SH ")
            .next()
            .unwrap()
            .to_string()
    };
    // The exit statuses, as ControlError::exit_status and `check` give them.
    let exit = section("\"EXIT STATUS\"");
    for code in ["0", "1", "2", "3", "4"] {
        assert!(
            exit.contains(&format!(".TP\n\\fB{code}\\fR\n")),
            "no {code} in {exit}"
        );
    }
    let files = section("FILES");
    for file in [
        "/etc/policyroute/policy.toml",
        "/run/policyroute/net\\-INODE.daemon",
        "/sys/fs/bpf/policyroute/net\\-INODE/",
        "/usr/lib/systemd/system/policyroute.service",
    ] {
        assert!(files.contains(file), "no {file} in {files}");
    }
    section("EXAMPLES");
    assert!(section("\"SEE ALSO\"").contains("\\fBpolicyroute.toml\\fR(5)"));
}

/// Both pages, as `man` renders them: no warning from man or groff, and every page they
/// refer to exists (ours, or iproute2's and systemd's).
#[test]
fn the_manual_pages_render_cleanly_and_refer_only_to_pages_that_exist() {
    for (name, section) in manpage::OURS {
        let page = output(&["man", "--section", section]);
        let file = TempFile::new(&format!("{name}.{section}"), &page);
        let (text, warnings) = manpage::render(&file.path);
        assert!(warnings.is_empty(), "{name}({section}): {warnings}");
        assert!(text.lines().count() > 100, "{name}({section}): {text}");
        let unknown = manpage::unknown_references(&text);
        assert!(
            unknown.is_empty(),
            "{name}({section}) refers to {unknown:?}"
        );
    }
    for (name, section) in manpage::OTHERS {
        let found = Command::new("man")
            .args(["-w", section, name])
            .output()
            .unwrap();
        assert!(
            found.status.success(),
            "no manual page {name}({section}) here"
        );
    }
}

/// policyroute.toml(5) is docs/policy.md: its sections and every key of its tables.
#[test]
fn the_policy_file_page_is_the_policy_reference() {
    let page = output(&["man", "--section", "5"]);
    let file = TempFile::new("policyroute.toml.5", &page);
    let (text, _) = manpage::render(&file.path);
    let doc = include_str!("../../docs/policy.md");
    for line in doc.lines() {
        if let Some(key) = line
            .strip_prefix("| `")
            .and_then(|rest| rest.split('`').next())
        {
            // The tag starts its line; a short one has the text beside it.
            assert!(
                text.lines()
                    .any(|l| l.split_whitespace().next() == Some(key)),
                "no paragraph for key {key} in policyroute.toml(5)"
            );
        }
        if let Some(heading) = line.strip_prefix("## ") {
            let title = heading.replace('`', "");
            assert!(
                text.to_uppercase().contains(&title.to_uppercase()),
                "no section {title} in policyroute.toml(5)"
            );
        }
    }
}
