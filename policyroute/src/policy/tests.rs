use std::net::IpAddr;
use std::path::Path;

use super::*;
use crate::policy::matcher::Family;
use crate::policy::ports::{PortRange, PortSet};

const FILE: &str = "policy.toml";

fn tables() -> RtTables {
    RtTables::parse("100 isp2\n101 cheap\n")
}

/// Lines joined, so a test reads its line numbers off the array (index + 1).
fn doc(lines: &[&str]) -> String {
    lines.join("\n")
}

fn parse(text: &str) -> Result<Policy, ConfigError> {
    Policy::parse(text, FILE, &tables())
}

/// Asserts that parsing fails with an error starting `policy.toml:LINE: KEY: ` whose
/// message contains `message`.
#[track_caller]
fn assert_error(lines: &[&str], line: usize, key: &str, message: &str) {
    let err = match parse(&doc(lines)) {
        Ok(policy) => panic!("parsed, expected an error at {key}: {policy:#?}"),
        Err(e) => e.to_string(),
    };
    let prefix = format!("{FILE}:{line}: {key}: ");
    let found = err
        .lines()
        .any(|l| l.starts_with(&prefix) && l.contains(message));
    assert!(found, "expected `{prefix}...{message}...`, got:\n{err}");
}

/// A valid gateway section, for tests about something else.
const GATEWAY: [&str; 4] = [
    "[[gateway]]",
    "name = \"isp2\"",
    "dev = \"wan2\"",
    "table = 100",
];

fn with_gateway(rest: &[&'static str]) -> Vec<&'static str> {
    GATEWAY.iter().chain(rest).copied().collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const EXAMPLE: &str = r#"mark_mask = 0xffffffff
rule_priority = 10000
main_routes_first = true

[[gateway]]
name = "isp2"
dev = "wan2"
via = "203.0.113.2"
table = 100
mark = 4

[[rule]]
name = "web-via-isp2"
proto = "tcp"
src = "192.168.99.0/24"
dst = "0.0.0.0/0"
sport = 80
dport = [80, 443]
dscp = 46
gateway = "isp2"

[attach]
ingress = ["lan0"]
"#;

#[test]
fn full_example_parses_to_the_expected_policy() {
    let policy = parse(EXAMPLE).unwrap();
    let expected = Policy {
        mark_mask: 0xffff_ffff,
        rule_priority: 10_000,
        main_routes_first: true,
        fast_path: false,
        sticky_timeout: 300,
        gateways: vec![Gateway {
            name: "isp2".into(),
            dev: "wan2".into(),
            via: vec![ip("203.0.113.2")],
            table: 100,
            table_name: None,
            mark: 4,
            sticky: false,
            check: None,
        }],
        groups: Vec::new(),
        sets: Vec::new(),
        rules: vec![PolicyRule {
            name: "web-via-isp2".into(),
            matcher: Match {
                proto: Some(6),
                src: Some("192.168.99.0/24".parse().unwrap()),
                dst: Some("0.0.0.0/0".parse().unwrap()),
                sport: Some(PortSet::single(80)),
                dport: PortSet::new(vec![PortRange::single(80), PortRange::single(443)]),
                dscp: Some(46),
                ..Match::default()
            },
            target: Target::Gateway("isp2".into()),
            when_down: Default::default(),
        }],
        attach: Attach {
            ingress: vec!["lan0".into()],
            ..Attach::default()
        },
        origin: Origin::default(),
    };
    assert_eq!(policy, expected);
    assert_eq!(policy.origin.file, FILE);
    assert_eq!(policy.origin.gateway_dev, vec![7]);
    assert_eq!(policy.origin.ingress, vec![23]);
}

#[test]
fn defaults() {
    let policy = parse("").unwrap();
    assert_eq!(policy.mark_mask, DEFAULT_MARK_MASK);
    assert_eq!(policy.rule_priority, DEFAULT_RULE_PRIORITY);
    assert!(policy.main_routes_first);
    assert!(policy.gateways.is_empty() && policy.rules.is_empty());
    assert!(policy.attach.ingress.is_empty());

    let policy = parse(&doc(&with_gateway(&[
        "[[rule]]",
        "gateway = \"isp2\"",
        "[[rule]]",
        "mark = 7",
        "[attach]",
    ])))
    .unwrap();
    let gw = &policy.gateways[0];
    assert!(gw.via.is_empty(), "no via: a device route");
    assert_eq!(gw.mark, 1, "first derived mark under the full mask");
    let names: Vec<&str> = policy.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["rule-1", "rule-2"]);
    assert_eq!(
        policy.rules[0].matcher,
        Match::default(),
        "no conditions: any"
    );
    assert!(policy.attach.ingress.is_empty());
}

#[test]
fn values_in_their_other_forms() {
    let policy = parse(&doc(&[
        "main_routes_first = false",
        "[[gateway]]",
        "name = \"isp2\"",
        "dev = \"wan2\"",
        "via = [\"2001:db8::1\", \"203.0.113.1\"]",
        "table = \"isp2\"",
        "[[rule]]",
        "proto = 17",
        "src = \"2001:db8::5\"",
        "sport = \"1024-65535\"",
        "dport = [\"53\", 5353, \"6000-6010\"]",
        "gateway = \"isp2\"",
        "[[rule]]",
        "proto = \"ICMPv6\"",
        "dst = \"2001:db8::/32\"",
        "mark = 0x10",
    ]))
    .unwrap();
    assert!(!policy.main_routes_first);
    let gw = &policy.gateways[0];
    assert_eq!(gw.via, vec![ip("2001:db8::1"), ip("203.0.113.1")]);
    assert_eq!((gw.table, gw.table_name.as_deref()), (100, Some("isp2")));
    let m = &policy.rules[0].matcher;
    assert_eq!(m.src, Some("2001:db8::5/128".parse().unwrap()));
    assert_eq!(m.sport.as_ref().unwrap().to_string(), "1024-65535");
    assert_eq!(m.dport.as_ref().unwrap().to_string(), "53,5353,6000-6010");
    assert_eq!(policy.rules[1].matcher.proto, Some(58));
    assert_eq!(policy.rules[1].target, Target::Mark(0x10));
}

#[test]
fn derived_marks_are_unique_and_inside_the_mask() {
    let policy = parse(&doc(&[
        "mark_mask = 0xff00",
        "[[gateway]]",
        "name = \"a\"",
        "dev = \"wan1\"",
        "table = 1",
        "[[gateway]]",
        "name = \"b\"",
        "dev = \"wan2\"",
        "table = 2",
        "mark = 0x200",
        "[[gateway]]",
        "name = \"c\"",
        "dev = \"wan3\"",
        "table = 3",
        "[[gateway]]",
        "name = \"d\"",
        "dev = \"wan4\"",
        "table = 4",
        "[[rule]]",
        "mark = 0x300",
    ]))
    .unwrap();
    let marks: Vec<u32> = policy.gateways.iter().map(|g| g.mark).collect();
    // 0x200 is b's, 0x300 a rule's: the derived ones skip both.
    assert_eq!(marks, vec![0x100, 0x200, 0x400, 0x500]);
}

#[test]
fn derived_marks_run_out() {
    let gw = |n: &'static str, t: &'static str| ["[[gateway]]", n, "dev = \"wan1\"", t];
    let lines: Vec<&str> = ["mark_mask = 0x1"]
        .into_iter()
        .chain(gw("name = \"a\"", "table = 1"))
        .chain(gw("name = \"b\"", "table = 2"))
        .collect();
    assert_error(
        &lines,
        6,
        "gateway[2].mark",
        "no free mark under mark_mask 0x1",
    );
}

#[test]
fn classifier_rules_resolve_targets_in_file_order() {
    let policy = parse(&doc(&with_gateway(&[
        "mark = 4",
        "[[rule]]",
        "name = \"raw\"",
        "mark = 9",
        "[[rule]]",
        "name = \"via\"",
        "proto = \"tcp\"",
        "gateway = \"isp2\"",
    ])))
    .unwrap();
    let rules = policy.classifier_rules();
    let got: Vec<(&str, u32)> = rules.iter().map(|r| (r.name.as_str(), r.mark)).collect();
    assert_eq!(got, [("raw", 9), ("via", 4)]);
    assert_eq!(rules[1].matcher.proto, Some(6));
    assert_eq!(policy.gateway("isp2").map(|g| g.table), Some(100));
    assert!(policy.gateway("nope").is_none());
}

#[test]
fn serde_round_trip() {
    let policy = parse(EXAMPLE).unwrap();
    let json = serde_json::to_string(&policy).unwrap();
    assert_eq!(serde_json::from_str::<Policy>(&json).unwrap(), policy);
}

#[test]
fn example_file_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/two-uplinks.toml");
    let policy = Policy::load(&path, &RtTables::builtin()).unwrap();
    assert_eq!(policy.gateways.len(), 2);
    assert_eq!(policy.gateway("cheap").map(|g| g.mark), Some(1));
    assert!(policy.rules.len() >= 4);
    assert!(policy
        .classifier_rules()
        .iter()
        .all(|r| r.matcher.validate().is_ok()));
}

#[test]
fn load_reports_a_missing_file() {
    let err = Policy::load(Path::new("/nonexistent/policy.toml"), &tables()).unwrap_err();
    assert!(matches!(err, ConfigError::Io { .. }), "{err}");
    assert!(err.to_string().starts_with("/nonexistent/policy.toml: "));
}

#[test]
fn load_labels_errors_with_the_path() {
    let path = std::env::temp_dir().join(format!("policyroute-config-{}.toml", std::process::id()));
    std::fs::write(&path, "\nbogus = 1\n").unwrap();
    let err = Policy::load(&path, &tables()).unwrap_err();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        err.to_string(),
        format!("{}:2: bogus: unknown key (expected one of: mark_mask, rule_priority, main_routes_first, fast_path, sticky_timeout, gateway, group, set, rule, attach)", path.display())
    );
}

#[test]
fn bytes_that_are_not_utf8_are_located() {
    let mut bytes = doc(&["[[gateway]]", "name = \"a\"", "dev = \"wan"]).into_bytes();
    bytes.extend_from_slice(b"\xff2\"\n");
    let expected = "3: gateway[1].dev: invalid UTF-8 (byte 0xff); a policy file is UTF-8 text";
    let err = Policy::parse_bytes(&bytes, FILE, &tables()).unwrap_err();
    assert_eq!(err.to_string(), format!("{FILE}:{expected}"));
    // `load` reads bytes, so a file gets the same located error instead of an I/O one.
    let path = std::env::temp_dir().join(format!("policyroute-utf8-{}.toml", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    let err = Policy::load(&path, &tables()).unwrap_err();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(err.to_string(), format!("{}:{expected}", path.display()));
}

#[test]
fn check_devices_names_the_missing_ones() {
    let policy = parse(EXAMPLE).unwrap();
    assert!(policy.check_devices(|_| true).is_ok());
    let err = policy.check_devices(|d| d == "wan2").unwrap_err();
    match &err {
        ConfigError::Invalid {
            file, line, key, ..
        } => {
            assert_eq!(
                (file.as_str(), *line, key.as_str()),
                (FILE, 23, "attach.ingress[1]")
            );
        }
        other => panic!("{other}"),
    }
    let err = policy.check_devices(|_| false).unwrap_err().to_string();
    assert_eq!(
        err,
        "policy.toml:7: gateway[1].dev: device wan2 does not exist\n\
         policy.toml:23: attach.ingress[1]: device lan0 does not exist"
    );
}

/// Found by fuzzing: the list of defined gateways showed a NUL in a name raw. Device
/// names (which may hold control characters, as the kernel's do) had the same problem.
#[test]
fn names_in_messages_escape_control_characters() {
    assert_error(
        &[
            "[[gateway]]",
            "name = \"isp2\\u0000\"",
            "dev = \"wan\\u001b2\"",
            "table = 100",
            "[[rule]]",
            "gateway = \"isp2\"",
        ],
        6,
        "rule[1].gateway",
        "unknown gateway or group \"isp2\" (defined: isp2\\u0000)",
    );
    let policy = parse(&doc(&[
        "[[gateway]]",
        "name = \"isp2\"",
        "dev = \"wan\\u001b2\"",
        "table = 100",
    ]))
    .unwrap();
    assert_eq!(policy.gateways[0].dev, "wan\u{1b}2");
    let err = policy.check_devices(|_| false).unwrap_err().to_string();
    assert_eq!(
        err,
        "policy.toml:3: gateway[1].dev: device wan\\u001B2 does not exist"
    );
}

/// Found by the 30 s fuzz run in `cargo xtask test`: the toml crate reads `6_5<NUL>3` as
/// an integer, and the out-of-range message showed the NUL raw.
#[test]
fn integers_in_messages_escape_control_characters() {
    assert_error(
        &["mark_mask = 6_5\u{0}3"],
        1,
        "mark_mask",
        "65\\u00003 is out of range",
    );
}

#[test]
fn all_errors_are_reported_in_line_order() {
    let err = parse(&doc(&[
        "[[rule]]",
        "dport = \"443-80\"",
        "gateway = \"nope\"",
        "[[gateway]]",
        "name = \"a\"",
        "dev = \"wan1\"",
        "table = 254",
    ]))
    .unwrap_err();
    let ConfigError::Many(all) = &err else {
        panic!("expected several errors: {err}");
    };
    let lines: Vec<usize> = all
        .iter()
        .map(|e| match e {
            ConfigError::Invalid { line, .. } => *line,
            other => panic!("{other}"),
        })
        .collect();
    assert_eq!(lines, [2, 3, 7]);
    assert_eq!(err.errors().len(), 3);
}

// One test per kind of invalid input. Each asserts file, line and key.

#[test]
fn toml_syntax_errors() {
    assert_error(
        &["[[gateway]]", "name = \"a\"", "dev = wan2"],
        3,
        "gateway[1].dev",
        "",
    );
    assert_error(&["[[rule]]", "dport = [80,"], 2, "rule[1].dport", "");
    assert_error(
        &["mark_mask = 1", "mark_mask = 2"],
        2,
        "mark_mask",
        "duplicate key",
    );
    assert_error(&["[attach", "ingress = []"], 1, "syntax", "");
}

/// Found by fuzzing: the key of a syntax error is guessed from the raw header line, and a
/// tab or an escape character in it reached the error (and the operator's terminal) raw.
#[test]
fn syntax_error_keys_escape_control_characters() {
    assert_error(&["[[gate\tway]]"], 1, "gate\\tway[1]", "");
    assert_error(&["[at\u{1b}[2Jtach]", "x"], 1, "at\\u001B[2Jtach", "");
    let err = parse("[[gate\tway]]").unwrap_err().to_string();
    assert!(!err.chars().any(char::is_control), "{err:?}");
}

/// Found by fuzzing: `.=` was blamed on the key `.`, and `[\0e..]` on a table of that
/// name: neither names anything.
#[test]
fn syntax_error_keys_have_no_empty_parts() {
    assert_error(&[".="], 1, "syntax", "");
    assert_error(&["[attach]", "a..b = 1"], 2, "attach", "");
    assert_error(&["[attach]", "local. = true"], 2, "attach", "");
    assert_error(&["[attach]", "x.local = tru"], 2, "attach.x.local", "");
    assert_error(&["[a..b]"], 1, "syntax", "");
    assert_error(&["[attach]", "[[.rule]]"], 2, "attach", "");
}

#[test]
fn unknown_keys() {
    assert_error(&["colour = \"blue\""], 1, "colour", "unknown key");
    assert_error(
        &with_gateway(&["metric = 5"]),
        5,
        "gateway[1].metric",
        "unknown key",
    );
    assert_error(
        &with_gateway(&["[[rule]]", "gateway = \"isp2\"", "port = 80"]),
        7,
        "rule[1].port",
        "unknown key",
    );
    assert_error(
        &["[attach]", "egres = [\"lan0\"]"],
        2,
        "attach.egres",
        "unknown key",
    );
}

/// Found writing the fuzz target: keys that are not bare were shown raw, so `"" = 1` had
/// an empty key and a newline in a quoted key split the error over two lines.
#[test]
fn unknown_keys_that_need_quotes() {
    assert_error(&["\"\" = 1"], 1, "\"\"", "unknown key");
    assert_error(&["[attach]", "\"\" = 1"], 2, "attach.\"\"", "unknown key");
    assert_error(&["'a.b' = 1"], 1, "\"a.b\"", "unknown key");
    assert_error(
        &["[attach]", "\"x\\ny\" = 1"],
        2,
        "attach.\"x\\ny\"",
        "unknown key",
    );
    assert_error(
        &["\"q\\\"\\u0001\" = 1"],
        1,
        "\"q\\\"\\u0001\"",
        "unknown key",
    );
    let err = parse("\"x\\ny\" = 1\n\"\" = 2").unwrap_err().to_string();
    assert_eq!(err.lines().count(), 2, "one line per problem:\n{err}");
}

#[test]
fn wrong_types() {
    assert_error(
        &["mark_mask = \"0xff\""],
        1,
        "mark_mask",
        "expected an integer, found string",
    );
    assert_error(
        &["main_routes_first = 1"],
        1,
        "main_routes_first",
        "expected true or false, found integer",
    );
    assert_error(
        &["rule_priority = 1.5"],
        1,
        "rule_priority",
        "expected an integer, found float",
    );
    assert_error(
        &["[gateway]", "name = \"a\""],
        1,
        "gateway",
        "expected an array of tables ([[gateway]])",
    );
    assert_error(
        &["[[gateway]]", "name = \"a\"", "dev = 5", "table = 1"],
        3,
        "gateway[1].dev",
        "expected a string, found integer",
    );
    assert_error(
        &with_gateway(&["[[rule]]", "gateway = \"isp2\"", "dport = 1.5"]),
        7,
        "rule[1].dport",
        "expected a port number",
    );
    assert_error(
        &with_gateway(&["[[rule]]", "gateway = \"isp2\"", "sport = [80, true]"]),
        7,
        "rule[1].sport[2]",
        "found boolean",
    );
    assert_error(
        &["attach = 1"],
        1,
        "attach",
        "expected a table, found integer",
    );
    assert_error(
        &["[attach]", "ingress = \"lan0\""],
        2,
        "attach.ingress",
        "expected an array, found string",
    );
    assert_error(
        &["mark_mask = 0x1_0000_0000"],
        1,
        "mark_mask",
        "out of range",
    );
    assert_error(&["rule_priority = -1"], 1, "rule_priority", "out of range");
}

#[test]
fn missing_required_gateway_keys() {
    assert_error(
        &["[[gateway]]", "name = \"a\"", "table = 1"],
        1,
        "gateway[1].dev",
        "missing",
    );
    assert_error(
        &["[[gateway]]", "dev = \"a\"", "table = 1"],
        1,
        "gateway[1].name",
        "missing",
    );
    assert_error(
        &["[[gateway]]", "name = \"a\"", "dev = \"a\""],
        1,
        "gateway[1].table",
        "missing",
    );
    assert_error(
        &["[[gateway]]", "name = \"\"", "dev = \"a\"", "table = 1"],
        2,
        "gateway[1].name",
        "must not be empty",
    );
}

#[test]
fn bad_device_names() {
    assert_error(
        &[
            "[[gateway]]",
            "name = \"a\"",
            "dev = \"a-very-long-device0\"",
            "table = 1",
        ],
        3,
        "gateway[1].dev",
        "longer than 15",
    );
    assert_error(
        &["[attach]", "ingress = [\"lan0\", \"lan 1\"]"],
        2,
        "attach.ingress[2]",
        "not a valid device name",
    );
    assert_error(
        &["[attach]", "ingress = [\"lan0\",", "  \"lan0\"]"],
        3,
        "attach.ingress[2]",
        "duplicate device \"lan0\"",
    );
}

#[test]
fn duplicate_gateway_names() {
    let mut lines = with_gateway(&[]);
    lines.extend([
        "[[gateway]]",
        "name = \"isp2\"",
        "dev = \"wan3\"",
        "table = 101",
    ]);
    assert_error(
        &lines,
        6,
        "gateway[2].name",
        "duplicate gateway name \"isp2\" (first at gateway[1].name, line 2)",
    );
}

#[test]
fn duplicate_rule_names() {
    let lines = with_gateway(&[
        "[[rule]]",
        "name = \"web\"",
        "gateway = \"isp2\"",
        "[[rule]]",
        "name = \"web\"",
        "gateway = \"isp2\"",
    ]);
    assert_error(&lines, 9, "rule[2].name", "duplicate rule name \"web\"");
    // A default name counts too; it is reported at the rule's header.
    let lines = with_gateway(&[
        "[[rule]]",
        "name = \"rule-2\"",
        "mark = 1",
        "[[rule]]",
        "mark = 1",
    ]);
    assert_error(&lines, 8, "rule[2].name", "duplicate rule name \"rule-2\"");
}

#[test]
fn marks_outside_the_mask() {
    assert_error(
        &[
            "mark_mask = 0xff00",
            "[[gateway]]",
            "name = \"a\"",
            "dev = \"a\"",
            "table = 1",
            "mark = 0x10",
        ],
        6,
        "gateway[1].mark",
        "mark 0x10 is outside mark_mask 0xff00",
    );
    assert_error(
        &["mark_mask = 0xff", "[[rule]]", "mark = 0x100"],
        3,
        "rule[1].mark",
        "outside mark_mask 0xff",
    );
}

#[test]
fn mark_mask_zero() {
    assert_error(&["", "mark_mask = 0"], 2, "mark_mask", "non-zero");
}

#[test]
fn gateway_mark_zero() {
    assert_error(
        &with_gateway(&["mark = 0"]),
        5,
        "gateway[1].mark",
        "mark 0 means unmarked",
    );
}

#[test]
fn shared_gateway_marks() {
    let mut lines = with_gateway(&["mark = 4"]);
    lines.extend([
        "[[gateway]]",
        "name = \"b\"",
        "dev = \"wan3\"",
        "table = 101",
        "mark = 0x4",
    ]);
    assert_error(
        &lines,
        10,
        "gateway[2].mark",
        "duplicate mark 0x4 (first at gateway[1].mark, line 5)",
    );
}

#[test]
fn rule_targets() {
    assert_error(
        &with_gateway(&["[[rule]]", "gateway = \"isp3\""]),
        6,
        "rule[1].gateway",
        "unknown gateway or group \"isp3\" (defined: isp2)",
    );
    assert_error(
        &with_gateway(&["[[rule]]", "gateway = \"isp2\"", "mark = 4"]),
        7,
        "rule[1].mark",
        "not both",
    );
    assert_error(
        &with_gateway(&["[[rule]]", "name = \"x\""]),
        5,
        "rule[1]",
        "needs a target",
    );
}

#[test]
fn reserved_tables() {
    for (table, name) in [
        ("0", "unspec"),
        ("253", "default"),
        ("254", "main"),
        ("255", "local"),
    ] {
        let line = format!("table = {table}");
        let lines = ["[[gateway]]", "name = \"a\"", "dev = \"a\"", &line];
        assert_error(
            &lines,
            4,
            "gateway[1].table",
            &format!("table {table} ({name}) is reserved"),
        );
        let line = format!("table = \"{name}\"");
        let lines = ["[[gateway]]", "name = \"a\"", "dev = \"a\"", &line];
        assert_error(
            &lines,
            4,
            "gateway[1].table",
            &format!("table {table} ({name}) is reserved"),
        );
    }
}

#[test]
fn shared_tables() {
    let mut lines = with_gateway(&[]);
    lines.extend([
        "[[gateway]]",
        "name = \"b\"",
        "dev = \"wan3\"",
        "table = \"isp2\"",
    ]);
    assert_error(&lines, 8, "gateway[2].table", "duplicate table 100");
}

#[test]
fn undefined_table_name() {
    let lines = [
        "[[gateway]]",
        "name = \"a\"",
        "dev = \"a\"",
        "table = \"isp9\"",
    ];
    assert_error(
        &lines,
        4,
        "gateway[1].table",
        "table name \"isp9\" is not defined in rt_tables",
    );
}

#[test]
fn host_bits_suggest_the_prefix() {
    let lines = with_gateway(&[
        "[[rule]]",
        "gateway = \"isp2\"",
        "src = \"192.168.99.1/24\"",
    ]);
    assert_error(&lines, 7, "rule[1].src", "did you mean 192.168.99.0/24?");
    let lines = with_gateway(&["[[rule]]", "gateway = \"isp2\"", "dst = \"2001:db8::1/32\""]);
    assert_error(&lines, 7, "rule[1].dst", "did you mean 2001:db8::/32?");
}

#[test]
fn bad_prefixes() {
    let lines = with_gateway(&["[[rule]]", "gateway = \"isp2\"", "dst = \"192.168.1.0/33\""]);
    assert_error(&lines, 7, "rule[1].dst", "invalid prefix");
}

#[test]
fn port_problems() {
    let rule = |port: &'static str| {
        with_gateway(&["[[rule]]", "gateway = \"isp2\"", "proto = \"tcp\"", port])
    };
    assert_error(
        &rule("dport = \"443-80\""),
        8,
        "rule[1].dport",
        "empty port range 443-80",
    );
    assert_error(
        &rule("dport = [80, \"443-80\"]"),
        8,
        "rule[1].dport[2]",
        "empty port range 443-80",
    );
    assert_error(&rule("dport = []"), 8, "rule[1].dport", "empty port list");
    assert_error(&rule("sport = 65536"), 8, "rule[1].sport", "out of range");
    assert_error(
        &rule("sport = \"http\""),
        8,
        "rule[1].sport",
        "invalid port range \"http\"",
    );
}

#[test]
fn ports_without_a_port_protocol() {
    let lines = with_gateway(&[
        "[[rule]]",
        "gateway = \"isp2\"",
        "proto = \"icmp\"",
        "dport = 80",
    ]);
    assert_error(&lines, 8, "rule[1].dport", "has no ports");
}

#[test]
fn mixed_families() {
    let lines = with_gateway(&[
        "[[rule]]",
        "gateway = \"isp2\"",
        "src = \"192.0.2.0/24\"",
        "dst = \"2001:db8::/32\"",
    ]);
    assert_error(&lines, 8, "rule[1].dst", "different IP versions");
}

#[test]
fn protocol_of_the_other_family() {
    let lines = with_gateway(&[
        "[[rule]]",
        "gateway = \"isp2\"",
        "proto = \"icmp\"",
        "dst = \"2001:db8::/32\"",
    ]);
    assert_error(&lines, 7, "rule[1].proto", "exists only for IPv4");
}

#[test]
fn dscp_out_of_range() {
    let lines = with_gateway(&["[[rule]]", "gateway = \"isp2\"", "dscp = 64"]);
    assert_error(&lines, 7, "rule[1].dscp", "64 is out of range (0 to 63)");
}

#[test]
fn unknown_protocol() {
    let lines = with_gateway(&["[[rule]]", "gateway = \"isp2\"", "proto = \"tpc\""]);
    assert_error(&lines, 7, "rule[1].proto", "unknown protocol \"tpc\"");
    let lines = with_gateway(&["[[rule]]", "gateway = \"isp2\"", "proto = 256"]);
    assert_error(&lines, 7, "rule[1].proto", "out of range");
}

#[test]
fn bad_via() {
    let via = |v: &'static str| with_gateway(&[v]);
    assert_error(
        &via("via = [\"203.0.113.1\", \"203.0.113.2\"]"),
        5,
        "gateway[1].via[2]",
        "a second IPv4 next hop",
    );
    assert_error(
        &via("via = [\"2001:db8::1\", \"2001:db8::2\"]"),
        5,
        "gateway[1].via[2]",
        "a second IPv6 next hop",
    );
    assert_error(
        &via("via = \"203.0.113.300\""),
        5,
        "gateway[1].via",
        "invalid IP address",
    );
    assert_error(
        &via("via = \"203.0.113.0/24\""),
        5,
        "gateway[1].via",
        "invalid IP address",
    );
}

#[test]
fn rule_priority_must_leave_room() {
    let lines = with_gateway(&[]);
    let at = |prio: &'static str| [&["", prio][..], &lines].concat();
    assert!(parse(&doc(&at("rule_priority = 32763"))).is_ok());
    assert_error(
        &at("rule_priority = 32764"),
        2,
        "rule_priority",
        "use at most 32763",
    );
    assert_error(&at("rule_priority = 0"), 2, "rule_priority", "priority 0");
}

#[test]
fn checks_groups_and_when_down_parse() {
    let text = doc(&[
        "[[gateway]]",
        "name = \"isp1\"",
        "dev = \"wan1\"",
        "via = [\"198.51.100.2\", \"2001:db8:a::2\"]",
        "table = 101",
        "check = { targets = [\"198.18.0.53\", \"2001:db8:ff::53\"], method = \"tcp:443\", interval = 0.5, timeout = 1.0, down = 3, up = 2 }",
        "[[gateway]]",
        "name = \"lte\"",
        "dev = \"wwan0\"",
        "table = 103",
        "check = { targets = [\"198.18.0.53\"] }",
        "[[group]]",
        "name = \"wan\"",
        "members = [ { gateway = \"isp1\", weight = 3 }, { gateway = \"lte\", tier = 2 } ]",
        "[[rule]]",
        "gateway = \"wan\"",
        "when_down = \"blackhole\"",
    ]);
    let p = parse(&text).unwrap();
    let check = p.gateways[0].check.as_ref().unwrap();
    assert_eq!(check.method, CheckMethod::Tcp(443));
    assert_eq!((check.interval_ms, check.timeout_ms), (500, 1000));
    assert_eq!((check.count, check.down, check.up), (3, 3, 2));
    let defaults = p.gateways[1].check.as_ref().unwrap();
    assert_eq!(defaults.method, CheckMethod::Icmp);
    assert_eq!((defaults.interval_ms, defaults.timeout_ms), (1000, 1000));
    let members = &p.group("wan").unwrap().members;
    assert_eq!((members[0].weight, members[0].tier), (3, 1));
    assert_eq!((members[1].weight, members[1].tier), (1, 2));
    assert_eq!(p.rules[0].when_down, WhenDown::Blackhole);
    let back: Policy = serde_json::from_str(&serde_json::to_string(&p).unwrap()).unwrap();
    assert_eq!(back, p);
}

#[test]
fn check_problems() {
    let check = |c: &'static str| with_gateway(&["via = \"203.0.113.2\"", c]);
    assert_error(
        &check("check = { targets = [\"198.18.0.53\"], method = \"udp:53\" }"),
        6,
        "gateway[1].check.method",
        "unknown check method \"udp:53\"",
    );
    assert_error(
        &check("check = { targets = [\"2001:db8:ff::53\"] }"),
        6,
        "gateway[1].check.targets[1]",
        "no IPv6 next hop",
    );
    assert_error(
        &check("check = { targets = [] }"),
        6,
        "gateway[1].check.targets",
        "at least one address",
    );
    assert_error(
        &check("check = { targets = [\"198.18.0.53\"], interval = 0.2, timeout = 1.0 }"),
        6,
        "gateway[1].check.timeout",
        "longer than down × interval (0.6 s)",
    );
    assert_error(
        &check("check = { targets = [\"198.18.0.53\"], interval = 0.001 }"),
        6,
        "gateway[1].check.interval",
        "out of range",
    );
    assert_error(
        &check("check = { targets = [\"198.18.0.53\"], down = 0 }"),
        6,
        "gateway[1].check.down",
        "out of range",
    );
}

#[test]
fn group_problems() {
    let group = |m: &'static str| {
        with_gateway(&[
            "[[group]]",
            "name = \"wan\"",
            m,
            "[[rule]]",
            "gateway = \"wan\"",
        ])
    };
    assert_error(
        &group("members = [ { gateway = \"isp9\" } ]"),
        7,
        "group[1].members[1].gateway",
        "unknown gateway \"isp9\" (defined: isp2)",
    );
    assert_error(
        &group("members = [ { gateway = \"isp2\" }, { gateway = \"isp2\" } ]"),
        7,
        "group[1].members[2].gateway",
        "duplicate member \"isp2\"",
    );
    assert_error(
        &group("members = []"),
        7,
        "group[1].members",
        "at least one member",
    );
    assert_error(
        &group("members = [ { gateway = \"isp2\", weight = 0 } ]"),
        7,
        "group[1].members[1].weight",
        "out of range",
    );
    assert_error(
        &with_gateway(&[
            "[[group]]",
            "name = \"isp2\"",
            "members = [ { gateway = \"isp2\" } ]",
        ]),
        6,
        "group[1].name",
        "a gateway's name too",
    );
}

#[test]
fn when_down_problems() {
    assert_error(
        &with_gateway(&["[[rule]]", "gateway = \"isp2\"", "when_down = \"drop\""]),
        7,
        "rule[1].when_down",
        "unknown when_down \"drop\"",
    );
    assert_error(
        &with_gateway(&["[[rule]]", "mark = 4", "when_down = \"blackhole\""]),
        7,
        "rule[1].when_down",
        "not to a mark",
    );
}

#[test]
fn attach_mode_is_auto_unless_written() {
    assert_eq!(parse("").unwrap().attach.mode, AttachMode::Auto);
    for (text, mode) in [
        ("auto", AttachMode::Auto),
        ("tcx", AttachMode::Tcx),
        ("tc", AttachMode::Tc),
    ] {
        let policy = parse(&doc(&["[attach]", &format!("mode = \"{text}\"")])).unwrap();
        assert_eq!(policy.attach.mode, mode);
        assert_eq!(policy.origin.attach_mode, Some(2));
    }
    assert_error(
        &["[attach]", "mode = \"xdp\""],
        2,
        "attach.mode",
        "unknown mode \"xdp\" (expected \"auto\", \"tcx\" or \"tc\")",
    );
}

// Prefix sets: `[[set]]` with inline prefixes or a list file, `@name` in `src`/`dst`.

/// A directory of its own under the system's temp dir, removed on drop (also when the test
/// fails). `name` tells tests apart; the process id tells runs apart.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("policyroute-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(path.join("lists")).unwrap();
        Self(path)
    }

    /// Writes `text` at `relative` (under the directory); returns the full path.
    fn write(&self, relative: &str, text: &str) -> std::path::PathBuf {
        let path = self.0.join(relative);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn net(s: &str) -> ipnet::IpNet {
    s.parse().unwrap()
}

/// The rule's set on `field` ("src" or "dst").
#[track_caller]
fn set_of<'p>(policy: &'p Policy, rule: usize, field: &str) -> &'p std::sync::Arc<sets::PrefixSet> {
    let m = &policy.rules[rule].matcher;
    let r = match field {
        "src" => m.src_set.as_ref(),
        _ => m.dst_set.as_ref(),
    };
    &r.unwrap_or_else(|| panic!("rule {rule} has no {field} set: {m:?}"))
        .set
}

/// A gateway, a set `de` with both families inline, and rules using it either way.
const INLINE_SET: [&str; 17] = [
    "[[gateway]]",
    "name = \"isp2\"",
    "dev = \"wan2\"",
    "table = 100",
    "[[set]]",
    "name = \"de\"",
    "prefixes = [\"198.51.100.0/24\", \"192.0.2.0/25\", \"2001:db8:de::/48\", \"203.0.113.9\"]",
    "[[rule]]",
    "name = \"to-de\"",
    "dst = \"@de\"",
    "gateway = \"isp2\"",
    "[[rule]]",
    "name = \"from-de\"",
    "src = \"@de\"",
    "gateway = \"isp2\"",
    "[attach]",
    "ingress = [\"lan0\"]",
];

#[test]
fn inline_sets_are_shared_by_the_rules_that_name_them() {
    let policy = parse(&doc(&INLINE_SET)).unwrap();
    assert_eq!(policy.sets.len(), 1);
    let set = policy.set("de").unwrap();
    assert_eq!(set.file, None);
    // Sorted, a bare address a host prefix.
    let expected: Vec<ipnet::IpNet> = [
        "192.0.2.0/25",
        "198.51.100.0/24",
        "203.0.113.9/32",
        "2001:db8:de::/48",
    ]
    .into_iter()
    .map(net)
    .collect();
    assert_eq!(set.prefixes, expected);
    assert_eq!((set.count(Family::V4), set.count(Family::V6)), (3, 1));

    let to = &policy.rules[0].matcher;
    assert_eq!((to.src, to.dst, to.src_set.as_ref()), (None, None, None));
    assert_eq!(to.dst_set.as_ref().unwrap().name, "de");
    assert_eq!(set_of(&policy, 0, "dst").prefixes, expected);
    let from = &policy.rules[1].matcher;
    assert_eq!(
        (from.src, from.dst, from.dst_set.as_ref()),
        (None, None, None)
    );
    assert_eq!(from.src_set.as_ref().unwrap().name, "de");
    assert_eq!(to.to_string(), "dst @de");
    assert_eq!(from.to_string(), "src @de");

    // One set in memory, however many rules use it.
    assert!(std::sync::Arc::ptr_eq(
        set_of(&policy, 0, "dst"),
        set_of(&policy, 1, "src")
    ));
    assert!(std::sync::Arc::ptr_eq(
        set_of(&policy, 0, "dst"),
        &policy.sets[0]
    ));
    // Both families: the rules match either.
    assert_eq!(to.families(), Ok(vec![Family::V4, Family::V6]));
    assert!(policy.set("nope").is_none());
}

#[test]
fn sets_survive_the_record_round_trip_once_linked_again() {
    let policy = parse(&doc(&INLINE_SET)).unwrap();
    let json = serde_json::to_string(&policy).unwrap();
    let mut back = serde_json::from_str::<Policy>(&json).unwrap();
    // Records keep a rule's set by name only.
    assert!(set_of(&back, 0, "dst").prefixes.is_empty());
    back.link_sets();
    assert_eq!(back, policy);
    assert!(std::sync::Arc::ptr_eq(
        set_of(&back, 0, "dst"),
        set_of(&back, 1, "src")
    ));
    assert!(std::sync::Arc::ptr_eq(
        set_of(&back, 0, "dst"),
        &back.sets[0]
    ));
}

/// A policy whose set `de` comes from `lists/de.txt`, used by one rule.
const FILE_SET_POLICY: &str = r#"[[gateway]]
name = "isp2"
dev = "wan2"
table = 100

[[set]]
name = "de"
file = "lists/de.txt"

[[rule]]
name = "to-de"
dst = "@de"
gateway = "isp2"
"#;

#[test]
fn list_files_are_read_relative_to_the_policy() {
    let dir = TempDir::new("sets-file");
    let policy_path = dir.write("policy.toml", FILE_SET_POLICY);
    dir.write(
        "lists/de.txt",
        "# German networks (documentation prefixes)\n\
         \n\
         192.0.2.0/24\n\
         198.51.100.0/25   # half of it\n\
         \t203.0.113.7\t\n\
         2001:db8:de::/48\n\
         \n\
         # a host, and one IPv6 prefix written twice\n\
         2001:db8:1::1\n\
         2001:db8:de::/48\n\
         198.18.0.0/15\n",
    );
    let policy = Policy::load(&policy_path, &tables()).unwrap();
    let set = policy.set("de").unwrap();
    // As the policy names the file, not as it was opened.
    assert_eq!(set.file.as_deref(), Some("lists/de.txt"));
    assert_eq!(set.count(Family::V4), 4);
    assert_eq!(set.count(Family::V6), 2, "the duplicate counts once");
    assert_eq!(set.prefixes.len(), 6);
    assert!(set.prefixes.contains(&net("203.0.113.7/32")));
    assert!(set.prefixes.contains(&net("2001:db8:1::1/128")));
    assert!(set.contains(&ip("198.19.255.255")));
    assert!(!set.contains(&ip("198.51.100.128")));
    assert_eq!(set.families(), vec![Family::V4, Family::V6]);
    assert!(std::sync::Arc::ptr_eq(
        set_of(&policy, 0, "dst"),
        &policy.sets[0]
    ));
}

#[test]
fn a_bad_list_line_is_located_in_the_list() {
    let dir = TempDir::new("sets-bad-line");
    let policy_path = dir.write("policy.toml", FILE_SET_POLICY);
    dir.write(
        "lists/de.txt",
        "# comment\n192.0.2.0/24\n\n198.51.100.1/24\n2001:db8::/32\n",
    );
    let err = Policy::load(&policy_path, &tables()).unwrap_err();
    let text = err.to_string();
    let expected = "lists/de.txt:4: set[1].file: prefix 198.51.100.1/24 has host bits set \
                    (did you mean 198.51.100.0/24?)";
    assert!(
        err.errors().iter().any(|e| e.to_string() == expected),
        "expected {expected:?} among:\n{text}"
    );

    // The list alone (no rule names the set): that error and nothing else.
    let lone = FILE_SET_POLICY.split("[[rule]]").next().unwrap();
    dir.write("policy.toml", lone);
    let err = Policy::load(&policy_path, &tables()).unwrap_err();
    assert_eq!(err.to_string(), expected);

    // Not a prefix at all, on the first line.
    dir.write("lists/de.txt", "192.0.2.0/24 198.51.100.0/24\n");
    let err = Policy::load(&policy_path, &tables()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("lists/de.txt:1: set[1].file: \"192.0.2.0/24 198.51.100.0/24\" is not"),
        "{text}"
    );
    dir.write("lists/de.txt", "192.0.2.0/24\n2001:db8::/129\n");
    let text = Policy::load(&policy_path, &tables())
        .unwrap_err()
        .to_string();
    assert!(text.starts_with("lists/de.txt:2: set[1].file: "), "{text}");
}

#[test]
fn a_missing_list_file_names_the_path() {
    let dir = TempDir::new("sets-missing");
    let policy_path = dir.write(
        "policy.toml",
        &FILE_SET_POLICY.replace("lists/de.txt", "lists/missing.txt"),
    );
    let err = Policy::load(&policy_path, &tables()).unwrap_err();
    let text = err.to_string();
    let list = dir.0.join("lists/missing.txt");
    let expected = format!(
        "{}:8: set[1].file: cannot read the list {}: ",
        policy_path.display(),
        list.display()
    );
    assert!(
        text.lines().any(|l| l.starts_with(&expected)),
        "expected `{expected}...` in:\n{text}"
    );
}

#[test]
fn a_list_with_only_comments_is_refused() {
    let dir = TempDir::new("sets-empty-file");
    let lone = FILE_SET_POLICY.split("[[rule]]").next().unwrap();
    let policy_path = dir.write("policy.toml", lone);
    dir.write("lists/de.txt", "# download failed?\n\n   \n");
    let text = Policy::load(&policy_path, &tables())
        .unwrap_err()
        .to_string();
    let expected = format!(
        "{}:6: set[1]: set \"de\" is empty (lists/de.txt lists none): a rule using it would \
         silently match nothing",
        policy_path.display()
    );
    assert_eq!(text, expected);
    dir.write("lists/de.txt", "");
    assert!(Policy::load(&policy_path, &tables()).is_err());
}

#[test]
fn unknown_sets() {
    let mut lines = with_gateway(&[
        "[[set]]",
        "name = \"a\"",
        "prefixes = [\"192.0.2.0/24\"]",
        "[[set]]",
        "name = \"b\"",
        "prefixes = [\"2001:db8::/32\"]",
        "[[rule]]",
        "gateway = \"isp2\"",
        "dst = \"@c\"",
    ]);
    assert_error(
        &lines,
        13,
        "rule[1].dst",
        "unknown set @c (defined: @a, @b)",
    );
    lines[12] = "src = \"@\"";
    assert_error(&lines, 13, "rule[1].src", "unknown set @ (defined: @a, @b)");
    let lines = with_gateway(&["[[rule]]", "gateway = \"isp2\"", "src = \"@a\""]);
    assert_error(&lines, 7, "rule[1].src", "unknown set @a (defined: none)");
}

#[test]
fn empty_sets_are_refused() {
    let lines = with_gateway(&["[[set]]", "name = \"x\"", "prefixes = []"]);
    assert_error(
        &lines,
        5,
        "set[1]",
        "set \"x\" is empty: a rule using it would silently match nothing",
    );
}

#[test]
fn a_set_has_either_file_or_prefixes() {
    let lines = with_gateway(&[
        "[[set]]",
        "name = \"x\"",
        "file = \"lists/x.txt\"",
        "prefixes = [\"192.0.2.0/24\"]",
    ]);
    assert_error(
        &lines,
        8,
        "set[1].prefixes",
        "a set has either file or prefixes, not both",
    );
    let lines = with_gateway(&["[[set]]", "name = \"x\""]);
    assert_error(
        &lines,
        5,
        "set[1]",
        "a set needs its prefixes: file = PATH or prefixes = [...]",
    );
}

#[test]
fn set_names() {
    let lines = with_gateway(&[
        "[[set]]",
        "name = \"x\"",
        "prefixes = [\"192.0.2.0/24\"]",
        "[[set]]",
        "name = \"x\"",
        "prefixes = [\"198.51.100.0/24\"]",
    ]);
    assert_error(
        &lines,
        9,
        "set[2].name",
        "duplicate set name \"x\" (first at set[1].name, line 6)",
    );
    for name in ["@x", "my set", "x\ty"] {
        let name_line = format!("name = {name:?}");
        let lines = with_gateway(&[
            "[[set]]",
            Box::leak(name_line.into_boxed_str()),
            "prefixes = [\"192.0.2.0/24\"]",
        ]);
        assert_error(
            &lines,
            6,
            "set[1].name",
            "a set name has no '@' (rules add it) and no spaces",
        );
    }
    assert_error(
        &with_gateway(&["[[set]]", "prefixes = [\"192.0.2.0/24\"]"]),
        5,
        "set[1].name",
        "missing (required)",
    );
    assert_error(
        &with_gateway(&["[[set]]", "name = \"\"", "prefixes = [\"192.0.2.0/24\"]"]),
        6,
        "set[1].name",
        "must not be empty",
    );
}

#[test]
fn inline_set_prefixes_are_checked_one_by_one() {
    let lines = with_gateway(&[
        "[[set]]",
        "name = \"x\"",
        "prefixes = [\"192.0.2.0/24\", \"192.0.2.1/24\", \"nonsense\", 7]",
    ]);
    assert_error(
        &lines,
        7,
        "set[1].prefixes[2]",
        "did you mean 192.0.2.0/24?",
    );
    assert_error(
        &lines,
        7,
        "set[1].prefixes[3]",
        "\"nonsense\" is not an IPv4 or IPv6 prefix",
    );
    assert_error(&lines, 7, "set[1].prefixes[4]", "");
    let lines = with_gateway(&["[[set]]", "name = \"x\"", "prefixes = \"192.0.2.0/24\""]);
    assert_error(&lines, 7, "set[1].prefixes", "");
    let lines = with_gateway(&[
        "[[set]]",
        "name = \"x\"",
        "bogus = 1",
        "prefixes = [\"::/0\"]",
    ]);
    assert_error(&lines, 7, "set[1].bogus", "unknown key");
}

#[test]
fn sets_combine_with_protocol_and_ports() {
    let mut lines = INLINE_SET.to_vec();
    lines.splice(
        8..8,
        [
            "proto = \"tcp\"",
            "sport = \"1024-65535\"",
            "dport = [80, 443]",
            "dscp = 10",
        ],
    );
    let policy = parse(&doc(&lines)).unwrap();
    let m = &policy.rules[0].matcher;
    assert_eq!(m.proto, Some(6));
    assert_eq!(m.dport.as_ref().unwrap().to_string(), "80,443");
    assert_eq!(m.dst_set.as_ref().unwrap().name, "de");
    assert_eq!(
        m.to_string(),
        "proto tcp dst @de sport 1024-65535 dport 80,443 dscp 10"
    );
    assert!(m.validate().is_ok());
    // A literal prefix on the other field, of a family the set has.
    let policy = parse(&doc(&with_gateway(&[
        "[[set]]",
        "name = \"de\"",
        "prefixes = [\"2001:db8:de::/48\", \"192.0.2.0/24\"]",
        "[[rule]]",
        "gateway = \"isp2\"",
        "proto = \"udp\"",
        "src = \"198.51.100.0/24\"",
        "dst = \"@de\"",
        "dport = 53",
    ])))
    .unwrap();
    let m = &policy.rules[0].matcher;
    assert_eq!(m.families(), Ok(vec![Family::V4]));
    assert_eq!(m.src, Some(net("198.51.100.0/24")));
    // Ports still need a protocol that has them.
    let lines = with_gateway(&[
        "[[set]]",
        "name = \"de\"",
        "prefixes = [\"192.0.2.0/24\"]",
        "[[rule]]",
        "gateway = \"isp2\"",
        "proto = \"icmp\"",
        "dst = \"@de\"",
        "dport = 80",
    ]);
    assert_error(&lines, 12, "rule[1].dport", "has no ports");
}

#[test]
fn a_set_narrows_the_rule_to_its_families() {
    let v6_only = [
        "[[set]]",
        "name = \"v6\"",
        "prefixes = [\"2001:db8::/32\", \"2001:db8:1::1\"]",
    ];
    let v4_only = [
        "[[set]]",
        "name = \"v4\"",
        "prefixes = [\"192.0.2.0/24\", \"198.51.100.7\"]",
    ];
    let rule = |rest: &[&'static str]| {
        let mut lines = with_gateway(&v6_only);
        lines.extend(v4_only);
        lines.extend(["[[rule]]", "gateway = \"isp2\""]);
        lines.extend(rest);
        lines
    };
    // A literal IPv4 source and an IPv6-only set: no packet has both.
    assert_error(
        &rule(&["src = \"192.0.2.0/24\"", "dst = \"@v6\""]),
        14,
        "rule[1].dst",
        "source and destination prefixes are of different IP versions",
    );
    // Two sets of different families alike.
    assert_error(
        &rule(&["src = \"@v4\"", "dst = \"@v6\""]),
        14,
        "rule[1].dst",
        "different IP versions",
    );
    // ICMP (IPv4 only) with an IPv4 set: fine; with an IPv6 set: never.
    let policy = parse(&doc(&rule(&["proto = \"icmp\"", "dst = \"@v4\""]))).unwrap();
    assert_eq!(policy.rules[0].matcher.families(), Ok(vec![Family::V4]));
    assert_error(
        &rule(&["proto = \"icmp\"", "dst = \"@v6\""]),
        13,
        "rule[1].proto",
        "exists only for IPv4",
    );
    // A set of one family alone keeps the rule to that family.
    let policy = parse(&doc(&rule(&["src = \"@v6\""]))).unwrap();
    assert_eq!(policy.rules[0].matcher.families(), Ok(vec![Family::V6]));
}

#[test]
fn sets_example_file_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/sets.toml");
    let policy = Policy::load(&path, &RtTables::builtin()).unwrap();
    let set = policy.set("de").expect("the example defines @de");
    assert_eq!(set.file.as_deref(), Some("lists/de.txt"));
    assert!(set.count(Family::V4) >= 5 && set.count(Family::V6) >= 3);
    // Documentation prefixes only.
    let doc_nets: Vec<ipnet::IpNet> = [
        "192.0.2.0/24",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "198.18.0.0/15",
        "2001:db8::/32",
    ]
    .into_iter()
    .map(net)
    .collect();
    for p in &set.prefixes {
        assert!(
            doc_nets.iter().any(|d| d.contains(p)),
            "{p} is not a documentation prefix"
        );
    }
    let using: Vec<&str> = policy
        .rules
        .iter()
        .filter(|r| r.matcher.src_set.is_some() || r.matcher.dst_set.is_some())
        .map(|r| r.name.as_str())
        .collect();
    assert!(using.len() >= 2, "the example shares the set: {using:?}");
    assert!(policy
        .classifier_rules()
        .iter()
        .all(|r| r.matcher.validate().is_ok()));
}

/// docs/policy.md is the reference of every key: each one the reader takes has its row
/// there (`` `key` `` or `` `members[].key` `` in a table's first column).
#[test]
fn the_policy_reference_names_every_key() {
    let doc = include_str!("../../../docs/policy.md");
    for (table, keys) in super::read::KEYS_BY_TABLE {
        for key in keys {
            // Tables of the top level have a section instead of a row.
            let rows = [
                format!("| `{key}` |"),
                format!("| `members[].{key}` |"),
                format!("## `[[{key}]]`"),
                format!("## `[{key}]`"),
            ];
            assert!(
                rows.iter().any(|r| doc.contains(r.as_str())),
                "docs/policy.md has no row for {table} key {key}"
            );
        }
    }
}
