//! The bpf(2) commands policyroute needs and aya 0.14 does not offer; everything else goes
//! through aya. Each one, and why:
//!
//! - BPF_PROG_ATTACH / BPF_PROG_DETACH for tcx and cgroup hooks: aya attaches through a
//!   bpf_link, which lives only as long as its fd or a pin. An attachment made without a
//!   link holds its own reference to the program, so the dataplane outlives the `apply`
//!   process without any pin (pins are invisible to the next process when operators run
//!   `ip netns exec NS policyroute ...`, which gives each command a fresh /sys).
//! - BPF_PROG_QUERY of a cgroup hook: aya 0.14 queries only tcx, cgroup_device and lirc
//!   hooks.
//! - BPF_PROG_BIND_MAP: aya has no binding of a map the program does not reference (the
//!   state record), which keeps it alive and listed with the program.
//! - BPF_MAP_LOOKUP_BATCH / UPDATE_BATCH / DELETE_BATCH: aya 0.14 has only one syscall per
//!   element, which makes a 100k-rule update take 100k syscalls.
//! - Probes of the commands above and of BPF_F_NO_PREALLOC, for `kernel::features`
//!   (aya 0.14 probes program types, map types and helpers, not commands or map flags).
use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use aya_obj::generated::{
    bpf_attach_type,
    bpf_cmd::{
        self, BPF_MAP_DELETE_BATCH, BPF_MAP_LOOKUP_BATCH, BPF_MAP_UPDATE_BATCH, BPF_PROG_ATTACH,
        BPF_PROG_BIND_MAP, BPF_PROG_DETACH, BPF_PROG_QUERY,
    },
    BPF_F_ALLOW_MULTI,
};

pub const BPF_TCX_INGRESS: u32 = bpf_attach_type::BPF_TCX_INGRESS as u32;
pub const BPF_TCX_EGRESS: u32 = bpf_attach_type::BPF_TCX_EGRESS as u32;
pub const BPF_CGROUP_INET4_CONNECT: u32 = bpf_attach_type::BPF_CGROUP_INET4_CONNECT as u32;
pub const BPF_CGROUP_INET6_CONNECT: u32 = bpf_attach_type::BPF_CGROUP_INET6_CONNECT as u32;
pub const BPF_CGROUP_UDP4_SENDMSG: u32 = bpf_attach_type::BPF_CGROUP_UDP4_SENDMSG as u32;
pub const BPF_CGROUP_UDP6_SENDMSG: u32 = bpf_attach_type::BPF_CGROUP_UDP6_SENDMSG as u32;

/// `union bpf_attr` as used by BPF_PROG_ATTACH / BPF_PROG_DETACH.
#[repr(C)]
#[derive(Default)]
struct AttachAttr {
    target_ifindex: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
    relative_fd: u32,
    expected_revision: u64,
}

/// `union bpf_attr` as used by BPF_PROG_BIND_MAP.
#[repr(C)]
struct BindMapAttr {
    prog_fd: u32,
    map_fd: u32,
    flags: u32,
}

/// bpf(2) with `attr` as the command's prefix of `union bpf_attr` (the kernel may write
/// into it): the kernel's non-negative answer, a new descriptor for the commands that make
/// one (the caller then owns it).
pub fn syscall<T>(cmd: bpf_cmd, attr: &mut T) -> io::Result<i64> {
    // SAFETY: attr is a live, initialized bpf_attr prefix of the size passed, exclusively
    // borrowed for the call; buffers it points at are the caller's to keep alive and large
    // enough for the sizes it gives.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut T,
            std::mem::size_of::<T>() as u32,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn bpf<T>(cmd: bpf_cmd, attr: &mut T) -> io::Result<()> {
    syscall(cmd, attr).map(|_| ())
}

/// BPF_PROG_ATTACH of `prog` to `target` (an ifindex for tcx, a cgroup fd otherwise).
fn prog_attach(target: u32, prog: BorrowedFd<'_>, attach_type: u32, flags: u32) -> io::Result<()> {
    let mut attr = AttachAttr {
        target_ifindex: target,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type,
        attach_flags: flags,
        ..AttachAttr::default()
    };
    bpf(BPF_PROG_ATTACH, &mut attr)
}

/// BPF_PROG_DETACH of `prog` from `target`.
fn prog_detach(target: u32, prog: BorrowedFd<'_>, attach_type: u32) -> io::Result<()> {
    let mut attr = AttachAttr {
        target_ifindex: target,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type,
        ..AttachAttr::default()
    };
    bpf(BPF_PROG_DETACH, &mut attr)
}

/// Appends `prog` to the tcx chain of `ifindex` (`attach_type`: BPF_TCX_INGRESS/EGRESS).
pub fn tcx_attach(ifindex: u32, prog: BorrowedFd<'_>, attach_type: u32) -> io::Result<()> {
    prog_attach(ifindex, prog, attach_type, 0)
}

/// Removes `prog` from the tcx chain of `ifindex`.
pub fn tcx_detach(ifindex: u32, prog: BorrowedFd<'_>, attach_type: u32) -> io::Result<()> {
    prog_detach(ifindex, prog, attach_type)
}

/// Ties `map` to `prog`'s lifetime and lists it among the program's maps.
pub fn prog_bind_map(prog: BorrowedFd<'_>, map: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = BindMapAttr {
        prog_fd: prog.as_raw_fd() as u32,
        map_fd: map.as_raw_fd() as u32,
        flags: 0,
    };
    bpf(BPF_PROG_BIND_MAP, &mut attr)
}

/// `union bpf_attr` as used by BPF_PROG_QUERY.
#[repr(C)]
#[derive(Default)]
struct QueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
    _pad: u32,
    prog_attach_flags: u64,
    link_ids: u64,
    link_attach_flags: u64,
    revision: u64,
}

/// Attaches `prog` to a cgroup hook, next to any programs already there.
pub fn cgroup_attach(
    cgroup: BorrowedFd<'_>,
    prog: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<()> {
    prog_attach(
        cgroup.as_raw_fd() as u32,
        prog,
        attach_type,
        // Lets other programs stay attached to the same cgroup hook next to ours.
        BPF_F_ALLOW_MULTI,
    )
}

/// Detaches `prog` from a cgroup hook.
pub fn cgroup_detach(
    cgroup: BorrowedFd<'_>,
    prog: BorrowedFd<'_>,
    attach_type: u32,
) -> io::Result<()> {
    prog_detach(cgroup.as_raw_fd() as u32, prog, attach_type)
}

/// Ids of the programs attached directly to a cgroup hook (not inherited).
pub fn cgroup_query(cgroup: BorrowedFd<'_>, attach_type: u32) -> io::Result<Vec<u32>> {
    let mut ids = vec![0u32; 64];
    let mut attr = QueryAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..QueryAttr::default()
    };
    bpf(BPF_PROG_QUERY, &mut attr)?;
    // The kernel wrote prog_cnt back into attr (lent to it mutably).
    let count = attr.prog_cnt as usize;
    ids.truncate(count.min(64));
    Ok(ids)
}

/// Entries per batch call: large enough that a 100k-rule policy takes a handful of calls,
/// and at most 4 MiB of keys and values (the state map's values are 4 KiB each).
fn batch_len<K, V>() -> usize {
    const MAX_ENTRIES: usize = 16384;
    const MAX_BYTES: usize = 4 << 20;
    let entry = std::mem::size_of::<K>() + std::mem::size_of::<V>();
    (MAX_BYTES / entry.max(1)).clamp(1, MAX_ENTRIES)
}

/// `union bpf_attr` as used by the BPF_MAP_*_BATCH commands.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every (key, value) of a hash map, read a batch of entries per syscall.
pub fn map_dump<K: Copy + Default, V: Copy + Default>(
    map: BorrowedFd<'_>,
) -> io::Result<Vec<(K, V)>> {
    let mut out = Vec::new();
    let batch = batch_len::<K, V>();
    let mut keys = vec![K::default(); batch];
    let mut values = vec![V::default(); batch];
    let (mut token_in, mut token_out) = (0u64, 0u64);
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &token_in as *const u64 as u64
            },
            out_batch: &mut token_out as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: batch as u32,
            map_fd: map.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &mut attr);
        // The kernel wrote the number of entries it returned back into attr.
        let n = attr.count as usize;
        out.extend(keys[..n].iter().copied().zip(values[..n].iter().copied()));
        match result {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Err(e) => return Err(e),
        }
        token_in = token_out;
        first = false;
    }
}

/// Inserts or replaces entries, a batch per syscall.
pub fn map_update_batch<K, V>(map: BorrowedFd<'_>, keys: &[K], values: &[V]) -> io::Result<()> {
    assert_eq!(keys.len(), values.len(), "a value per key");
    in_batches::<K, V>(BPF_MAP_UPDATE_BATCH, map, keys, Some(values))
}

/// Deletes entries, a batch per syscall.
pub fn map_delete_batch<K>(map: BorrowedFd<'_>, keys: &[K]) -> io::Result<()> {
    in_batches::<K, ()>(BPF_MAP_DELETE_BATCH, map, keys, None)
}

/// Runs a batch command over `keys` (and `values`, where it takes them), as many entries
/// per syscall as [`batch_len`] allows.
fn in_batches<K, V>(
    cmd: bpf_cmd,
    map: BorrowedFd<'_>,
    keys: &[K],
    values: Option<&[V]>,
) -> io::Result<()> {
    let batch = batch_len::<K, V>();
    for (i, k) in keys.chunks(batch).enumerate() {
        let v = values.map_or(0, |v| v[i * batch..].as_ptr() as u64);
        let mut attr = BatchAttr {
            keys: k.as_ptr() as u64,
            values: v,
            count: k.len() as u32,
            map_fd: map.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        bpf(cmd, &mut attr)?;
    }
    Ok(())
}

/// Whether the kernel knows `cmd`: with a descriptor that is no BPF object, a known command
/// fails on the descriptor (EBADF), an unknown one on the command (EINVAL).
fn knows_command<T>(cmd: bpf_cmd, attr: &mut T) -> bool {
    bpf(cmd, attr).is_err_and(|e| e.raw_os_error() == Some(libc::EBADF))
}

/// Batch lookups, updates and deletes (Linux 5.6).
pub fn probe_batch_ops() -> bool {
    let mut attr = BatchAttr {
        map_fd: u32::MAX,
        ..BatchAttr::default()
    };
    knows_command(BPF_MAP_LOOKUP_BATCH, &mut attr)
}

/// BPF_PROG_BIND_MAP (Linux 5.10).
pub fn probe_bind_map() -> bool {
    let mut attr = BindMapAttr {
        prog_fd: u32::MAX,
        map_fd: u32::MAX,
        flags: 0,
    };
    knows_command(BPF_PROG_BIND_MAP, &mut attr)
}

/// `union bpf_attr` as used by BPF_MAP_CREATE (the fields up to the flags).
#[repr(C)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// A hash map created with BPF_F_NO_PREALLOC (Linux 4.6).
pub fn probe_no_prealloc() -> bool {
    let mut attr = MapCreateAttr {
        map_type: aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_HASH as u32,
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        map_flags: aya_obj::generated::BPF_F_NO_PREALLOC,
    };
    match syscall(bpf_cmd::BPF_MAP_CREATE, &mut attr) {
        Ok(fd) => {
            // SAFETY: the map fd was just created by this call and is owned here alone.
            drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
            true
        }
        Err(_) => false,
    }
}
