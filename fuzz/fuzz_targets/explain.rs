//! `explain`'s arguments as arbitrary words, through the CLI's own parsing and the
//! question's checks (no kernel): nothing may panic; a refusal of ours must be a clean
//! one-line error of exit status 2; a question accepted must be the packet `explain`
//! synthesizes for the loaded program (the reference classifier reads the frame back as
//! that question), and where the socket hooks know every field, a local flow must meet
//! the same rule as that packet.
#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

use policyroute::control::{explain::Query, question::Question, ControlError};
use policyroute::policy::matcher::Rule;
use policyroute::policy::rt_tables::RtTables;
use policyroute::policy::Policy;
use policyroute::reference::classifier;
use policyroute_common::proto_has_ports;

/// Rules on every field the local hooks know too (no DSCP, no sets: see `agrees_local`),
/// both families, port lists and ranges, a raw mark.
const POLICY: &str = r#"
[[gateway]]
name = "isp2"
dev = "wan2"
via = ["203.0.113.2", "2001:db8:b::2"]
table = 102

[[rule]]
name = "web"
proto = "tcp"
dport = [80, 443, "8000-8999"]
gateway = "isp2"

[[rule]]
name = "lan-dns"
proto = "udp"
src = "192.0.2.0/25"
sport = "1024-65535"
dport = 53
gateway = "isp2"

[[rule]]
name = "v6-host"
src = "2001:db8:1::10/128"
dst = "2001:db8:ffff::/48"
mark = 0x7

[[rule]]
name = "icmp"
proto = "icmp"
gateway = "isp2"

[attach]
ingress = ["lan0"]
"#;

fn rules() -> &'static [Rule] {
    static RULES: OnceLock<Vec<Rule>> = OnceLock::new();
    RULES.get_or_init(|| {
        Policy::parse(POLICY, "fuzz.toml", &RtTables::builtin())
            .expect("the fuzz policy loads")
            .classifier_rules()
    })
}

fuzz_target!(|data: &[u8]| {
    // Words as execve passes them: any bytes but NUL, which separates them here.
    let words = data
        .split(|&b| b == 0)
        .map(|w| OsString::from_vec(w.to_vec()));
    let question = match Question::parse(words) {
        Ok(question) => question,
        // clap's own refusal (or --help): its usage text must render.
        Err(e) => {
            let _ = e.render().to_string();
            return;
        }
    };
    let query = match question.query() {
        Ok(query) => query,
        Err(e) => return assert_clean(&e),
    };
    let pkt = classifier::parse(&query.frame())
        .unwrap_or_else(|| panic!("{query:?}: the synthesized frame does not parse"));
    let ports =
        proto_has_ports(query.proto).then(|| (query.sport.unwrap_or(0), query.dport.unwrap_or(0)));
    assert_eq!(
        (pkt.proto, pkt.src, pkt.dst, pkt.dscp, pkt.ports),
        (query.proto, query.src, query.dst, query.dscp, ports),
        "{query:?}: the synthesized frame asks another question"
    );
    let forwarded = classifier::first_match(rules(), &pkt);
    let local = classifier::first_match_local(rules(), &query.local_flow());
    if agrees_local(&query) {
        assert_eq!(forwarded, local, "{query:?}");
    }
});

/// The socket hooks know every field the rules test: a bound source and source port, a
/// destination port (DSCP is 0 in a synthesized frame, and the rules test none).
fn agrees_local(q: &Query) -> bool {
    let ports = !proto_has_ports(q.proto) || (q.sport.is_some_and(|p| p != 0) && q.dport.is_some());
    !q.src.is_unspecified() && ports
}

/// A refusal explain gives: exit status 2, one line of text with no control characters.
fn assert_clean(e: &ControlError) {
    assert!(matches!(e, ControlError::Question(_)), "{e:?}");
    assert_eq!(e.exit_status(), 2, "{e}");
    let shown = e.to_string();
    assert!(!shown.is_empty());
    assert!(!shown.chars().any(char::is_control), "{shown:?}");
}
