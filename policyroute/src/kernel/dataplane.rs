//! The loaded classifier: its programs, and its maps (see [`Maps`]). Loaded by this
//! process, or found attached and opened by id.
use std::{
    collections::BTreeMap,
    os::fd::{AsFd, BorrowedFd},
    path::Path,
};

use aya::{
    maps::{MapData, MapError},
    programs::{CgroupSockAddr, ProgramError, ProgramFd, ProgramInfo, SchedClassifier},
    Ebpf, EbpfError, EbpfLoader,
};
use policyroute_common::{
    names::{
        MAPS, PREFIX_TRIE_MAP, SOCK_PROGRAMS, TC_INGRESS, TC_PROGRAMS, TRACE_GLOBAL, TRIES_GLOBAL,
    },
    COUNTERS_MAP, RULES_MAP, TRIE_DISABLED_NODES,
};

use crate::{
    kernel::{bpf_syscalls as bpf, maps::Maps, objects},
    plan::Capacity,
};

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("loading the eBPF object: {0}")]
    Load(#[from] EbpfError),
    #[error("eBPF program: {0}")]
    Program(#[from] ProgramError),
    #[error("eBPF map: {0}")]
    Map(#[from] MapError),
    #[error("the policy needs {need} {what}; the loaded dataplane holds {have}")]
    Capacity {
        what: &'static str,
        need: usize,
        have: usize,
    },
    #[error("counting possible CPUs: {0}")]
    Cpus(std::io::Error),
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    #[error("batch map operation: {0}")]
    Batch(std::io::Error),
    #[error("mapping the prefix trie map: {0}")]
    Mmap(std::io::Error),
    #[error("binding the state map to the program: {0}")]
    Bind(std::io::Error),
    #[error("pinning {what}: {source}")]
    Pin {
        what: String,
        source: std::io::Error,
    },
}

/// The dataplane: maps, and the programs this process loaded (none when it was only
/// found attached and opened by id).
pub struct Dataplane {
    /// Identifies the dataplane: every program of one load shares this rules map.
    pub rules_map_id: u32,
    pub maps: Maps,
    programs: BTreeMap<&'static str, ProgramFd>,
    ebpf: Option<Ebpf>,
}

impl Dataplane {
    /// Loads and verifies all programs with new maps of the given capacity.
    pub fn load(capacity: Capacity) -> Result<Self, DataplaneError> {
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(RULES_MAP, capacity.entries)
            .map_max_entries(COUNTERS_MAP, capacity.rules)
            .map_max_entries(PREFIX_TRIE_MAP, capacity.trie_nodes);
        let tries = u32::from(capacity.trie_nodes > TRIE_DISABLED_NODES);
        loader.override_global(TRIES_GLOBAL, &tries, true);
        Self::load_with(loader, objects::classifier())
    }

    /// Loads all programs again, sharing the maps of a dataplane pinned (by map name) in
    /// `pin_dir`: new hooks can be attached while counters, rules and flows stay.
    pub fn load_sharing(pin_dir: &Path) -> Result<Self, DataplaneError> {
        Self::load_sharing_with(pin_dir, objects::classifier(), true)
    }

    /// [`Self::load_sharing`] of `object` (a build of the classifier object with the same
    /// maps), with the trace code dropped when `trace_code` is false: the copies `bench
    /// classify` measures idle trace and other builds against. Never attached.
    pub fn load_sharing_with(
        pin_dir: &Path,
        object: &[u8],
        trace_code: bool,
    ) -> Result<Self, DataplaneError> {
        let mut loader = EbpfLoader::new();
        let trace_code = u32::from(trace_code);
        loader.override_global(TRACE_GLOBAL, &trace_code, true);
        for name in MAPS {
            loader.map_pin_path(name, pin_dir.join(name));
        }
        // The same trie code as the programs already loaded: the shared map's size says.
        let trie = MapData::from_pin(pin_dir.join(PREFIX_TRIE_MAP))?;
        let tries = u32::from(trie.info()?.max_entries() > TRIE_DISABLED_NODES);
        loader.override_global(TRIES_GLOBAL, &tries, true);
        Self::load_with(loader, object)
    }

    fn load_with(mut loader: EbpfLoader<'_>, object: &[u8]) -> Result<Self, DataplaneError> {
        let mut ebpf = loader.load(object)?;
        let mut programs = BTreeMap::new();
        for name in TC_PROGRAMS {
            let prog = classifier_mut(&mut ebpf, name)?;
            load_retrying(|| prog.load())?;
            programs.insert(name, prog.fd()?.try_clone().map_err(ProgramError::from)?);
        }
        for name in SOCK_PROGRAMS {
            let prog: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or(DataplaneError::Missing(name))?
                .try_into()?;
            load_retrying(|| prog.load())?;
            programs.insert(name, prog.fd()?.try_clone().map_err(ProgramError::from)?);
        }
        let maps = Maps::take(&mut ebpf)?;
        // Every program lists every map, so whichever program a later process finds
        // attached leads it to all of them (the state record is read only by userspace,
        // the gateway sources only by the socket hooks).
        for fd in programs.values() {
            for (_, map) in maps.all() {
                bpf::prog_bind_map(fd.as_fd(), map.fd().as_fd()).map_err(DataplaneError::Bind)?;
            }
        }
        Ok(Self {
            rules_map_id: maps.rules_map_id()?,
            maps,
            programs,
            ebpf: Some(ebpf),
        })
    }

    /// Opens the maps of a loaded program (e.g. found attached to a device).
    pub fn open(info: &ProgramInfo) -> Result<Self, DataplaneError> {
        let maps = Maps::of_program(info)?;
        Ok(Self {
            rules_map_id: maps.rules_map_id()?,
            maps,
            programs: BTreeMap::new(),
            ebpf: None,
        })
    }

    /// A program this process loaded, by name.
    pub fn program_fd(&self, name: &str) -> Option<BorrowedFd<'_>> {
        self.programs.get(name).map(|fd| fd.as_fd())
    }

    /// The TC ingress program, when this process loaded it (for test runs).
    pub fn tc_ingress(&mut self) -> Option<&mut SchedClassifier> {
        classifier_mut(self.ebpf.as_mut()?, TC_INGRESS).ok()
    }

    /// Pins the maps, and the programs this process loaded, in `dir` by name, replacing
    /// older pins.
    pub fn pin(&mut self, dir: &Path) -> Result<(), DataplaneError> {
        let replace = |name: &str| {
            let path = dir.join(name);
            let _ = std::fs::remove_file(&path);
            path
        };
        let pin_error = |what: String| {
            move |e: aya::pin::PinError| DataplaneError::Pin {
                what,
                source: std::io::Error::other(e),
            }
        };
        if let Some(ebpf) = self.ebpf.as_mut() {
            for (name, program) in ebpf.programs_mut() {
                program
                    .pin(replace(name))
                    .map_err(pin_error(format!("program {name}")))?;
            }
        }
        for (name, map) in self.maps.all() {
            map.pin(replace(name))
                .map_err(pin_error(format!("map {name}")))?;
        }
        Ok(())
    }
}

/// A TC program of an object, by name.
pub fn classifier_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DataplaneError> {
    let prog = ebpf
        .program_mut(name)
        .ok_or(DataplaneError::Missing(name))?;
    Ok(prog.try_into()?)
}

/// Loads a program, again (up to 5 times) when the kernel answers EAGAIN: the verifier stops
/// with it when a signal arrives while it works, which a long check on a busy machine meets
/// now and then. libbpf retries the same way.
pub fn load_retrying(
    mut load: impl FnMut() -> Result<(), ProgramError>,
) -> Result<(), ProgramError> {
    let mut attempts = 5;
    loop {
        match load() {
            Err(ProgramError::LoadError { io_error, .. })
                if io_error.raw_os_error() == Some(libc::EAGAIN) && attempts > 1 =>
            {
                attempts -= 1;
            }
            other => return other,
        }
    }
}
