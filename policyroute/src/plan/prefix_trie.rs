//! Multibit prefix tries (controlled prefix expansion, in the style of DIR-16-8): an
//! address's class is the class of the longest prefix holding it, found with one array
//! read per level whatever the number of prefixes or their lengths.
//!
//! A root indexes the first 16 bits of an address, each node below it the next 8, so an
//! IPv4 address takes at most 3 reads and an IPv6 address 15. A word is either a class or
//! `TRIE_NODE | index of a child node`. Prefixes are expanded to the stride they end in,
//! and a node starts as copies of the word it replaces, so shorter prefixes are pushed
//! down into it (leaf pushing): the walk stops at the first word that is not a node.
//!
//! Images are position-independent (node indexes relative to the image's first node), so
//! the controller writes a new one beside the live one and publishes both roots at once.
//! Everything is laid out in whole nodes of 256 words (a root is 256 consecutive nodes):
//! the kernel map holds one node per element.
use policyroute_common::{TRIE_NODE, TRIE_NODE_WORDS, TRIE_ROOT_BITS, TRIE_STRIDE_BITS};

/// One prefix of a trie: the address's bytes (network order, IPv4 in the first 4), its
/// length and its class (non-zero, below `TRIE_NODE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Prefix {
    pub addr: [u8; 16],
    pub len: u8,
    pub class: u32,
}

/// Words of several tries; [`Image::add`] returns each one's root (a node index).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Image {
    pub words: Vec<u32>,
}

impl Image {
    /// Appends a trie of `prefixes` (each prefix once) and returns its root's index.
    pub fn add(&mut self, prefixes: &mut [Prefix]) -> u32 {
        // Shorter first: a longer prefix then only ever overwrites what a shorter one
        // wrote, and a node is only ever created below words holding classes.
        prefixes.sort_unstable_by_key(|p| p.len);
        let root = self.alloc(1 << TRIE_ROOT_BITS, 0) / TRIE_NODE_WORDS;
        for p in prefixes.iter() {
            debug_assert!(p.class != 0 && p.class & TRIE_NODE == 0);
            self.insert(root, p);
        }
        root
    }

    fn alloc(&mut self, words: u32, fill: u32) -> u32 {
        let at = self.words.len() as u32;
        assert!(
            (at + words) / TRIE_NODE_WORDS < TRIE_NODE,
            "a prefix trie image stays below 2^31 nodes"
        );
        self.words.resize(self.words.len() + words as usize, fill);
        at
    }

    /// Nodes the image takes.
    pub fn nodes(&self) -> usize {
        self.words.len() / TRIE_NODE_WORDS as usize
    }

    fn insert(&mut self, root: u32, p: &Prefix) {
        let len = u32::from(p.len);
        // `node`: the first word of the node (or root) being filled.
        let (mut node, mut start, mut width) = (root * TRIE_NODE_WORDS, 0u32, TRIE_ROOT_BITS);
        // Descend while the prefix ends below this node's bits.
        while len > start + width {
            let word_at = (node + bits(&p.addr, start, width)) as usize;
            let word = self.words[word_at];
            let child = if word & TRIE_NODE != 0 {
                (word & !TRIE_NODE) * TRIE_NODE_WORDS
            } else {
                let child = self.alloc(TRIE_NODE_WORDS, word);
                self.words[word_at] = TRIE_NODE | (child / TRIE_NODE_WORDS);
                child
            };
            node = child;
            start += width;
            width = TRIE_STRIDE_BITS;
        }
        // The prefix covers 2^(start + width - len) consecutive words of this node.
        let free = start + width - len;
        let first = bits(&p.addr, start, width) & !((1u32 << free) - 1);
        let from = (node + first) as usize;
        self.words[from..from + (1usize << free)].fill(p.class);
    }

    /// The class of `addr` in the trie at `root` (what the classifier's walk finds).
    pub fn lookup(&self, root: u32, addr: &[u8; 16]) -> u32 {
        let first = root * TRIE_NODE_WORDS + bits(addr, 0, TRIE_ROOT_BITS);
        let mut word = self.words[first as usize];
        let mut start = TRIE_ROOT_BITS;
        while word & TRIE_NODE != 0 {
            let node = (word & !TRIE_NODE) * TRIE_NODE_WORDS;
            word = self.words[(node + bits(addr, start, TRIE_STRIDE_BITS)) as usize];
            start += TRIE_STRIDE_BITS;
        }
        word
    }
}

/// `width` bits of `addr` from bit `start` (0 is the most significant), as an integer.
fn bits(addr: &[u8; 16], start: u32, width: u32) -> u32 {
    let all = u128::from_be_bytes(*addr);
    ((all << start) >> (128 - width)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn prefix(s: &str, class: u32) -> Prefix {
        let net: ipnet::IpNet = s.parse().unwrap();
        let mut addr = [0u8; 16];
        match net.network() {
            IpAddr::V4(a) => addr[..4].copy_from_slice(&a.octets()),
            IpAddr::V6(a) => addr.copy_from_slice(&a.octets()),
        }
        Prefix {
            addr,
            len: net.prefix_len(),
            class,
        }
    }

    fn addr(s: &str) -> [u8; 16] {
        let a: IpAddr = s.parse().unwrap();
        prefix(&ipnet::IpNet::from(a).to_string(), 1).addr
    }

    #[test]
    fn longest_prefix_wins_at_every_level() {
        let mut image = Image::default();
        let mut v4 = vec![
            prefix("198.51.100.7/32", 4),
            prefix("0.0.0.0/0", 9),
            prefix("198.0.0.0/8", 1),
            prefix("198.51.100.0/24", 3),
            prefix("198.51.0.0/16", 2),
        ];
        let root = image.add(&mut v4);
        for (a, want) in [
            ("198.51.100.7", 4),
            ("198.51.100.8", 3),
            ("198.51.101.1", 2),
            ("198.52.0.1", 1),
            ("203.0.113.1", 9),
        ] {
            assert_eq!(image.lookup(root, &addr(a)), want, "{a}");
        }
    }

    #[test]
    fn ipv6_prefixes_of_any_length() {
        let mut image = Image::default();
        let first = image.add(&mut [prefix("192.0.2.0/24", 7)]);
        let mut v6: Vec<Prefix> = (1..=128u8)
            .map(|len| {
                let net = ipnet::Ipv6Net::new(
                    "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap(),
                    len,
                )
                .unwrap()
                .trunc();
                prefix(&net.to_string(), u32::from(len))
            })
            .collect();
        let root = image.add(&mut v6);
        assert_eq!(image.lookup(first, &addr("192.0.2.9")), 7);
        assert_eq!(
            image.lookup(root, &addr("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff")),
            128
        );
        assert_eq!(
            image.lookup(root, &addr("2001:db8:ffff:ffff:ffff:ffff:ffff:fffe")),
            127
        );
        assert_eq!(image.lookup(root, &addr("2001:db8:ffff:ffff::")), 64);
        assert_eq!(image.lookup(root, &addr("2001:db8::")), 32);
        assert_eq!(image.lookup(root, &addr("2001:db8:8000::")), 33);
        assert_eq!(image.lookup(root, &addr("::1")), 2);
        assert_eq!(image.lookup(root, &addr("8000::1")), 0);
    }

    #[test]
    fn random_prefixes_match_a_linear_scan() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut list: Vec<Prefix> = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        while list.len() < 2000 {
            let len = (next() % 33) as u8;
            let a = (next() as u32 & 0xc0a8_ffff)
                & (u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0));
            if seen.insert((a, len)) {
                let mut addr = [0u8; 16];
                addr[..4].copy_from_slice(&a.to_be_bytes());
                list.push(Prefix {
                    addr,
                    len,
                    class: list.len() as u32 + 1,
                });
            }
        }
        let mut image = Image::default();
        let root = image.add(&mut list.clone());
        for _ in 0..20_000 {
            let a = next() as u32 & 0xc0a8_ffff;
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&a.to_be_bytes());
            let want = list
                .iter()
                .filter(|p| {
                    let m = u32::MAX.checked_shl(32 - u32::from(p.len)).unwrap_or(0);
                    u32::from_be_bytes(p.addr[..4].try_into().unwrap()) == a & m
                })
                .max_by_key(|p| p.len)
                .map_or(0, |p| p.class);
            assert_eq!(image.lookup(root, &addr), want, "{a:08x}");
        }
    }
}
