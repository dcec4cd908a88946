//! The mark a rule's hit sets: the rule's own, or its gateway's or group's decision.
use policyroute_common::{Control, HOW_DROP, HOW_RULE, HOW_UNWRITTEN};

use crate::{
    search::Hit,
    targets::{self, Decision, Flow},
    trace::Traced,
};

/// The mark a hit sets: its own, or its target's decision; `None` to drop. Also how it
/// was decided, for the trace.
#[inline(always)]
pub fn of_hit(hit: &Hit, family: u32, flow: Flow<'_>, control: &Control) -> (Option<u32>, Traced) {
    if hit.target == 0 {
        return (Some(hit.mark), Traced::new(HOW_RULE, hit.counter, hit.mark));
    }
    match targets::decide(hit.target, family, flow, control) {
        Some(Decision::Mark { mark, how, member }) => {
            let mark = mark & hit.mark_mask;
            let mut t = Traced::new(how, hit.counter, mark);
            t.member = member;
            (Some(mark), t)
        }
        Some(Decision::Drop) => (None, Traced::new(HOW_DROP, hit.counter, 0)),
        // Not written yet: leave the packet to the main table rather than guess.
        None => (Some(0), Traced::new(HOW_UNWRITTEN, hit.counter, 0)),
    }
}
