//! Multibit prefix tries (controlled prefix expansion, in the style of DIR-16-8, with
//! path-compressed leaves): an address's class is the class of the longest prefix holding
//! it, found with one array read per level whatever the number of prefixes or lengths.
//!
//! A root indexes the first 16 bits of an address, each node below it the next
//! `TRIE_STRIDE_BITS` (4: a node is 16 words, one cache line), so an IPv4 address takes at
//! most 5 reads and an IPv6 address 29, then a bucket of leaves; real lists take far fewer,
//! as buckets end most paths early. A word is a class, `TRIE_NODE | node index`, or
//! `TRIE_NODE | TRIE_LEAF | leaf index`. Prefixes are expanded into the node they end in;
//! a node starts as copies of the class of the word it replaces, so shorter prefixes are
//! pushed down into it (leaf pushing). A few prefixes below a word (at most
//! `TRIE_BUCKET_LEAVES`) do not get nodes: a bucket of leaves keeps each whole (address,
//! length, the class of an address it holds), longest first, with the class of an address
//! none holds. That bounds the memory of long, sparse prefixes (an IPv6 /128 costs 32
//! bytes, not a chain of 28 nodes) and ends most paths one read after the root.
//!
//! Images are position-independent (node indexes relative to the image's first node), so
//! the controller writes a new one beside the live one and publishes both roots at once.
//! Everything is laid out in whole nodes (a root is 4,096 consecutive nodes, two leaves
//! share one): the kernel map holds one node per element.
use policyroute_common::{
    TRIE_BUCKET_LEAVES, TRIE_INDEX, TRIE_LEAF, TRIE_LEAF_WORDS, TRIE_LEAVES_PER_NODE, TRIE_NODE,
    TRIE_NODE_WORDS, TRIE_ROOT_BITS, TRIE_STRIDE_BITS,
};

/// One prefix of a trie: the address's bytes (network order, IPv4 in the first 4), its
/// length and its class (non-zero, below `TRIE_LEAF`).
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
    /// Leaves given out so far, and the node-sized block the next one goes to.
    leaves: u32,
    leaf_block: u32,
}

impl Image {
    /// Appends a trie of `prefixes` (each prefix once) and returns its root's index.
    pub fn add(&mut self, prefixes: &mut [Prefix]) -> u32 {
        // Address order: what a node holds is contiguous, an enclosing prefix first.
        prefixes.sort_unstable_by_key(|p| (p.addr, p.len));
        let root = self.alloc(1 << TRIE_ROOT_BITS, 0);
        self.fill(root, 0, TRIE_ROOT_BITS, prefixes);
        root / TRIE_NODE_WORDS
    }

    /// Nodes the image takes.
    pub fn nodes(&self) -> usize {
        self.words.len() / TRIE_NODE_WORDS as usize
    }

    /// Words from `at`, filled with `fill`; returns the first word's index.
    fn alloc(&mut self, words: u32, fill: u32) -> u32 {
        let at = self.words.len() as u32;
        assert!(
            (at as u64 + u64::from(words)) / u64::from(TRIE_NODE_WORDS) < u64::from(TRIE_INDEX),
            "a prefix trie image stays below 2^30 nodes"
        );
        self.words.resize(self.words.len() + words as usize, fill);
        at
    }

    /// Fills the node at word `at`, covering `width` bits from bit `start`, with
    /// `prefixes` (all longer than `start`, all inside the node's range, in address order).
    fn fill(&mut self, at: u32, start: u32, width: u32, prefixes: &[Prefix]) {
        let end = start + width;
        // Those ending here, shorter first: a longer one overwrites what it holds.
        let mut here: Vec<&Prefix> = prefixes
            .iter()
            .filter(|p| u32::from(p.len) <= end)
            .collect();
        here.sort_by_key(|p| p.len);
        for p in here {
            let free = end - u32::from(p.len);
            let first = bits(&p.addr, start, width) & !((1u32 << free) - 1);
            let from = (at + first) as usize;
            self.words[from..from + (1usize << free)].fill(p.class);
        }
        // Those going deeper, by the word they go below (contiguous in address order).
        let deeper: Vec<&Prefix> = prefixes.iter().filter(|p| u32::from(p.len) > end).collect();
        let mut i = 0;
        while i < deeper.len() {
            let entry = bits(&deeper[i].addr, start, width);
            let n = deeper[i..]
                .iter()
                .take_while(|p| bits(&p.addr, start, width) == entry)
                .count();
            let group: Vec<Prefix> = deeper[i..i + n].iter().map(|p| **p).collect();
            let word_at = (at + entry) as usize;
            let outer = self.words[word_at];
            self.words[word_at] = if group.len() <= TRIE_BUCKET_LEAVES as usize {
                self.bucket(group, outer)
            } else {
                let child = self.alloc(TRIE_NODE_WORDS, outer);
                self.fill(child, end, TRIE_STRIDE_BITS, &group);
                TRIE_NODE | (child / TRIE_NODE_WORDS)
            };
            i += n;
        }
    }

    /// A bucket of leaves for `group` (all the prefixes below a word whose class is
    /// `outer`, at most `TRIE_BUCKET_LEAVES`), longest first.
    fn bucket(&mut self, mut group: Vec<Prefix>, outer: u32) -> u32 {
        group.sort_by_key(|p| std::cmp::Reverse(p.len));
        let n = group.len() as u32;
        // A lone leaf shares a node with another; a bucket of several takes whole nodes,
        // so its leaves are consecutive.
        let index = if n == 1 {
            if self.leaves.is_multiple_of(TRIE_LEAVES_PER_NODE) {
                self.leaf_block = self.alloc(TRIE_NODE_WORDS, 0) / TRIE_NODE_WORDS;
            }
            self.leaves += 1;
            self.leaf_block * TRIE_LEAVES_PER_NODE + (self.leaves - 1) % TRIE_LEAVES_PER_NODE
        } else {
            let nodes = n.div_ceil(TRIE_LEAVES_PER_NODE);
            self.alloc(nodes * TRIE_NODE_WORDS, 0) / TRIE_NODE_WORDS * TRIE_LEAVES_PER_NODE
        };
        for (i, p) in group.iter().enumerate() {
            let from = ((index + i as u32) * TRIE_LEAF_WORDS) as usize;
            let words = addr_words(&p.addr);
            self.words[from..from + 4].copy_from_slice(&words);
            self.words[from + 4] = u32::from(p.len);
            self.words[from + 5] = p.class;
            self.words[from + 6] = outer;
            self.words[from + 7] = n;
        }
        TRIE_NODE | TRIE_LEAF | index
    }

    /// The class of `addr` in the trie at `root` (what the classifier's walk finds).
    pub fn lookup(&self, root: u32, addr: &[u8; 16]) -> u32 {
        let first = root * TRIE_NODE_WORDS + bits(addr, 0, TRIE_ROOT_BITS);
        let mut word = self.words[first as usize];
        let mut start = TRIE_ROOT_BITS;
        while word & TRIE_NODE != 0 {
            let index = word & TRIE_INDEX;
            if word & TRIE_LEAF != 0 {
                return self.bucket_class(index, addr);
            }
            word = self.words
                [(index * TRIE_NODE_WORDS + bits(addr, start, TRIE_STRIDE_BITS)) as usize];
            start += TRIE_STRIDE_BITS;
        }
        word
    }

    /// The class the bucket at leaf `index` gives `addr`: the first (longest) leaf holding
    /// it, else the bucket's outer class.
    fn bucket_class(&self, index: u32, addr: &[u8; 16]) -> u32 {
        let leaf = |i: u32| &self.words[((index + i) * TRIE_LEAF_WORDS) as usize..][..8];
        let first = leaf(0);
        (0..first[7])
            .map(leaf)
            .find(|l| masked(&addr_words(addr), l[4] as u8) == l[..4])
            .map_or(first[6], |l| l[5])
    }
}

/// The address as the classifier keeps it: network-order bytes viewed as native words.
fn addr_words(addr: &[u8; 16]) -> [u32; 4] {
    std::array::from_fn(|i| u32::from_ne_bytes(addr[i * 4..i * 4 + 4].try_into().unwrap()))
}

/// `words` with the bits beyond `len` cleared.
fn masked(words: &[u32; 4], len: u8) -> [u32; 4] {
    let mask = super::compile::mask_words(len);
    std::array::from_fn(|i| words[i] & mask[i])
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

    /// Random prefixes of both widths, drawn from a small pool of bits so they nest and
    /// share paths (nodes, leaves and leaf pushing all occur), against a linear scan.
    #[test]
    fn random_prefixes_match_a_linear_scan() {
        for (width, pool) in [
            (32u32, 0xc0a8_ff0f_u128 << 96),
            (
                128,
                (0xffff_u128 << 112) | 0xff0f_00ff_0000_0000_0000_0000_f00f,
            ),
        ] {
            let mut rng = 0x9e37_79b9_7f4a_7c15u64;
            let mut next = || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                (u128::from(rng) << 64) | u128::from(rng.rotate_left(29))
            };
            let mask = |len: u32| u128::MAX.checked_shl(128 - len).unwrap_or(0);
            let mut list: Vec<(u128, u32, u32)> = Vec::new();
            let mut seen = std::collections::BTreeSet::new();
            while list.len() < 3000 {
                let len = (next() % u128::from(width + 1)) as u32;
                let a = next() & pool & mask(len);
                if seen.insert((a, len)) {
                    list.push((a, len, list.len() as u32 + 1));
                }
            }
            let mut prefixes: Vec<Prefix> = list
                .iter()
                .map(|&(a, len, class)| Prefix {
                    addr: a.to_be_bytes(),
                    len: len as u8,
                    class,
                })
                .collect();
            let mut image = Image::default();
            let root = image.add(&mut prefixes);
            for _ in 0..20_000 {
                let a = next() & pool;
                let want = list
                    .iter()
                    .filter(|(p, len, _)| a & mask(*len) == *p)
                    .max_by_key(|(_, len, _)| *len)
                    .map_or(0, |(_, _, class)| *class);
                assert_eq!(
                    image.lookup(root, &a.to_be_bytes()),
                    want,
                    "/{width} {a:032x}"
                );
            }
        }
    }

    /// A /8 expanded into the root and three nested prefixes below one of its words: one
    /// bucket of three leaves (two nodes), longest first, and the /8's class pushed into
    /// the bucket for what none of them holds.
    #[test]
    fn a_few_prefixes_below_a_word_share_one_bucket() {
        let mut image = Image::default();
        let mut list: Vec<Prefix> = [
            ("10.0.0.0/8", 1),
            ("10.1.0.0/20", 2),
            ("10.1.2.0/24", 3),
            ("10.1.2.128/25", 4),
        ]
        .into_iter()
        .map(|(p, class)| prefix(p, class))
        .collect();
        let root = image.add(&mut list);
        let root_nodes = (1 << TRIE_ROOT_BITS) / TRIE_NODE_WORDS as usize;
        assert_eq!(image.nodes(), root_nodes + 2);
        for (a, class) in [
            ("10.1.2.200", 4),
            ("10.1.2.5", 3),
            ("10.1.3.1", 2),
            ("10.1.16.1", 1),
            ("10.2.0.0", 1),
            ("11.0.0.0", 0),
        ] {
            assert_eq!(image.lookup(root, &addr(a)), class, "{a}");
        }
    }

    #[test]
    fn lone_long_prefixes_take_leaves_not_node_chains() {
        let mut image = Image::default();
        let mut hosts: Vec<Prefix> = (0..1000u128)
            .map(|i| Prefix {
                addr: ((0x2001_0db8_u128 << 96) | (i << 80) | 1).to_be_bytes(),
                len: 128,
                class: 5,
            })
            .collect();
        let root = image.add(&mut hosts);
        // The root, a few nodes where the hosts' paths part, and a leaf each: far from the
        // 28 nodes per /128 a chain would take.
        let root_nodes = (1 << TRIE_ROOT_BITS) / TRIE_NODE_WORDS as usize;
        assert!(image.nodes() < root_nodes + 1500, "{} nodes", image.nodes());
        let host = (0x2001_0db8_u128 << 96) | (7 << 80) | 1;
        assert_eq!(image.lookup(root, &host.to_be_bytes()), 5);
        assert_eq!(image.lookup(root, &(host + 1).to_be_bytes()), 0);
    }
}
