//! Completions and the manual page come from the same definitions as `--help`, so they
//! name every command there is.
use std::process::Command;

use policyroute_tests::{cli, fixture::TempFile};

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
    assert!(page.contains(".TH policyroute 8"), "{page}");
    for command in COMMANDS {
        assert!(page.contains(command), "no {command} in the manual page");
    }
    // Taking over others' objects in the way: apply, run and the exit status say how.
    assert!(page.matches("\\-\\-adopt").count() >= 3, "{page}");
    // The exit statuses, as ControlError::exit_status gives them.
    let exit = page
        .split(".SH \"EXIT STATUS\"")
        .nth(1)
        .expect("an EXIT STATUS section");
    for code in ["0", "1", "2", "3", "4"] {
        assert!(
            exit.contains(&format!("\\fB{code}\\fR")),
            "no {code} in {exit}"
        );
    }
}
