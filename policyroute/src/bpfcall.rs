//! The few bpf(2) commands aya 0.14 does not offer.
//!
//! tcx attachments are made with BPF_PROG_ATTACH rather than a bpf_link: such an
//! attachment holds its own reference to the program, so the dataplane outlives the
//! `policyroute apply` process without any pin (pins are invisible to the next process when
//! operators run `ip netns exec NS policyroute ...`, which gives each command a fresh /sys).
use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_DETACH: libc::c_long = 9;
const BPF_PROG_BIND_MAP: libc::c_long = 35;
pub const BPF_TCX_INGRESS: u32 = 46;
pub const BPF_TCX_EGRESS: u32 = 47;

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

fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<()> {
    // SAFETY: attr is a valid, initialized bpf_attr prefix of the size passed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>() as u32,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// BPF_PROG_ATTACH of `prog` to `target` (an ifindex for tcx, a cgroup fd otherwise).
fn prog_attach(target: u32, prog: BorrowedFd<'_>, attach_type: u32, flags: u32) -> io::Result<()> {
    let attr = AttachAttr {
        target_ifindex: target,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type,
        attach_flags: flags,
        ..AttachAttr::default()
    };
    bpf(BPF_PROG_ATTACH, &attr)
}

/// BPF_PROG_DETACH of `prog` from `target`.
fn prog_detach(target: u32, prog: BorrowedFd<'_>, attach_type: u32) -> io::Result<()> {
    let attr = AttachAttr {
        target_ifindex: target,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type,
        ..AttachAttr::default()
    };
    bpf(BPF_PROG_DETACH, &attr)
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
    let attr = BindMapAttr {
        prog_fd: prog.as_raw_fd() as u32,
        map_fd: map.as_raw_fd() as u32,
        flags: 0,
    };
    bpf(BPF_PROG_BIND_MAP, &attr)
}

const BPF_OBJ_PIN: libc::c_long = 6;

/// `union bpf_attr` as used by BPF_OBJ_PIN.
#[repr(C)]
struct PinAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// Pins a program or map fd at `path` (on a bpf filesystem).
pub fn obj_pin(fd: BorrowedFd<'_>, path: &std::path::Path) -> io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let attr = PinAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: fd.as_raw_fd() as u32,
        file_flags: 0,
    };
    bpf(BPF_OBJ_PIN, &attr)
}

const BPF_PROG_QUERY: libc::c_long = 16;
pub const BPF_CGROUP_INET4_CONNECT: u32 = 10;
pub const BPF_CGROUP_INET6_CONNECT: u32 = 11;
pub const BPF_CGROUP_UDP4_SENDMSG: u32 = 14;
pub const BPF_CGROUP_UDP6_SENDMSG: u32 = 15;
/// Lets other programs stay attached to the same cgroup hook next to ours.
pub const BPF_F_ALLOW_MULTI: u32 = 2;

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
    let attr = QueryAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..QueryAttr::default()
    };
    bpf(BPF_PROG_QUERY, &attr)?;
    // SAFETY: the kernel wrote prog_cnt back into attr (read through a volatile load).
    let count = unsafe { std::ptr::read_volatile(&attr.prog_cnt) } as usize;
    ids.truncate(count.min(64));
    Ok(ids)
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// `union bpf_attr` as used by BPF_PROG_TEST_RUN.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// What one BPF_PROG_TEST_RUN reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TestRun {
    pub retval: u32,
    /// The run's duration as the kernel timed it, in ns.
    pub duration_ns: u32,
}

/// Runs a program (by fd, also one this process did not load) once on `data` with the
/// context `ctx`, which the kernel overwrites with the resulting context.
pub fn prog_test_run(prog: BorrowedFd<'_>, data: &[u8], ctx: &mut [u8]) -> io::Result<TestRun> {
    let mut out = vec![0u8; data.len() + 256];
    let ctx_in = ctx.to_vec();
    let attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: data.len() as u32,
        data_size_out: out.len() as u32,
        data_in: data.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ctx_size_in: ctx_in.len() as u32,
        ctx_size_out: ctx.len() as u32,
        ctx_in: ctx_in.as_ptr() as u64,
        ctx_out: ctx.as_mut_ptr() as u64,
        ..TestRunAttr::default()
    };
    bpf(BPF_PROG_TEST_RUN, &attr)?;
    // SAFETY: the kernel wrote the results back into attr.
    Ok(unsafe {
        TestRun {
            retval: std::ptr::read_volatile(&attr.retval),
            duration_ns: std::ptr::read_volatile(&attr.duration),
        }
    })
}

const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// Entries per batch call: large enough that a 100k-rule policy takes a handful of calls.
const BATCH: usize = 16384;

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
    let mut keys = vec![K::default(); BATCH];
    let mut values = vec![V::default(); BATCH];
    let (mut token_in, mut token_out) = (0u64, 0u64);
    let mut first = true;
    loop {
        let attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &token_in as *const u64 as u64
            },
            out_batch: &mut token_out as *mut u64 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH as u32,
            map_fd: map.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        let result = bpf(BPF_MAP_LOOKUP_BATCH, &attr);
        // SAFETY: the kernel wrote the number of entries it returned back into attr.
        let n = unsafe { std::ptr::read_volatile(&attr.count) } as usize;
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
    for (k, v) in keys.chunks(BATCH).zip(values.chunks(BATCH)) {
        let attr = BatchAttr {
            keys: k.as_ptr() as u64,
            values: v.as_ptr() as u64,
            count: k.len() as u32,
            map_fd: map.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        bpf(BPF_MAP_UPDATE_BATCH, &attr)?;
    }
    Ok(())
}

/// Deletes entries, a batch per syscall.
pub fn map_delete_batch<K>(map: BorrowedFd<'_>, keys: &[K]) -> io::Result<()> {
    for k in keys.chunks(BATCH) {
        let attr = BatchAttr {
            keys: k.as_ptr() as u64,
            count: k.len() as u32,
            map_fd: map.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        bpf(BPF_MAP_DELETE_BATCH, &attr)?;
    }
    Ok(())
}
