//! The loaded classifier: its program and typed handles on its maps, and how a compiled
//! policy is written into them.
use std::collections::{BTreeMap, HashSet};

use std::os::fd::{AsFd, BorrowedFd};

use aya::{
    maps::{Array, HashMap, IterableMap, Map, MapData, MapError, PerCpuArray, PerCpuValues},
    programs::{ProgramError, ProgramFd, ProgramInfo, SchedClassifier},
    Ebpf, EbpfError, EbpfLoader,
};
use policyroute_common::{
    Control, Counter, RuleKey, RuleValue, ShapeTable, StateChunk, CONTROL_MAP, COUNTERS_MAP,
    DEFAULT_MAX_COUNTERS, DEFAULT_MAX_ENTRIES, GENERATIONS, RULES_MAP, STATE_MAP, TABLES_MAP,
};

use crate::{
    bpfcall,
    compile::{shapes_of, Compiled, ShapeDesc},
    object,
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
    #[error("binding the state map to the program: {0}")]
    Bind(std::io::Error),
    #[error("a program opened by id cannot be test-run through aya")]
    NotLoadedHere,
}

/// Typed handles on the classifier's maps.
pub struct Maps {
    pub rules: HashMap<MapData, RuleKey, RuleValue>,
    pub tables: Array<MapData, ShapeTable>,
    pub control: Array<MapData, Control>,
    pub counters: PerCpuArray<MapData, Counter>,
    pub state: HashMap<MapData, u32, StateChunk>,
}

/// Entry changes between a compiled policy and the maps.
#[derive(Clone, Debug, Default)]
pub struct EntryDiff {
    pub insert: Vec<(RuleKey, RuleValue)>,
    pub update: Vec<(RuleKey, RuleValue)>,
    pub remove: Vec<RuleKey>,
}

impl EntryDiff {
    pub fn stats(&self) -> InstallStats {
        InstallStats {
            inserted: self.insert.len(),
            updated: self.update.len(),
            removed: self.remove.len(),
        }
    }
}

/// What [`Maps::install`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct InstallStats {
    pub inserted: usize,
    pub updated: usize,
    pub removed: usize,
}

impl Maps {
    fn take(ebpf: &mut Ebpf) -> Result<Self, DataplaneError> {
        Self::build(|name| ebpf.take_map(name).ok_or(DataplaneError::Missing(name)))
    }

    /// The maps of an already loaded classifier, found through the program's map ids.
    fn of_program(info: &ProgramInfo) -> Result<Self, DataplaneError> {
        let mut by_name = std::collections::HashMap::new();
        for id in info.map_ids()?.unwrap_or_default() {
            let data = MapData::from_id(id)?;
            if let Some(name) = data.info()?.name_as_str() {
                by_name.insert(name.to_string(), data);
            }
        }
        Self::build(|name| {
            let data = by_name.remove(name).ok_or(DataplaneError::Missing(name))?;
            Ok(Map::from_map_data(data)?)
        })
    }

    fn build(
        mut take: impl FnMut(&'static str) -> Result<Map, DataplaneError>,
    ) -> Result<Self, DataplaneError> {
        Ok(Self {
            rules: HashMap::try_from(take(RULES_MAP)?)?,
            tables: Array::try_from(take(TABLES_MAP)?)?,
            control: Array::try_from(take(CONTROL_MAP)?)?,
            counters: PerCpuArray::try_from(take(COUNTERS_MAP)?)?,
            state: HashMap::try_from(take(STATE_MAP)?)?,
        })
    }

    fn generation(&self) -> Result<u32, DataplaneError> {
        Ok(self.control.get(&0, 0)?.generation % GENERATIONS)
    }

    /// The live shape tables (IPv4, IPv6).
    pub fn live_tables(&self) -> Result<[ShapeTable; 2], DataplaneError> {
        let g = self.generation()?;
        Ok([
            self.tables.get(&(g * 2), 0)?,
            self.tables.get(&(g * 2 + 1), 0)?,
        ])
    }

    /// Shape ids in use, to keep them stable when compiling the next policy.
    pub fn live_shapes(&self) -> Result<BTreeMap<ShapeDesc, u16>, DataplaneError> {
        Ok(shapes_of(&self.live_tables()?))
    }

    /// What [`Maps::install`] would change (a dry run reads, never writes).
    pub fn diff(&self, compiled: &Compiled) -> Result<EntryDiff, DataplaneError> {
        let mut diff = EntryDiff::default();
        let mut same = HashSet::new();
        for item in self.rules.iter() {
            let (k, v) = item?;
            match compiled.entries.get(&k) {
                Some(want) if *want == v => {
                    same.insert(k);
                }
                Some(want) => {
                    diff.update.push((k, *want));
                    same.insert(k);
                }
                None => diff.remove.push(k),
            }
        }
        diff.insert = compiled
            .entries
            .iter()
            .filter(|(k, _)| !same.contains(*k))
            .map(|(k, v)| (*k, *v))
            .collect();
        Ok(diff)
    }

    /// Map capacities of this dataplane.
    pub fn capacity(&self) -> Result<Capacity, DataplaneError> {
        Ok(Capacity {
            entries: self.rules.map().info()?.max_entries(),
            rules: self.counters.len(),
        })
    }

    /// Makes the maps hold `compiled`, touching only entries that differ. Order matters
    /// for packets in flight: new entries first (unreachable until their shape is
    /// published), then the shape tables switch in one store, then stale entries go.
    pub fn install(&mut self, compiled: &Compiled) -> Result<InstallStats, DataplaneError> {
        let have = self.capacity()?;
        for (what, need, cap) in [
            ("rules", compiled.counter_slots, have.rules),
            ("hash entries", compiled.entries.len(), have.entries),
        ] {
            if need > cap as usize {
                return Err(DataplaneError::Capacity {
                    what,
                    need,
                    have: cap as usize,
                });
            }
        }
        let diff = self.diff(compiled)?;
        for (k, v) in diff.insert.iter().chain(&diff.update) {
            self.rules.insert(k, v, 0)?;
        }
        self.publish(&compiled.tables)?;
        for k in &diff.remove {
            self.rules.remove(k)?;
        }
        Ok(diff.stats())
    }

    fn publish(&mut self, tables: &[ShapeTable; 2]) -> Result<(), DataplaneError> {
        let next = (self.generation()? + 1) % GENERATIONS;
        self.tables.set(next * 2, tables[0], 0)?;
        self.tables.set(next * 2 + 1, tables[1], 0)?;
        let control = Control {
            generation: next,
            _pad: 0,
        };
        self.control.set(0, control, 0)?;
        Ok(())
    }

    /// Zeroes the counters of `slots` on every CPU (a slot given to a new rule starts at 0).
    pub fn zero_counters(
        &mut self,
        slots: impl IntoIterator<Item = u32>,
    ) -> Result<(), DataplaneError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Cpus(e))?;
        for slot in slots {
            let zeros = PerCpuValues::try_from(vec![Counter::default(); cpus])
                .map_err(DataplaneError::Cpus)?;
            self.counters.set(slot, zeros, 0)?;
        }
        Ok(())
    }

    /// Packet and byte counts of slots `0..n`, summed over CPUs.
    pub fn counters(&self, n: usize) -> Result<Vec<Counter>, DataplaneError> {
        (0..n as u32)
            .map(|i| {
                let per_cpu = self.counters.get(&i, 0)?;
                Ok(per_cpu.iter().fold(Counter::default(), |acc, c| Counter {
                    packets: acc.packets + c.packets,
                    bytes: acc.bytes + c.bytes,
                }))
            })
            .collect()
    }
}

/// Map capacities chosen at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Hash entries (a rule takes one per family and port block combination).
    pub entries: u32,
    /// Rules with a counter (per-CPU memory: 16 bytes per rule per possible CPU).
    pub rules: u32,
}

impl Default for Capacity {
    fn default() -> Self {
        Self {
            entries: DEFAULT_MAX_ENTRIES,
            rules: DEFAULT_MAX_COUNTERS,
        }
    }
}

/// A classifier program in the kernel and its maps: freshly loaded by this process, or
/// found attached somewhere and opened by id.
pub struct Dataplane {
    pub prog_id: u32,
    /// Ids of the program's maps (for pinning them).
    pub map_ids: Vec<u32>,
    prog_fd: ProgramFd,
    pub maps: Maps,
    ebpf: Option<Ebpf>,
}

impl Dataplane {
    /// Loads and verifies the classifier with maps of the given capacity.
    pub fn load(capacity: Capacity) -> Result<Self, DataplaneError> {
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(RULES_MAP, capacity.entries)
            .map_max_entries(COUNTERS_MAP, capacity.rules);
        let mut ebpf = loader.load(object::classifier())?;
        let prog = classifier_mut(&mut ebpf, object::CLASSIFIER_PROGRAM)?;
        prog.load()?;
        let prog_fd = prog.fd()?.try_clone().map_err(ProgramError::from)?;
        let prog_id = prog.info()?.id();
        let maps = Maps::take(&mut ebpf)?;
        bpfcall::prog_bind_map(prog_fd.as_fd(), maps.state.map().fd().as_fd())
            .map_err(DataplaneError::Bind)?;
        let map_ids = classifier_mut(&mut ebpf, object::CLASSIFIER_PROGRAM)?
            .info()?
            .map_ids()?
            .unwrap_or_default();
        Ok(Self {
            prog_id,
            map_ids,
            prog_fd,
            maps,
            ebpf: Some(ebpf),
        })
    }

    /// Opens a loaded classifier (e.g. found attached to a device) and its maps.
    pub fn open(info: &ProgramInfo) -> Result<Self, DataplaneError> {
        Ok(Self {
            prog_id: info.id(),
            map_ids: info.map_ids()?.unwrap_or_default(),
            prog_fd: info.fd()?,
            maps: Maps::of_program(info)?,
            ebpf: None,
        })
    }

    pub fn prog_fd(&self) -> BorrowedFd<'_> {
        self.prog_fd.as_fd()
    }

    /// The aya program object, for test runs; only for a program this process loaded.
    pub fn program(&mut self) -> Result<&mut SchedClassifier, DataplaneError> {
        let ebpf = self.ebpf.as_mut().ok_or(DataplaneError::NotLoadedHere)?;
        classifier_mut(ebpf, object::CLASSIFIER_PROGRAM)
    }
}

pub fn classifier_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, DataplaneError> {
    let prog = ebpf
        .program_mut(name)
        .ok_or(DataplaneError::Missing(name))?;
    Ok(prog.try_into()?)
}
