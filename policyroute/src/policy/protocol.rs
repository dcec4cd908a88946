//! IP protocols by name or number, for the policy file, `explain` and the reports. The
//! table itself is `policyroute_common::net::PROTOCOLS`, shared with the eBPF side.
use policyroute_common::net::PROTOCOLS;

/// A protocol name (any case) or a number 0-255.
pub fn parse(text: &str) -> Option<u8> {
    let lower = text.to_ascii_lowercase();
    PROTOCOLS
        .iter()
        .find(|(n, _)| *n == lower)
        .map(|&(_, p)| p)
        .or_else(|| lower.parse().ok())
}

/// The usual name of a protocol number, or the number.
pub fn name(p: u8) -> String {
    PROTOCOLS
        .iter()
        .find(|&&(_, n)| n == p)
        .map_or_else(|| p.to_string(), |(name, _)| (*name).to_string())
}

/// Why `text` is no protocol, naming the ones [`parse`] knows.
pub fn unknown(text: &str) -> String {
    format!(
        "unknown protocol {text:?} (known: {}, or a number 0-255)",
        known()
    )
}

/// The names [`parse`] knows, for error messages.
pub fn known() -> String {
    let names: Vec<&str> = PROTOCOLS.iter().map(|(n, _)| *n).collect();
    names.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_round_trip() {
        assert_eq!(parse("TCP"), Some(6));
        assert_eq!(parse("ipv6-icmp"), Some(58));
        assert_eq!(parse("47"), Some(47));
        assert_eq!(parse("256"), None);
        assert_eq!(parse("bogus"), None);
        assert_eq!(name(58), "icmpv6");
        assert_eq!(name(253), "253");
    }
}
