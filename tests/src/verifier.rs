//! The verifier's view of each eBPF program: how deep each frame's stack is, the deepest
//! call chain, how many instructions it processed and how long it took.
//!
//! aya 0.14 asks the kernel for a verifier log only when a load fails, so a program the
//! verifier accepts says nothing of how close it came to a limit. This module loads each
//! program again with `BPF_PROG_LOAD` itself, from the same object and on the maps aya
//! created for it (with the same globals), asking for the verifier's statistics
//! (`BPF_LOG_STATS`). The call graph comes from the instructions the kernel kept
//! (`BPF_OBJ_GET_INFO_BY_FD`: pseudo calls, and callbacks referenced with `BPF_PSEUDO_FUNC`
//! as the kernel's own `check_max_stack_depth` counts them), and the frames' names from the
//! object's BTF, which also gives each function's declared signature for
//! [`Report::signature_faults`].
use std::{
    collections::HashSet,
    ffi::CString,
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{bail, Context};
use aya::{maps::Map, EbpfLoader};
use aya_obj::{
    generated::{bpf_attach_type, bpf_cmd, bpf_func_info, bpf_insn, bpf_prog_info, bpf_prog_type},
    ProgramSection,
};
use policyroute::kernel::bpf_syscalls::syscall;

/// The verifier's cap on the stack of one call chain.
pub const STACK_LIMIT: u32 = 512;
/// BPF passes arguments in 5 registers; a result wider than a register takes one of them.
pub const MAX_ARGS: usize = 5;

/// One function of a loaded program, as the verifier saw it.
#[derive(Debug, Clone)]
pub struct Frame {
    pub name: String,
    /// Bytes of stack the verifier found this function uses.
    pub stack: u32,
}

/// One program's verification.
#[derive(Debug, Clone)]
pub struct Report {
    pub program: String,
    /// Every function, the program's entry first.
    pub frames: Vec<Frame>,
    /// The deepest call chain, as indexes into `frames`, entry first.
    pub worst_chain: Vec<usize>,
    /// `worst_chain`'s combined stack, each frame rounded up to 32 bytes (at least 1 byte
    /// before rounding) as the kernel counts it without a JIT and as Linux 6.1 always does.
    pub worst_stack: u32,
    /// Instructions the verifier processed (its "processed N insns").
    pub insns: u64,
    pub time_us: u64,
    /// Functions whose declared signature breaks the rules for out-of-line functions.
    pub signature_faults: Vec<String>,
}

impl Report {
    /// `worst_chain` as "a(120) > b(64)".
    pub fn chain_text(&self) -> String {
        self.worst_chain
            .iter()
            .map(|&i| format!("{}({})", self.frames[i].name, self.frames[i].stack))
            .collect::<Vec<_>>()
            .join(" > ")
    }
}

/// Loads every program of `object` with `globals` overriding its read-only globals (the
/// configuration the verifier sees as constants) and reports on each, in name order.
pub fn verify_object(object: &[u8], globals: &[(&str, u32)]) -> anyhow::Result<Vec<Report>> {
    let mut loader = EbpfLoader::new();
    for (name, value) in globals {
        loader.override_global(name, value, true);
    }
    // aya creates the maps (and the globals' data maps) exactly as the product does.
    let ebpf = loader.load(object).context("aya loading the object")?;

    let mut obj = aya_obj::Object::parse(object).context("parsing the object")?;
    let features = aya::features();
    let btf_features = features.btf().context("this kernel has no BTF support")?;
    let btf = obj
        .fixup_and_sanitize_btf(btf_features)?
        .context("the object has no BTF")?
        .to_bytes();
    let btf_fd = load_btf(&btf)?;
    let types = Btf::parse(&btf)?;

    let maps = obj.maps.clone();
    let fds: Vec<(String, i32)> = ebpf
        .maps()
        .filter_map(|(name, map)| Some((name.to_string(), map_fd(map)?)))
        .collect();
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
    obj.relocate_maps(
        fds.iter()
            .filter_map(|(name, fd)| Some((name.as_str(), *fd, maps.get(name)?))),
        &text_sections,
    )?;
    obj.relocate_calls(&text_sections)?;
    obj.sanitize_functions(features);

    let mut names: Vec<&String> = obj.programs.keys().collect();
    names.sort();
    let mut reports = Vec::new();
    for name in names {
        let program = &obj.programs[name];
        let function = &obj.functions[&program.function_key()];
        let (prog_type, attach) = match &program.section {
            ProgramSection::SchedClassifier => (bpf_prog_type::BPF_PROG_TYPE_SCHED_CLS, 0),
            ProgramSection::CgroupSockAddr { attach_type } => (
                bpf_prog_type::BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
                bpf_attach_type::from(*attach_type) as u32,
            ),
            other => bail!("{name}: program section {other:?} is not measured here"),
        };
        let load = Load {
            name,
            prog_type: prog_type as u32,
            attach,
            insns: &function.instructions,
            license: &program.license,
            btf_fd: &btf_fd,
            func_info: function.func_info.func_info_bytes(),
            func_info_count: function.func_info.func_info.len() as u32,
            func_info_rec_size: function.func_info_rec_size as u32,
        };
        let (fd, log) = load.run()?;
        reports.push(report(name, &fd, &log, &types)?);
    }
    Ok(reports)
}

fn map_fd(map: &Map) -> Option<i32> {
    let data = match map {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LpmTrie(d)
        | Map::LruHashMap(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuHashMap(d)
        | Map::PerCpuLruHashMap(d)
        | Map::PerfEventArray(d)
        | Map::RingBuf(d) => d,
        _ => return None,
    };
    Some(data.fd().as_fd().as_raw_fd())
}

/// `BPF_LOG_STATS`: verification time, stack depth per function, instructions processed.
const BPF_LOG_STATS: u32 = 4;

/// `union bpf_attr` for BPF_BTF_LOAD.
#[repr(C)]
struct BtfLoadAttr {
    btf: u64,
    log_buf: u64,
    size: u32,
    log_size: u32,
    log_level: u32,
}

fn load_btf(btf: &[u8]) -> anyhow::Result<OwnedFd> {
    let mut attr = BtfLoadAttr {
        btf: btf.as_ptr() as u64,
        log_buf: 0,
        size: btf.len() as u32,
        log_size: 0,
        log_level: 0,
    };
    let fd = syscall(bpf_cmd::BPF_BTF_LOAD, &mut attr).context("BPF_BTF_LOAD")?;
    // SAFETY: the kernel just returned this new file descriptor, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `union bpf_attr` for BPF_PROG_LOAD, up to the line info (the kernel takes a prefix).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
}

struct Load<'a> {
    name: &'a str,
    prog_type: u32,
    attach: u32,
    insns: &'a [bpf_insn],
    license: &'a CString,
    btf_fd: &'a OwnedFd,
    func_info: Vec<u8>,
    func_info_count: u32,
    func_info_rec_size: u32,
}

impl Load<'_> {
    fn run(&self) -> anyhow::Result<(OwnedFd, String)> {
        let mut log = vec![0u8; 64 * 1024];
        let mut prog_name = [0u8; 16];
        for (d, s) in prog_name.iter_mut().zip(self.name.bytes().take(15)) {
            *d = s;
        }
        let mut attr = ProgLoadAttr {
            prog_type: self.prog_type,
            insn_cnt: self.insns.len() as u32,
            insns: self.insns.as_ptr() as u64,
            license: self.license.as_ptr() as u64,
            log_level: BPF_LOG_STATS,
            log_size: log.len() as u32,
            log_buf: log.as_mut_ptr() as u64,
            prog_name,
            expected_attach_type: self.attach,
            prog_btf_fd: self.btf_fd.as_raw_fd() as u32,
            func_info_rec_size: self.func_info_rec_size,
            func_info: self.func_info.as_ptr() as u64,
            func_info_cnt: self.func_info_count,
            ..Default::default()
        };
        let result = syscall(bpf_cmd::BPF_PROG_LOAD, &mut attr);
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(&log[..end]).into_owned();
        let fd =
            result.with_context(|| format!("{}: the verifier refused it:\n{text}", self.name))?;
        // SAFETY: the kernel just returned this new file descriptor, owned by nobody else.
        Ok((unsafe { OwnedFd::from_raw_fd(fd as i32) }, text))
    }
}

/// `union bpf_attr` for BPF_OBJ_GET_INFO_BY_FD.
#[repr(C)]
struct InfoAttr {
    fd: u32,
    info_len: u32,
    info: u64,
}

/// The program as the kernel keeps it: its instructions and where each function starts.
fn program_info(fd: &OwnedFd) -> anyhow::Result<(Vec<[u8; 8]>, Vec<bpf_func_info>)> {
    let query = |info: &mut bpf_prog_info| {
        let mut attr = InfoAttr {
            fd: fd.as_raw_fd() as u32,
            info_len: std::mem::size_of::<bpf_prog_info>() as u32,
            info: info as *mut bpf_prog_info as u64,
        };
        syscall(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr).context("BPF_OBJ_GET_INFO_BY_FD")
    };
    let mut sizes = zeroed_info();
    query(&mut sizes)?;
    let mut insns = vec![[0u8; 8]; sizes.xlated_prog_len as usize / 8];
    let mut funcs = vec![
        bpf_func_info {
            insn_off: 0,
            type_id: 0
        };
        sizes.nr_func_info as usize
    ];
    let mut info = zeroed_info();
    info.xlated_prog_len = (insns.len() * 8) as u32;
    info.xlated_prog_insns = insns.as_mut_ptr() as u64;
    info.nr_func_info = funcs.len() as u32;
    info.func_info_rec_size = std::mem::size_of::<bpf_func_info>() as u32;
    info.func_info = funcs.as_mut_ptr() as u64;
    query(&mut info)?;
    Ok((insns, funcs))
}

fn zeroed_info() -> bpf_prog_info {
    // SAFETY: bpf_prog_info is plain integers and byte arrays, for which all-zero is valid
    // (and what the kernel expects of fields the caller does not ask for).
    unsafe { std::mem::zeroed() }
}

fn report(name: &str, fd: &OwnedFd, log: &str, btf: &Btf) -> anyhow::Result<Report> {
    let field = |prefix: &str| {
        log.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .with_context(|| format!("{name}: no '{prefix}' in the verifier log:\n{log}"))
    };
    let stacks: Vec<u32> = field("stack depth ")?
        .trim()
        .split('+')
        .map(|s| s.parse().context("stack depth"))
        .collect::<anyhow::Result<_>>()?;
    let insns: u64 = field("processed ")?
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("processed insns")?;
    let time_us: u64 = field("verification time ")?
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("verification time")?;
    let (insns_kept, funcs) = program_info(fd)?;
    if funcs.len() != stacks.len() {
        bail!(
            "{name}: {} functions in the program, {} stack depths in the log",
            funcs.len(),
            stacks.len()
        );
    }
    let starts: Vec<usize> = funcs.iter().map(|f| f.insn_off as usize).collect();
    let frames: Vec<Frame> = funcs
        .iter()
        .zip(&stacks)
        .map(|(f, &stack)| Frame {
            name: btf.func_name(f.type_id).unwrap_or("?").to_string(),
            stack,
        })
        .collect();
    let calls = call_graph(&insns_kept, &starts);
    let (worst_stack, worst_chain) = deepest(0, &calls, &stacks, &mut Vec::new());
    let signature_faults = funcs
        .iter()
        .skip(1)
        .filter_map(|f| btf.signature_fault(f.type_id))
        .collect();
    Ok(Report {
        program: name.to_string(),
        frames,
        worst_chain,
        worst_stack,
        insns,
        time_us,
        signature_faults,
    })
}

/// For each function, the functions it calls or hands to a helper as a callback.
fn call_graph(insns: &[[u8; 8]], starts: &[usize]) -> Vec<Vec<usize>> {
    const CALL: u8 = 0x85; // BPF_JMP | BPF_CALL
    const LD_IMM64: u8 = 0x18; // BPF_LD | BPF_IMM | BPF_DW
    const PSEUDO_CALL: u8 = 1;
    const PSEUDO_FUNC: u8 = 4;
    let function_at = |insn: usize| starts.iter().rposition(|&s| s <= insn).unwrap_or(0);
    let mut calls = vec![Vec::new(); starts.len()];
    for (i, b) in insns.iter().enumerate() {
        // struct bpf_insn: code, dst_reg:4 src_reg:4 (little-endian), off: i16, imm: i32.
        let (code, src_reg) = (b[0], b[1] >> 4);
        let off = i16::from_le_bytes([b[2], b[3]]);
        let imm = i32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        // In the kept program a pseudo call's `off` holds the relative target and a
        // pseudo function's `imm` does (the kernel moves them there when it JITs).
        let target = match (code, src_reg) {
            (CALL, PSEUDO_CALL) => i as i64 + i64::from(off) + 1,
            (LD_IMM64, PSEUDO_FUNC) => i as i64 + i64::from(imm) + 1,
            _ => continue,
        };
        if let Some(callee) = starts.iter().position(|&s| s as i64 == target) {
            let caller = function_at(i);
            if !calls[caller].contains(&callee) {
                calls[caller].push(callee);
            }
        }
    }
    calls
}

/// The deepest chain from `f`: its combined stack and its functions.
fn deepest(
    f: usize,
    calls: &[Vec<usize>],
    stacks: &[u32],
    path: &mut Vec<usize>,
) -> (u32, Vec<usize>) {
    let own = stacks[f].max(1).div_ceil(32) * 32;
    path.push(f);
    let mut best = (0, Vec::new());
    for &callee in &calls[f] {
        // Recursion is refused by the verifier; guard anyway.
        if path.contains(&callee) {
            continue;
        }
        let below = deepest(callee, calls, stacks, path);
        if below.0 > best.0 {
            best = below;
        }
    }
    path.pop();
    let mut chain = vec![f];
    chain.extend(best.1);
    (own + best.0, chain)
}

/// The little of BTF this module reads: function names and declared signatures.
struct Btf {
    types: Vec<BtfType>,
    strings: Vec<u8>,
}

struct BtfType {
    name_off: u32,
    kind: u32,
    /// The referenced type (FUNC, FUNC_PROTO's return, typedefs and qualifiers).
    ty: u32,
    params: u32,
}

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

impl Btf {
    fn parse(b: &[u8]) -> anyhow::Result<Btf> {
        let u32_at = |off: usize| -> anyhow::Result<u32> {
            let bytes = b.get(off..off + 4).context("BTF truncated")?;
            Ok(u32::from_le_bytes(bytes.try_into()?))
        };
        if b.get(0..2) != Some(&[0x9f, 0xeb]) {
            bail!("not little-endian BTF");
        }
        let hdr_len = u32_at(4)? as usize;
        let (type_off, type_len) = (u32_at(8)? as usize, u32_at(12)? as usize);
        let (str_off, str_len) = (u32_at(16)? as usize, u32_at(20)? as usize);
        let strings = b
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .context("BTF strings truncated")?
            .to_vec();
        // Type id 0 is void.
        let mut types = vec![BtfType {
            name_off: 0,
            kind: 0,
            ty: 0,
            params: 0,
        }];
        let mut off = hdr_len + type_off;
        let end = off + type_len;
        while off < end {
            let (name_off, info, ty) = (u32_at(off)?, u32_at(off + 4)?, u32_at(off + 8)?);
            let kind = (info >> 24) & 0x1f;
            let vlen = info & 0xffff;
            off += 12;
            off += match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen as usize,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen as usize,
                _ => 0,
            };
            types.push(BtfType {
                name_off,
                kind,
                ty,
                params: vlen,
            });
        }
        Ok(Btf { types, strings })
    }

    fn name(&self, t: &BtfType) -> &str {
        let rest = self.strings.get(t.name_off as usize..).unwrap_or_default();
        let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("?")
    }

    fn func_name(&self, id: u32) -> Option<&str> {
        let t = self.types.get(id as usize)?;
        (t.kind == KIND_FUNC).then(|| self.name(t))
    }

    /// Follows typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> Option<&BtfType> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.ty
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// What breaks the rules for out-of-line functions in function `id`'s declared
    /// signature: more than [`MAX_ARGS`] arguments counting a hidden return pointer, or a
    /// result that is not a scalar.
    fn signature_fault(&self, id: u32) -> Option<String> {
        let func = self.types.get(id as usize)?;
        let proto = self.types.get(func.ty as usize)?;
        if func.kind != KIND_FUNC || proto.kind != KIND_FUNC_PROTO {
            return None;
        }
        let ret = self.resolve(proto.ty)?;
        let scalar = matches!(ret.kind, 0 | KIND_INT | KIND_PTR | KIND_ENUM | KIND_ENUM64);
        let args = proto.params as usize + usize::from(!scalar);
        let name = self.name(func);
        if !scalar {
            let kind = match ret.kind {
                KIND_STRUCT => "a struct",
                KIND_UNION => "a union (an enum such as Option)",
                KIND_ARRAY => "an array",
                _ => "not a scalar",
            };
            return Some(format!(
                "{name}: returns {kind} ({}), which comes back through a hidden pointer \
                 argument: return a scalar, and pass larger results through an \
                 out-parameter",
                // bpf-linker spells `<`, `>` and `,` in BTF names as hex escapes.
                self.name(ret)
                    .replace("_3C_", "<")
                    .replace("_3E_", ">")
                    .replace("_2C_", ",")
            ));
        }
        (args > MAX_ARGS).then(|| format!("{name}: {args} arguments (at most {MAX_ARGS})"))
    }
}
