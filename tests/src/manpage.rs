//! Manual pages read as an operator's `man` reads them: rendered by man-db and groff with
//! every warning on, and the pages they refer to.
use std::{path::Path, process::Command};

/// The pages the package ships.
pub const OURS: [(&str, &str); 2] = [("policyroute", "8"), ("policyroute.toml", "5")];

/// Pages of other packages the manual pages may refer to: iproute2's and systemd's, which
/// a system running policyroute has (`cargo xtask setup` installs both here).
pub const OTHERS: [(&str, &str); 7] = [
    ("ip-rule", "8"),
    ("ip-route", "8"),
    ("ip-netns", "8"),
    ("tc", "8"),
    ("systemd.service", "5"),
    ("systemctl", "1"),
    ("journalctl", "1"),
];

/// `man --warnings -l FILE` (plain or gzipped) at 80 columns: the text, and what man and
/// groff warned about. `groff -man -ww -z` checks the roff source too. The text is neither
/// hyphenated nor justified, so a page's name is never split across lines.
pub fn render(file: &Path) -> (String, String) {
    let out = Command::new("man")
        .args(["--warnings", "--nh", "--nj", "-l"])
        .arg(file)
        .env("MANWIDTH", "80")
        .env("MAN_KEEP_FORMATTING", "")
        .env_remove("MANPAGER")
        .env_remove("PAGER")
        .output()
        .expect("run man (cargo xtask setup installs man-db)");
    assert!(out.status.success(), "man -l {}: {out:?}", file.display());
    let mut warnings = String::from_utf8_lossy(&out.stderr).into_owned();
    let source = if file.extension().is_some_and(|e| e == "gz") {
        Command::new("zcat")
            .arg(file)
            .output()
            .expect("zcat")
            .stdout
    } else {
        std::fs::read(file).expect("read page")
    };
    let mut groff = Command::new("groff")
        .args(["-man", "-ww", "-z", "-Tutf8"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run groff (cargo xtask setup installs groff-base)");
    std::io::Write::write_all(&mut groff.stdin.take().unwrap(), &source).unwrap();
    let groff = groff.wait_with_output().unwrap();
    warnings.push_str(&String::from_utf8_lossy(&groff.stderr));
    (String::from_utf8_lossy(&out.stdout).into_owned(), warnings)
}

/// Every `name(N)` reference in rendered text.
pub fn references(text: &str) -> Vec<(String, String)> {
    let bytes = text.as_bytes();
    let mut refs = Vec::new();
    for (at, _) in text.match_indices('(') {
        let section = &bytes[at + 1..];
        if section.len() < 2 || !section[0].is_ascii_digit() || section[1] != b')' {
            continue;
        }
        let name_start = text[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || "._-".contains(c)))
            .map_or(0, |i| i + 1);
        let name = text[name_start..at].trim_end_matches('.');
        if !name.is_empty() {
            refs.push((name.to_string(), (section[0] as char).to_string()));
        }
    }
    refs
}

/// The references of `text` to pages that are neither ours nor in [`OTHERS`]. Names are
/// compared as `man` looks them up, ignoring case (the page's header and footer name it in
/// capitals).
pub fn unknown_references(text: &str) -> Vec<String> {
    references(text)
        .into_iter()
        .filter(|(name, section)| {
            !OURS
                .iter()
                .chain(&OTHERS)
                .any(|(n, s)| n.eq_ignore_ascii_case(name) && s == section)
        })
        .map(|(name, section)| format!("{name}({section})"))
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_references_in_text() {
        let refs = super::references(
            "see policyroute.toml(5), ip-rule(8); (0-63) and f(x) are none. policyroute(8).",
        );
        let refs: Vec<String> = refs.iter().map(|(n, s)| format!("{n}({s})")).collect();
        assert_eq!(
            refs,
            ["policyroute.toml(5)", "ip-rule(8)", "policyroute(8)"]
        );
        assert_eq!(
            super::unknown_references("POLICYROUTE(8) policyroute-apply(8) tc(8)"),
            ["policyroute-apply(8)"]
        );
    }
}
