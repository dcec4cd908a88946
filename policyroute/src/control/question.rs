//! `explain`'s question as the command line asks it: the flags, read by clap, and the
//! checked [`Query`] they make. In the library rather than in the CLI's own types so that
//! the fuzz target (`fuzz/fuzz_targets/explain.rs`) reads argument vectors exactly as
//! `policyroute explain` does.
use std::{ffi::OsString, net::IpAddr};

use super::explain::Query;
use super::ControlError;
use crate::policy::protocol;

/// The flags of `policyroute explain` that make its question.
#[derive(Clone, Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("origin").required(true).args(["iif", "local"])))]
pub struct Question {
    /// The flow arrives on this device (forwarded, or to this host).
    #[arg(long, value_name = "DEV")]
    pub iif: Option<String>,
    /// The flow is sent by this host.
    #[arg(long)]
    pub local: bool,
    /// tcp, udp, icmp, icmpv6, sctp or a number.
    #[arg(long, value_name = "PROTO")]
    pub proto: String,
    /// Source address (for --local, 0.0.0.0 or :: means an unbound socket).
    #[arg(long, value_name = "ADDR")]
    pub src: IpAddr,
    /// Source port (for --local: only of a bound socket).
    #[arg(long, value_name = "PORT")]
    pub sport: Option<u16>,
    /// Destination address.
    #[arg(long, value_name = "ADDR")]
    pub dst: IpAddr,
    /// Destination port.
    #[arg(long, value_name = "PORT")]
    pub dport: Option<u16>,
    /// DSCP of the packet (0-63).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..64))]
    pub dscp: u8,
}

/// `explain` alone, for [`Question::parse`].
#[derive(clap::Parser)]
#[command(name = "explain")]
struct Explain {
    #[command(flatten)]
    question: Question,
}

impl Question {
    /// The question from the words after `explain` on the command line, as the CLI reads
    /// them: `Err` is clap's refusal (or its `--help`).
    pub fn parse<I, T>(words: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let argv =
            std::iter::once(OsString::from("explain")).chain(words.into_iter().map(Into::into));
        <Explain as clap::Parser>::try_parse_from(argv).map(|e| e.question)
    }

    /// The query it asks; refused when no packet could ask it.
    pub fn query(self) -> Result<Query, ControlError> {
        let proto = protocol::parse(&self.proto)
            .ok_or_else(|| ControlError::Question(protocol::unknown(&self.proto)))?;
        let q = Query {
            iif: self.iif,
            proto,
            src: self.src,
            sport: self.sport,
            dst: self.dst,
            dport: self.dport,
            dscp: self.dscp,
        };
        q.check()?;
        Ok(q)
    }
}

#[cfg(test)]
mod tests {
    use super::Question;
    use crate::control::ControlError;

    fn query(words: &[&str]) -> Result<super::Query, ControlError> {
        Question::parse(words).expect("clap accepts it").query()
    }

    fn refusal(words: &[&str]) -> String {
        let e = query(words).expect_err("refused");
        assert_eq!(e.exit_status(), 2, "{e}");
        e.to_string()
    }

    #[test]
    fn the_words_make_the_query_explain_asks() {
        let q = query(&[
            "--iif",
            "lan0",
            "--proto",
            "TCP",
            "--src",
            "192.0.2.10",
            "--sport",
            "40000",
            "--dst",
            "198.18.0.1",
            "--dport",
            "443",
            "--dscp",
            "46",
        ])
        .unwrap();
        assert_eq!(
            (q.iif.as_deref(), q.proto, q.sport, q.dport, q.dscp),
            (Some("lan0"), 6, Some(40000), Some(443), 46)
        );
        assert!(Question::parse(["--proto", "tcp", "--src", "::", "--dst", "::1"]).is_err());
        assert!(Question::parse(["--local", "--iif", "x", "--proto", "tcp"]).is_err());
    }

    /// Found by the fuzz target (fuzz/regressions/explain/): `--proto 0` with IPv6
    /// addresses made a frame whose hop-by-hop "protocol" the classifiers walk past.
    #[test]
    fn an_ipv6_extension_header_is_no_protocol_to_ask_about() {
        for proto in ["0", "43", "44", "ah", "60"] {
            let words = [
                "--local",
                "--proto",
                proto,
                "--src",
                "::",
                "--dst",
                "2001:db8::1",
            ];
            assert!(
                refusal(&words).contains("is an IPv6 extension header"),
                "{proto}"
            );
        }
        // IPv4 has no extension headers: protocol 44 is just a number there.
        let v4 = [
            "--local",
            "--proto",
            "44",
            "--src",
            "0.0.0.0",
            "--dst",
            "198.18.0.1",
        ];
        assert_eq!(query(&v4).unwrap().proto, 44);
    }
}
