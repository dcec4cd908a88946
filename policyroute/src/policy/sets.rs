//! `[[set]]`: named prefix lists, written inline or kept in a file of their own (one prefix
//! per line, IPv4 and IPv6 mixed, `#` comments), which rules use as `src = "@name"` or
//! `dst = "@name"`.
use std::{net::IpAddr, sync::Arc};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::matcher::Family;

/// A named set of prefixes: sorted, without duplicates, host bits cleared.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PrefixSet {
    pub name: String,
    /// The list file as the policy names it, if the set came from one.
    pub file: Option<String>,
    pub prefixes: Vec<IpNet>,
    /// The distinct (is IPv6, length) pairs of `prefixes`, so a membership test takes one
    /// binary search per length rather than a scan.
    lengths: Vec<(bool, u8)>,
}

impl PrefixSet {
    pub fn new(name: String, file: Option<String>, mut prefixes: Vec<IpNet>) -> Self {
        prefixes.sort_unstable();
        prefixes.dedup();
        let mut lengths: Vec<(bool, u8)> = prefixes
            .iter()
            .map(|p| (matches!(p, IpNet::V6(_)), p.prefix_len()))
            .collect();
        lengths.sort_unstable();
        lengths.dedup();
        Self {
            name,
            file,
            prefixes,
            lengths,
        }
    }

    pub fn contains(&self, addr: &IpAddr) -> bool {
        let v6 = addr.is_ipv6();
        self.lengths
            .iter()
            .filter(|(f, _)| *f == v6)
            .any(|&(_, len)| {
                IpNet::new(*addr, len)
                    .is_ok_and(|n| self.prefixes.binary_search(&n.trunc()).is_ok())
            })
    }

    /// The families it has prefixes of.
    pub fn families(&self) -> Vec<Family> {
        let mut out = Vec::new();
        if self.lengths.iter().any(|(v6, _)| !v6) {
            out.push(Family::V4);
        }
        if self.lengths.iter().any(|(v6, _)| *v6) {
            out.push(Family::V6);
        }
        out
    }

    pub fn count(&self, family: Family) -> usize {
        self.prefixes
            .iter()
            .filter(|p| Family::of_net(p) == family)
            .count()
    }

    /// The longest prefix of the set holding `addr` (what `explain` shows).
    pub fn longest_match(&self, addr: &IpAddr) -> Option<IpNet> {
        let v6 = addr.is_ipv6();
        self.lengths
            .iter()
            .rev()
            .filter(|(f, _)| *f == v6)
            .find_map(|&(_, len)| {
                let n = IpNet::new(*addr, len).ok()?.trunc();
                self.prefixes.binary_search(&n).ok().map(|_| n)
            })
    }
}

/// A rule's reference to a set. Records keep only the name (the policy keeps the set once,
/// however many rules use it); [`super::Policy::link_sets`] binds it again after decoding.
#[derive(Clone, Debug, Default)]
pub struct SetRef {
    pub name: String,
    pub set: Arc<PrefixSet>,
}

impl SetRef {
    pub fn new(set: Arc<PrefixSet>) -> Self {
        Self {
            name: set.name.clone(),
            set,
        }
    }
}

impl PartialEq for SetRef {
    /// A rule whose set's prefixes changed is a changed rule.
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.set == other.set
    }
}

impl Eq for SetRef {}

impl std::hash::Hash for SetRef {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl Serialize for SetRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.name.serialize(s)
    }
}

impl<'de> Deserialize<'de> for SetRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self {
            name: String::deserialize(d)?,
            set: Arc::default(),
        })
    }
}

/// Why a list's line is not a prefix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ListError {
    #[error("{0:?} is not an IPv4 or IPv6 prefix (like 192.0.2.0/24 or 2001:db8::/32)")]
    NotAPrefix(String),
    #[error("prefix {0} has host bits set (did you mean {1}?)")]
    HostBits(IpNet, IpNet),
}

/// One prefix as written in a list or a set's `prefixes`: a bare address is a host route
/// (/32 or /128).
pub fn parse_prefix(text: &str) -> Result<IpNet, ListError> {
    let net = match text.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => text
            .parse::<IpAddr>()
            .map(IpNet::from)
            .map_err(|_| ListError::NotAPrefix(text.to_owned()))?,
    };
    if net.trunc() != net {
        return Err(ListError::HostBits(net, net.trunc()));
    }
    Ok(net)
}

/// The prefixes of a list file's text, or the first bad line (1-based) and why.
pub fn parse_list(text: &str) -> Result<Vec<IpNet>, (usize, ListError)> {
    let mut out = Vec::new();
    // Editors on some systems start a file with a byte-order mark.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (i, line) in text.lines().enumerate() {
        let item = line.split('#').next().unwrap_or("").trim();
        if item.is_empty() {
            continue;
        }
        out.push(parse_prefix(item).map_err(|e| (i + 1, e))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_take_comments_blank_lines_and_both_families() {
        let text = "# de\n192.0.2.0/24\n\n2001:db8::/32  # v6\n198.51.100.7\n";
        let set = PrefixSet::new("de".into(), None, parse_list(text).unwrap());
        assert_eq!(set.prefixes.len(), 3);
        assert!(set.contains(&"192.0.2.77".parse().unwrap()));
        assert!(set.contains(&"198.51.100.7".parse().unwrap()));
        assert!(!set.contains(&"198.51.100.8".parse().unwrap()));
        assert!(set.contains(&"2001:db8:1::1".parse().unwrap()));
        assert_eq!(set.families(), vec![Family::V4, Family::V6]);
        assert_eq!(
            set.longest_match(&"198.51.100.7".parse().unwrap()),
            Some("198.51.100.7/32".parse().unwrap())
        );
    }

    #[test]
    fn bad_lines_are_numbered() {
        let err = parse_list("192.0.2.0/24\n\n192.0.2.1/24\n").unwrap_err();
        assert_eq!(err.0, 3);
        assert_eq!(
            err.1.to_string(),
            "prefix 192.0.2.1/24 has host bits set (did you mean 192.0.2.0/24?)"
        );
        let err = parse_list("nonsense\n").unwrap_err();
        assert_eq!(err.0, 1);
        assert!(err
            .1
            .to_string()
            .contains("\"nonsense\" is not an IPv4 or IPv6 prefix"));
    }
}
