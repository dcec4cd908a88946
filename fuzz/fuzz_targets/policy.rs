//! Policy files as arbitrary bytes through load and validation: the reader must never
//! panic, and every rejection must say where (file, a line of the input, a key).
#![no_main]

use libfuzzer_sys::fuzz_target;

use policyroute::policy::rt_tables::RtTables;
use policyroute::policy::{ConfigError, Policy};

const LABEL: &str = "fuzz.toml";
/// The table names the seed policies use, so `table = "NAME"` reaches the accepting path.
const RT_TABLES: &str = "100 isp2\n101 cheap\n200 uplink2\n";

fuzz_target!(|data: &[u8]| {
    // Raw bytes rather than a lossy or UTF-8-only view: `Policy::load` reads files as
    // bytes, and a file that is not UTF-8 must be rejected at a line too.
    let tables = RtTables::builtin().with_text(RT_TABLES);
    // An error at the end of the text is on the line after the last newline.
    let lines = data.iter().filter(|&&b| b == b'\n').count() + 1;
    let policy = match Policy::parse_bytes(data, LABEL, &tables) {
        Ok(policy) => policy,
        Err(err) => return assert_located(&err, lines),
    };
    // What parsing accepted must not be rejected later, where no line is known.
    for rule in policy.classifier_rules() {
        if let Err(e) = rule.matcher.validate() {
            panic!("accepted rule {} fails validation: {e}", rule.name);
        }
    }
    // With no device present, every device the policy names is reported, at its line.
    let named = policy.gateways.len() + policy.attach.ingress.len() + policy.attach.egress.len();
    match policy.check_devices(|_| false) {
        Ok(()) => assert_eq!(named, 0, "devices named but none reported"),
        Err(err) => {
            assert_eq!(err.errors().len(), named, "{err}");
            assert_located(&err, lines);
        }
    }
});

fn assert_located(err: &ConfigError, lines: usize) {
    let all = err.errors();
    assert!(!all.is_empty(), "an error with no problem in it");
    for e in all {
        let ConfigError::Invalid {
            file,
            line,
            key,
            message,
        } = e
        else {
            panic!("a rejection without a line: {e}");
        };
        assert_eq!(file, LABEL);
        assert!((1..=lines).contains(line), "line {line} of {lines}: {e}");
        assert!(key_parts_named(key), "key {key:?}: {e}");
        assert!(!message.is_empty(), "no message: {e}");
    }
    // `Many` prints one problem per line; a newline inside one would split it, and other
    // control characters from the file would reach the operator's terminal raw.
    let shown = err.to_string();
    assert_eq!(shown.lines().count(), err.errors().len(), "{shown:?}");
    assert!(
        !shown.chars().any(|c| c.is_control() && c != '\n'),
        "{shown:?}"
    );
}

/// Every dotted part of a key path is there (so the path is not empty): `""` quotes an
/// empty key, while `attach.` or `a..b` would be an empty key the reader failed to quote.
/// Dots inside quotes are part of a key (a guess from a malformed line may leave a quote
/// open).
fn key_parts_named(key: &str) -> bool {
    let (mut quoted, mut escaped, mut part_len) = (false, false, 0);
    for c in key.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '.' if !quoted => {
                if part_len == 0 {
                    return false;
                }
                part_len = 0;
                continue;
            }
            _ => {}
        }
        part_len += 1;
    }
    part_len > 0
}
