//! The address classes of prefix sets: a walk down a multibit trie (16 bits at the root,
//! `TRIE_STRIDE_BITS` per node below, a few deeper prefixes kept whole in a bucket of
//! leaves) that the controller wrote into `PR_PREFIX_TRIE2`. One array read per level (at most 5 for IPv4
//! and 29 for IPv6, then a bucket of leaves: two cache lines side by side), whatever the
//! number of prefixes or lengths.
//!
//! Everything runs in `bpf_loop` callbacks: the verifier checks a walk once, and the
//! classes reach the rest of the program as plain unknown numbers. (Walked in the program
//! itself, each way a walk can end was a different state for all the code after it, and
//! every load of the programs took twice as long.)
use core::ffi::c_void;

use aya_ebpf::{bindings::BPF_F_MMAPABLE, helpers::generated::bpf_loop, macros::map, maps::Array};
use policyroute_common::{
    ShapeTable, TrieNode, DEFAULT_TRIE_NODES, FAMILY_V6, SHAPE_SRC, TRIE_BUCKET_LEAVES, TRIE_INDEX,
    TRIE_LEAF, TRIE_LEAF_WORDS, TRIE_LEAVES_PER_NODE, TRIE_LEVELS_V4, TRIE_LEVELS_V6, TRIE_NODE,
    TRIE_NODE_WORDS, TRIE_NONE, TRIE_ROOT_BITS, TRIE_STRIDE_BITS,
};

use crate::parse::Packet;

/// Memory-mappable: the controller writes a trie image with stores, not a syscall per word.
#[map(name = "PR_PREFIX_TRIE2")]
static PREFIX_TRIE: Array<TrieNode> = Array::with_max_entries(DEFAULT_TRIE_NODES, BPF_F_MMAPABLE);

/// What the classes callback reads and writes.
struct Classes<'a> {
    table: &'a ShapeTable,
    pkt: &'a Packet,
    src: u32,
    dst: u32,
}

/// Sets `src` and `dst` to the classes of the packet's addresses (0: in no prefix of a
/// trie, or no trie for that field).
#[inline(always)]
pub fn classes(src: &mut u32, dst: &mut u32, table: &ShapeTable, pkt: &Packet) {
    let mut c = Classes {
        table,
        pkt,
        src: 0,
        dst: 0,
    };
    let step = classes_step as *mut c_void;
    // SAFETY: bpf_loop calls `step` once with a pointer to `c`, which lives on this stack
    // frame until bpf_loop returns.
    unsafe { bpf_loop(1, step, (&mut c as *mut Classes).cast(), 0) };
    *src = c.src;
    *dst = c.dst;
}

unsafe extern "C" fn classes_step(_: u32, ctx: *mut Classes) -> i64 {
    // SAFETY: `ctx` is the `Classes` that `classes` handed to bpf_loop, alive and not
    // otherwise borrowed during the loop.
    let c = unsafe { &mut *ctx };
    let (t, pkt) = (c.table, c.pkt);
    // An unknown source (an unbound socket) matches no source condition.
    if pkt.unknown & SHAPE_SRC == 0 {
        c.src = class(t.trie_base, t.src_root, &pkt.src, pkt.family);
    }
    c.dst = class(t.trie_base, t.dst_root, &pkt.dst, pkt.family);
    1
}

/// The class of `addr` (network-order bytes as native words) in the trie whose root is
/// node `base + root`; 0 when no prefix holds it or there is no trie.
#[inline(always)]
fn class(base: u32, root: u32, addr: &[u32; 4], family: u32) -> u32 {
    if root == TRIE_NONE {
        return 0;
    }
    // A root spans consecutive nodes: its 16 bits pick the node, then the word.
    let first = u32::from_be(addr[0]) >> 16;
    let at = base
        .wrapping_add(root)
        .wrapping_add(first / TRIE_NODE_WORDS);
    let Some(node) = PREFIX_TRIE.get(at) else {
        return 0;
    };
    let mut walk = Walk {
        addr,
        base,
        word: node[(first % TRIE_NODE_WORDS) as usize],
    };
    if walk.word & TRIE_NODE != 0 && walk.word & TRIE_LEAF == 0 {
        let levels = if family == FAMILY_V6 {
            TRIE_LEVELS_V6
        } else {
            TRIE_LEVELS_V4
        };
        let step = walk_step as *mut c_void;
        // SAFETY: bpf_loop calls `step` at most `levels` times with a pointer to `walk`,
        // which lives on this stack frame until bpf_loop returns. The trip count is bounded
        // by the address width, never by the number of prefixes.
        unsafe { bpf_loop(levels as u32, step, (&mut walk as *mut Walk).cast(), 0) };
    }
    let word = walk.word;
    if word & TRIE_NODE == 0 {
        word
    } else if word & TRIE_LEAF != 0 {
        bucket(base, word & TRIE_INDEX, addr)
    } else {
        // A node word after the last level would be a corrupt image: no class.
        0
    }
}

struct Walk<'a> {
    /// Read in place, not copied: the walk's state sits in the deepest call chain.
    addr: &'a [u32; 4],
    base: u32,
    /// The word reached so far.
    word: u32,
}

/// One level of the walk: follows a node word; returns 1 to stop at anything else.
unsafe extern "C" fn walk_step(level: u32, ctx: *mut Walk) -> i64 {
    // SAFETY: `ctx` is the `Walk` that `class` handed to bpf_loop, alive and not otherwise
    // borrowed during the loop.
    let w = unsafe { &mut *ctx };
    if w.word & TRIE_NODE == 0 || w.word & TRIE_LEAF != 0 {
        return 1;
    }
    let at = w.base.wrapping_add(w.word & TRIE_INDEX);
    w.word = match PREFIX_TRIE.get(at) {
        Some(node) => node[chunk(w.addr, level as usize)],
        None => 0,
    };
    0
}

/// The class the bucket at leaf `index` gives `addr`: that of its first (longest) leaf
/// whose prefix holds the address, else the bucket's outer class.
#[inline(always)]
fn bucket(base: u32, index: u32, addr: &[u32; 4]) -> u32 {
    let Some(first) = leaf_at(base, index) else {
        return 0;
    };
    let mut bucket = Bucket {
        base,
        index,
        addr,
        class: first[6],
    };
    let step = bucket_step as *mut c_void;
    // SAFETY: bpf_loop calls `step` at most TRIE_BUCKET_LEAVES times with a pointer to
    // `bucket`, which lives on this stack frame until bpf_loop returns. A loop, not
    // unrolled code: the verifier checks one leaf, not every way through four (which made
    // each load of programs with tries 170 ms slower).
    let n = first[7].min(TRIE_BUCKET_LEAVES);
    unsafe { bpf_loop(n, step, (&mut bucket as *mut Bucket).cast(), 0) };
    bucket.class
}

struct Bucket<'a> {
    base: u32,
    index: u32,
    addr: &'a [u32; 4],
    /// The outer class until a leaf holds the address.
    class: u32,
}

/// Leaf `i` of the bucket: takes its class and stops when its prefix holds the address.
unsafe extern "C" fn bucket_step(i: u32, ctx: *mut Bucket) -> i64 {
    // SAFETY: `ctx` is the `Bucket` that `bucket` handed to bpf_loop, alive and not otherwise
    // borrowed during the loop.
    let b = unsafe { &mut *ctx };
    let Some(l) = leaf_at(b.base, b.index.wrapping_add(i)) else {
        return 1;
    };
    if held(l, b.addr) {
        b.class = l[5];
        return 1;
    }
    0
}

/// The words of leaf `index`.
#[inline(always)]
fn leaf_at(base: u32, index: u32) -> Option<&'static [u32]> {
    let node = PREFIX_TRIE.get(base.wrapping_add(index / TRIE_LEAVES_PER_NODE))?;
    // The mask keeps the slot provably inside the node for the verifier.
    let slot = ((index % TRIE_LEAVES_PER_NODE) & (TRIE_LEAVES_PER_NODE - 1)) as usize
        * TRIE_LEAF_WORDS as usize;
    node.get(slot..slot + TRIE_LEAF_WORDS as usize)
}

/// Whether the leaf's prefix holds `addr`.
#[inline(always)]
fn held(l: &[u32], addr: &[u32; 4]) -> bool {
    let (Some(p), Some(&len)) = (l.get(..4), l.get(4)) else {
        return false;
    };
    let mut held = true;
    for (i, (a, p)) in addr.iter().zip(p).enumerate() {
        held &= a & mask(len, i as u32) == *p;
    }
    held
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

/// The bits of `addr` (network-order bytes as native words) that node level `i` (below
/// the root) indexes by.
#[inline(always)]
fn chunk(addr: &[u32; 4], i: usize) -> usize {
    let bit = TRIE_ROOT_BITS as usize + i * TRIE_STRIDE_BITS as usize;
    // `& 3` in the index itself: the verifier sees the read inside the 4 words.
    let word = u32::from_be(addr[(bit / 32) & 3]);
    let shift = 32 - TRIE_STRIDE_BITS as usize - bit % 32;
    (word as usize >> shift) & (TRIE_NODE_WORDS as usize - 1)
}
