//! How ip(8) prints rules and routes: the pieces the text forms of [`super::objects`] and
//! [`super::foreign`] are made of, shared by `apply`, `status`, `check` and the daemon's log.
use std::fmt::{self, Write as _};

use ipnet::IpNet;

use crate::policy::{matcher::Family, rt_tables};

/// Interface index to name, to print a route's device.
pub type DeviceNames = std::collections::BTreeMap<u32, String>;

/// `-4` or `-6`, as `ip -4` and `ip -6` select a family.
pub fn family(f: Family) -> &'static str {
    match f {
        Family::V4 => "-4",
        Family::V6 => "-6",
    }
}

/// `-4 PRIORITY: [not] from SRC [fwmark VALUE/MASK]`
pub fn rule_selectors(
    f: &mut fmt::Formatter<'_>,
    family_: Family,
    priority: u32,
    invert: bool,
    src: Option<IpNet>,
    fwmark: Option<(u32, u32)>,
) -> fmt::Result {
    let not = if invert { "not " } else { "" };
    let src = src.map_or("all".into(), |n| n.to_string());
    write!(f, "{} {priority}: {not}from {src}", family(family_))?;
    if let Some((v, m)) = fwmark {
        write!(f, " fwmark {v:#x}/{m:#x}")?;
    }
    Ok(())
}

/// ` lookup TABLE`, by the table's name where rt_tables gives one.
pub fn lookup(f: &mut fmt::Formatter<'_>, table: u32) -> fmt::Result {
    write!(f, " lookup {}", rt_tables::display(table))
}

/// ` suppress_prefixlength N`
pub fn suppress(f: &mut fmt::Formatter<'_>, prefixlen: Option<u32>) -> fmt::Result {
    match prefixlen {
        Some(p) => write!(f, " suppress_prefixlength {p}"),
        None => Ok(()),
    }
}

/// `-4 table T: [TYPE ]DST`
pub fn route_head(f: Family, table: u32, kind: &str, dst: &IpNet) -> String {
    let table = rt_tables::display(table);
    format!("{} table {table}: {kind}{dst}", family(f))
}

/// ` via GATEWAY dev DEV`
pub fn next_hop(
    gateway: Option<std::net::IpAddr>,
    oif: Option<u32>,
    devices: &DeviceNames,
) -> String {
    let mut s = gateway.map_or(String::new(), |g| format!(" via {g}"));
    if let Some(oif) = oif {
        let dev = devices.get(&oif).cloned();
        let _ = write!(s, " dev {}", dev.unwrap_or_else(|| format!("#{oif}")));
    }
    s
}

/// A routing protocol by the name iproute2's rt_protos gives it, else its number.
pub fn route_protocol(p: u8) -> String {
    let name = match p {
        0 => "unspec",
        1 => "redirect",
        2 => "kernel",
        3 => "boot",
        4 => "static",
        9 => "ra",
        11 => "zebra",
        12 => "bird",
        16 => "dhcp",
        18 => "keepalived",
        42 => "babel",
        186 => "bgp",
        187 => "isis",
        188 => "ospf",
        189 => "rip",
        _ => return p.to_string(),
    };
    name.into()
}
