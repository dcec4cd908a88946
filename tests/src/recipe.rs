//! A classic iptables + `ip rule` recipe set up in a test router with the real tools, and
//! the saved text `policyroute import` reads, captured from that router.
use std::process::Command;

use crate::{fixture::TempFile, netns::NetNs};

/// Runs the shell `script` inside `ns` with `rt_tables` as iproute2's table names. The
/// names live on a tmpfs over `/etc/iproute2` in a mount namespace of this command alone:
/// the host's `/etc` is never written.
pub fn sh(ns: &NetNs, rt_tables: &TempFile, script: &str) -> String {
    let outer = "mount -t tmpfs prt-rt-tables /etc/iproute2 && cp \"$1\" /etc/iproute2/rt_tables \
                 && exec ip netns exec \"$2\" sh -ec \"$3\"";
    crate::cli::succeeds(
        Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-ec",
                outer,
                "sh",
            ])
            .args([rt_tables.arg(), &ns.name, script]),
    )
}

/// What the router's tools print, one file per output, for `policyroute import`.
pub struct Saved {
    pub iptables: Vec<TempFile>,
    pub ip_rules: Vec<TempFile>,
    pub ip_routes: Vec<TempFile>,
}

impl Saved {
    /// `iptables-save`, `ip6tables-save`, `ip [-6] rule show`, `ip [-6] route show table
    /// all` in `ns`, table names resolved through `rt_tables`.
    pub fn capture(ns: &NetNs, rt_tables: &TempFile) -> Self {
        let file = |name: &str, cmd: &str| TempFile::new(name, &sh(ns, rt_tables, cmd));
        Self {
            iptables: vec![
                file("iptables.save", "iptables-save"),
                file("ip6tables.save", "ip6tables-save"),
            ],
            ip_rules: vec![
                file("rules4.txt", "ip rule show"),
                file("rules6.txt", "ip -6 rule show"),
            ],
            ip_routes: vec![
                file("routes4.txt", "ip route show table all"),
                file("routes6.txt", "ip -6 route show table all"),
            ],
        }
    }

    /// The `import` arguments naming every file.
    pub fn args(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (flag, files) in [
            ("--iptables-save", &self.iptables),
            ("--ip-rule", &self.ip_rules),
            ("--ip-route", &self.ip_routes),
        ] {
            for f in files {
                out.push(flag.to_owned());
                out.push(f.arg().to_owned());
            }
        }
        out
    }
}
