//! Device roles (`PR_DEVICES`, by ifindex), written by the controller: whether a device
//! classifies, records a sticky gateway's inbound flows, and carries IP frames (no
//! Ethernet header, from its link type). Looked up only when the control word says some
//! device has a role; otherwise every device classifies Ethernet frames.
use aya_ebpf::{macros::map, maps::HashMap, programs::TcContext};
use policyroute_common::{Control, DeviceRole, CONTROL_DEVICE_ROLES, ROLE_IP_FRAME};

use crate::control::is_explain;

#[map(name = "PR_DEVICES")]
static DEVICES: HashMap<u32, DeviceRole> = HashMap::with_max_entries(1024, 0);

/// The role of the device the packet is on, when the policy gives devices roles (sticky
/// recording, IP frames); `None`: classify an Ethernet frame.
#[inline(always)]
pub fn device_role(ctx: &TcContext, control: &Control) -> Option<&'static DeviceRole> {
    if control.flags & CONTROL_DEVICE_ROLES == 0 {
        return None;
    }
    // SAFETY: ctx.skb.skb is the __sk_buff the kernel passed this program; the verifier
    // allows reading ifindex from it.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: the value is only read, while this program runs (RCU read side).
    unsafe { DEVICES.get(ifindex) }
}

/// Whether the device's frames start with the IP header (its role says, from its link
/// type). Explain's test runs always start with an Ethernet header: BPF_PROG_TEST_RUN
/// builds the packet that way whatever the device.
#[inline(always)]
pub fn ip_frame(ctx: &TcContext, role: Option<&DeviceRole>) -> bool {
    is_ip_device(role) && !is_explain(ctx)
}

#[inline(always)]
pub fn is_ip_device(role: Option<&DeviceRole>) -> bool {
    matches!(role, Some(r) if r.flags & ROLE_IP_FRAME != 0)
}
