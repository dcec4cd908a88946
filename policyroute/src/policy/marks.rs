//! Marks for gateways that do not set one.
use std::collections::BTreeSet;

use super::read::GatewayDraft;
use super::read_rules::RuleDraft;
use super::toml_tree::Doc;

/// Each gateway's mark: its explicit one, or the next derived mark (see [`derived`]) not
/// used explicitly by a gateway or a rule. Reports gateways for which none is left; they
/// get 0.
pub(super) fn assign(
    doc: &mut Doc<'_>,
    gateways: &[GatewayDraft],
    rules: &[RuleDraft],
    mask: u32,
) -> Vec<u32> {
    let explicit = gateways
        .iter()
        .filter_map(|g| g.mark.as_ref().map(|(m, _)| *m));
    // A rule's raw mark belongs to whatever consumes it; a gateway sharing it would
    // route that rule's traffic through the gateway's table.
    let taken: BTreeSet<u32> = explicit
        .chain(rules.iter().filter_map(RuleDraft::raw_mark))
        .collect();
    let mut free = derived(mask).filter(|m| !taken.contains(m));
    gateways
        .iter()
        .map(|g| match &g.mark {
            Some((mark, _)) => *mark,
            None => free.next().unwrap_or_else(|| {
                let msg = format!(
                    "no free mark under mark_mask {mask:#x} for this gateway; \
                     set mark explicitly or widen mark_mask"
                );
                doc.error(&g.header, &format!("{}.mark", g.key), msg);
                0
            }),
        })
        .collect()
}

/// The non-zero values representable under `mask`, smallest first: the k-th is k's bits
/// deposited into the mask's set bits, lowest first (x86's PDEP). Mask 0xff00 gives
/// 0x100, 0x200, 0x300, ..., 0xff00.
pub(super) fn derived(mask: u32) -> impl Iterator<Item = u32> {
    (1u64..).map_while(move |k| deposit(k, mask))
}

/// `None` when `k` has more significant bits than the mask has set bits.
fn deposit(k: u64, mask: u32) -> Option<u32> {
    let (mut out, mut rest, mut bits) = (0u32, k, mask);
    while rest != 0 && bits != 0 {
        let lowest = bits & bits.wrapping_neg();
        if rest & 1 == 1 {
            out |= lowest;
        }
        rest >>= 1;
        bits &= bits - 1;
    }
    (rest == 0).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_marks_follow_the_mask_bits() {
        let first: Vec<u32> = derived(0xff00).take(4).collect();
        assert_eq!(first, vec![0x100, 0x200, 0x300, 0x400]);
        let all: Vec<u32> = derived(0b1010).collect();
        assert_eq!(all, vec![0b0010, 0b1000, 0b1010]);
        assert_eq!(derived(0x8000_0000).collect::<Vec<_>>(), vec![0x8000_0000]);
        assert_eq!(derived(u32::MAX).take(3).collect::<Vec<_>>(), vec![1, 2, 3]);
    }

    #[test]
    fn derived_marks_are_unique_and_inside_the_mask() {
        for mask in [0xff00u32, 0x0f0f, 0x8001, 0x7] {
            let marks: Vec<u32> = derived(mask).collect();
            assert_eq!(marks.len(), (1usize << mask.count_ones()) - 1, "{mask:#x}");
            assert!(marks.iter().all(|&m| m != 0 && m & !mask == 0));
            assert!(
                marks.windows(2).all(|w| w[0] < w[1]),
                "ascending, so unique"
            );
        }
    }
}
