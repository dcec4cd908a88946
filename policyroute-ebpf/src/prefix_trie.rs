//! The address classes of prefix sets: a walk down a multibit trie (16 bits at the root,
//! 8 per node below, a lone deeper prefix kept whole in a leaf) that the controller wrote
//! into `PR_PREFIX_TRIE`. One array read per level, at most 3 for IPv4 and 15 for IPv6
//! (one more for a leaf), whatever the number of prefixes or their lengths.
use policyroute_common::{
    FAMILY_V6, TRIE_INDEX, TRIE_LEAF, TRIE_LEAF_WORDS, TRIE_LEAVES_PER_NODE, TRIE_LEVELS_V6,
    TRIE_NODE, TRIE_NONE,
};

use crate::PREFIX_TRIE;

/// The class of `addr` (network-order bytes as native words) in the trie whose root is
/// node `base + root`; 0 when no prefix holds it or there is no trie.
#[inline(always)]
pub fn class(base: u32, root: u32, addr: &[u32; 4], family: u32) -> u32 {
    if root == TRIE_NONE {
        return 0;
    }
    let b = bytes(addr);
    // A root is 256 nodes: the first byte picks the node, the second the word.
    let at = base.wrapping_add(root).wrapping_add(u32::from(b[0]));
    let Some(node) = PREFIX_TRIE.get(at) else {
        return 0;
    };
    let mut word = node[usize::from(b[1])];
    let levels = if family == FAMILY_V6 {
        TRIE_LEVELS_V6
    } else {
        2
    };
    // Bounded by the address width, never by the number of prefixes.
    for i in 0..TRIE_LEVELS_V6 {
        if word & TRIE_NODE == 0 || word & TRIE_LEAF != 0 || i >= levels {
            break;
        }
        let at = base.wrapping_add(word & TRIE_INDEX);
        word = match PREFIX_TRIE.get(at) {
            Some(node) => node[usize::from(b[2 + i])],
            None => 0,
        };
    }
    if word & TRIE_NODE == 0 {
        return word;
    }
    if word & TRIE_LEAF != 0 {
        return leaf(base, word & TRIE_INDEX, addr);
    }
    // A node word after the last level would be a corrupt image: no class.
    0
}

/// The class a leaf gives `addr`: its prefix's if the prefix holds the address.
#[inline(always)]
fn leaf(base: u32, index: u32, addr: &[u32; 4]) -> u32 {
    let at = base.wrapping_add(index / TRIE_LEAVES_PER_NODE);
    let Some(node) = PREFIX_TRIE.get(at) else {
        return 0;
    };
    // `& 31` keeps the slot provably inside the node for the verifier.
    let slot = ((index % TRIE_LEAVES_PER_NODE) & 31) as usize * TRIE_LEAF_WORDS as usize;
    let Some(l) = node.get(slot..slot + TRIE_LEAF_WORDS as usize) else {
        return 0;
    };
    let len = l[4];
    let mut held = true;
    for (i, (a, p)) in addr.iter().zip(&l[..4]).enumerate() {
        held &= a & mask(len, i as u32) == *p;
    }
    if held {
        l[5]
    } else {
        l[6]
    }
}

/// The mask of word `i` (network-order bytes as a native word) of a `len`-bit prefix.
#[inline(always)]
fn mask(len: u32, i: u32) -> u32 {
    let bits = len.saturating_sub(i * 32).min(32);
    if bits == 0 {
        0
    } else {
        (u32::MAX << (32 - bits)).to_be()
    }
}

#[inline(always)]
fn bytes(addr: &[u32; 4]) -> [u8; 16] {
    let mut b = [0u8; 16];
    for (i, w) in addr.iter().enumerate() {
        let n = w.to_ne_bytes();
        b[i * 4..i * 4 + 4].copy_from_slice(&n);
    }
    b
}
