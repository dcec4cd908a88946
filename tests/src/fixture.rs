//! What the integration tests and benchmarks set up before they act: namespaces with veth
//! links, the pieces test policies are made of (the standard gateway, shared rules, in
//! `tests/fixtures/`), files written for a run, and frames for the classifier. The full
//! five-namespace router topology is [`crate::topology`], built from these links.
use std::{
    net::IpAddr,
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use policyroute::reference::frame::FrameSpec;

use crate::netns::NetNs;

/// A veth pair from `a_dev` in `a` to `b_dev` in `b`, both ends up.
pub fn veth(a: &NetNs, a_dev: &str, b: &NetNs, b_dev: &str) {
    a.exec(
        "ip",
        &[
            "link", "add", a_dev, "type", "veth", "peer", "name", b_dev, "netns", &b.name,
        ],
    );
    a.ip(&format!("link set {a_dev} up"));
    b.ip(&format!("link set {b_dev} up"));
}

/// For each of `devs`, a veth pair whose other end (`<dev>p`) stays in `ns` too: a device
/// with carrier where no packet has to reach a neighbour (this kernel has no dummy links).
pub fn loose_veths(ns: &NetNs, devs: &[&str]) {
    for dev in devs {
        veth(ns, dev, ns, &format!("{dev}p"));
    }
}

/// Adds `cidr` to `dev`; IPv6 addresses skip duplicate address detection, so they are
/// usable at once.
pub fn address(ns: &NetNs, dev: &str, cidr: &str) {
    let nodad = if cidr.contains(':') { " nodad" } else { "" };
    ns.ip(&format!("addr add {cidr} dev {dev}{nodad}"));
}

/// A router namespace without neighbours: `lan0`, `wan1` and `wan2` as [`loose_veths`],
/// the uplinks with the addresses the router of [`crate::topology::Topology`] has. Enough
/// for whatever only installs and inspects: every device a test policy names exists.
pub fn lone_router(tag: &str) -> NetNs {
    let ns = NetNs::new(tag);
    loose_veths(&ns, &["lan0", "wan1", "wan2"]);
    for (dev, cidr) in [
        ("wan1", "198.51.100.1/24"),
        ("wan2", "203.0.113.1/24"),
        ("wan2", "2001:db8:b::1/64"),
    ] {
        address(&ns, dev, cidr);
    }
    ns
}

/// The gateway the test policies route through: `isp2`, uplink 2 of the topology (wan2,
/// whose far end is 203.0.113.2 and 2001:db8:b::2), table 100. Its text ends with the
/// gateway's last key, so a policy goes on with more keys of the gateway (`sticky = true`)
/// or with its rules.
pub const GATEWAY_ISP2: &str = include_str!("../fixtures/gateway-isp2.toml");

/// Two rules through isp2: web (TCP 80 and 443) and dns (UDP 53).
pub const RULES_WEB_DNS: &str = include_str!("../fixtures/rules-web-dns.toml");

/// A rule through isp2 for each kind of field: `web` (TCP destination ports 80 and 443),
/// `from-alt` (source [`crate::topology::LAN_HOST_ALT`]) and `to-net1` (destination
/// 198.18.1.0/24, where the second internet address is).
pub const RULES_BY_FIELD: &str = include_str!("../fixtures/rules-by-field.toml");

/// The three uplinks of [`crate::topology::Topology::with_lte`] as checked gateways: `isp1`
/// (wan1, table 101), `isp2` (wan2, table 102) and `lte` (wan3, table 103), each checked by
/// ICMP echo to [`crate::topology::CHECK_TARGETS`] every 0.5 s (timeout 1 s, down and up
/// after 3).
pub const GATEWAYS_CHECKED: &str = include_str!("../fixtures/gateways-checked.toml");

/// The group `wan`: isp1 and isp2 weighted 3:1 in tier 1, lte in tier 2.
pub const GROUP_WAN: &str = include_str!("../fixtures/group-wan.toml");

/// isp1 and isp2 (wan1, wan2) in the group `wan` at 3:1 for every flow on lan0, and the
/// rule `kill-switch` (UDP to port 53 via isp2 with `when_down = "blackhole"`).
pub const GROUP_SPREAD_POLICY: &str = include_str!("../fixtures/group-spread-policy.toml");

/// The rule `web` (TCP and UDP to ports 80 and 443) through the group `wan`.
pub const RULE_WEB_WAN: &str = include_str!("../fixtures/rule-web-wan.toml");

/// `text` with every health check's `interval` and `timeout` (seconds) changed from the
/// documented 0.5 and 1.0 of [`GATEWAYS_CHECKED`].
pub fn checks(text: &str, interval: f64, timeout: f64) -> String {
    text.replace("interval = 0.5", &format!("interval = {interval:?}"))
        .replace("timeout = 1.0", &format!("timeout = {timeout:?}"))
}

/// `text` with `key = value` (`value` a TOML value) in the table whose `name` is `name`
/// (a gateway, group or rule): in place of the key's line if it has one, else at the end of
/// the table; with `value` None the key's line goes.
pub fn set_in(text: &str, name: &str, key: &str, value: Option<&str>) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let name_line = format!("name = \"{name}\"");
    let at = lines
        .iter()
        .position(|l| l.trim() == name_line)
        .unwrap_or_else(|| panic!("no table named {name} in\n{text}"));
    let start = lines[..at]
        .iter()
        .rposition(|l| l.starts_with('['))
        .expect("a table header");
    let end = lines[at..]
        .iter()
        .position(|l| l.starts_with('['))
        .map_or(lines.len(), |i| at + i);
    let prefix = format!("{key} = ");
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    let new = value.map(|v| format!("{prefix}{v}"));
    match (start..end).find(|&i| lines[i].starts_with(&prefix)) {
        Some(i) => match new {
            Some(line) => out[i] = line,
            None => {
                out.remove(i);
            }
        },
        None => {
            let line = new.unwrap_or_else(|| panic!("{name} has no {key} to remove"));
            // After the table's last line of content, before blank lines and comments.
            let last = (start..end)
                .rev()
                .find(|&i| !lines[i].trim().is_empty() && !lines[i].starts_with('#'))
                .expect("the header at least");
            out.insert(last + 1, line);
        }
    }
    out.join("\n") + "\n"
}

/// [`GATEWAY_ISP2`] with `key` set to `value` (a TOML value) instead.
pub fn gateway_isp2_with(key: &str, value: &str) -> String {
    let line = format!("{key} = ");
    let old = GATEWAY_ISP2
        .lines()
        .find(|l| l.starts_with(&line))
        .unwrap_or_else(|| panic!("the isp2 gateway has no {key}"));
    GATEWAY_ISP2.replace(old, &format!("{line}{value}"))
}

/// A policy of `gateway` ([`GATEWAY_ISP2`], its variations), `rules` (`[[rule]]` tables:
/// the fixtures above, a test's own) and an `[attach]` table of the lines `attach`.
pub fn policy(gateway: &str, rules: &[&str], attach: &str) -> String {
    format!("{gateway}\n{}\n[attach]\n{attach}", rules.join("\n"))
}

/// `text` (policy or rules) without its `[[rule]]` named `name`.
pub fn without_rule(text: &str, name: &str) -> String {
    let head = format!("[[rule]]\nname = \"{name}\"\n");
    let start = text
        .find(&head)
        .unwrap_or_else(|| panic!("no rule {name} in {text}"));
    let body = start + head.len();
    let end = text[body..]
        .find("\n[")
        .map_or(text.len(), |i| body + i + 1);
    format!("{}{}", &text[..start], &text[end..])
}

/// Set to `tc` or `tcx`, every policy a test writes forces that `[attach] mode`: the same
/// tests then cover both attach paths (`cargo xtask test` runs the kernel tests with `tc`
/// once more).
pub const ATTACH_MODE_ENV: &str = "POLICYROUTE_TEST_ATTACH_MODE";

/// `policy` with `[attach] mode = MODE` (unless it sets a mode). Added at the end, where it
/// moves no line that an expected error message names: under the last table when that is
/// `[attach]`, as a new `[attach]` table when there is none, else right after the header.
pub fn with_attach_mode(policy: &str, mode: &str) -> String {
    let line = format!("mode = \"{mode}\"\n");
    let headers: Vec<(usize, &str)> = policy
        .match_indices('\n')
        .map(|(i, _)| i + 1)
        .chain(std::iter::once(0))
        .filter_map(|i| Some((i, policy.get(i..)?.lines().next()?.trim())))
        .filter(|(_, l)| l.starts_with('['))
        .collect();
    let attach = headers.iter().find(|(_, l)| *l == "[attach]");
    let last = headers.iter().max_by_key(|(i, _)| *i);
    let sep = if policy.ends_with('\n') { "" } else { "\n" };
    match attach {
        _ if policy.lines().any(|l| l.trim_start().starts_with("mode ")) => policy.to_string(),
        None => format!("{policy}{sep}[attach]\n{line}"),
        Some(a) if Some(a) == last => format!("{policy}{sep}{line}"),
        Some((i, _)) => {
            let end = i + policy[*i..].find('\n').map_or(policy.len() - i, |n| n + 1);
            format!("{}{line}{}", &policy[..end], &policy[end..])
        }
    }
}

/// A file of this process in the temp directory, removed on drop.
pub struct TempFile {
    pub path: PathBuf,
}

static NEXT_FILE: AtomicU32 = AtomicU32::new(0);

impl TempFile {
    /// Writes `text` to `prt-<pid>-<n>-<name>`: tests running in parallel may pick the same
    /// name, and the name stays the end of the path that error messages show.
    ///
    /// A policy (`*.toml`) gets the attach mode of [`ATTACH_MODE_ENV`] when that is set.
    pub fn new(name: &str, text: &str) -> Self {
        let n = NEXT_FILE.fetch_add(1, Ordering::Relaxed);
        let file = format!("prt-{}-{n}-{name}", std::process::id());
        let path = std::env::temp_dir().join(file);
        let file = Self { path };
        file.write(text);
        file
    }

    /// Replaces the contents (a policy gets the attach mode as in [`TempFile::new`]).
    pub fn write(&self, text: &str) {
        let policy = self.path.extension().is_some_and(|e| e == "toml");
        let text = match std::env::var(ATTACH_MODE_ENV) {
            Ok(mode) if policy => with_attach_mode(text, &mode),
            _ => text.to_string(),
        };
        std::fs::write(&self.path, text).expect("write temp file");
    }

    pub fn arg(&self) -> &str {
        self.path.to_str().expect("utf-8 path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
pub const ICMP: u8 = 1;
pub const ICMPV6: u8 = 58;

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A frame of `proto` from `src:sport` to `dst:dport`.
pub fn frame(proto: u8, src: &str, sport: u16, dst: &str, dport: u16) -> FrameSpec {
    FrameSpec::new(proto, ip(src), sport, ip(dst), dport)
}

/// An IPv4 frame from the LAN host to a host behind uplink 1.
pub fn frame4(proto: u8, sport: u16, dport: u16) -> FrameSpec {
    frame(proto, "192.0.2.10", sport, "198.51.100.20", dport)
}

/// An IPv6 frame from the LAN host to a host on the second LAN.
pub fn frame6(proto: u8, sport: u16, dport: u16) -> FrameSpec {
    frame(proto, "2001:db8:1::10", sport, "2001:db8:2::20", dport)
}

/// Set by the 6.1 VM lane (`cargo xtask test`), whose emulated CPU runs tests many times
/// slower: a test that repeats what the host lane already proves (hundreds of random flows)
/// runs a handful there. What only an older kernel can show runs in full.
pub const EMULATED_ENV: &str = "POLICYROUTE_TEST_EMULATED";

/// Whether this run is the emulated VM lane ([`EMULATED_ENV`]).
pub fn emulated() -> bool {
    std::env::var_os(EMULATED_ENV).is_some_and(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attach_mode_goes_where_it_moves_no_line() {
        let last = "[x]\na = 1\n[attach]\ningress = [\"l\"]\n";
        assert_eq!(
            with_attach_mode(last, "tc"),
            format!("{last}mode = \"tc\"\n")
        );
        let none = "[x]\na = 1";
        assert_eq!(
            with_attach_mode(none, "tc"),
            "[x]\na = 1\n[attach]\nmode = \"tc\"\n"
        );
        let middle = "[attach]\nlocal = true\n[[rule]]\nx = 1\n";
        assert_eq!(
            with_attach_mode(middle, "tc"),
            "[attach]\nmode = \"tc\"\nlocal = true\n[[rule]]\nx = 1\n"
        );
    }

    #[test]
    fn set_in_replaces_adds_and_removes_a_key_of_one_table() {
        let both = format!("{GATEWAYS_CHECKED}\n{RULE_WEB_WAN}");
        let t = set_in(&both, "web", "gateway", Some("\"isp2\""));
        assert!(t.contains("gateway = \"isp2\"") && !t.contains("gateway = \"wan\""));
        let t = set_in(&t, "web", "when_down", Some("\"blackhole\""));
        assert!(
            t.contains("gateway = \"isp2\"\nwhen_down = \"blackhole\"\n"),
            "{t}"
        );
        let t = set_in(&t, "lte", "check", None);
        assert_eq!(t.matches("check = ").count(), 2);
        assert!(t.contains("table = 103\n\n# Web"), "{t}");
        let t = checks(&t, 0.2, 1.0);
        assert_eq!(
            t.matches("interval = 0.2, timeout = 1.0,").count(),
            2,
            "{t}"
        );
    }
}
