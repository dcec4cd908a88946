//! The loaded classifier: its program and typed handles on its maps, and how a compiled
//! policy is written into them.
use std::collections::{BTreeMap, HashSet};

use std::os::fd::{AsFd, BorrowedFd};

use aya::{
    maps::{Array, HashMap, IterableMap, Map, MapData, MapError, PerCpuArray, PerCpuValues},
    programs::{CgroupSockAddr, ProgramError, ProgramFd, ProgramInfo, SchedClassifier},
    Ebpf, EbpfError, EbpfLoader,
};
use policyroute_common::{
    Control, Counter, DeviceRole, FlowKey, FlowValue, GatewaySource, RuleKey, RuleValue,
    ShapeTable, StateChunk, CONTROL_MAP, COUNTERS_MAP, DEFAULT_MAX_COUNTERS, DEFAULT_MAX_ENTRIES,
    DEVICES_MAP, FLOWS_MAP, GENERATIONS, RULES_MAP, SOURCES_MAP, STATE_MAP, TABLES_MAP,
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
    #[error("batch map operation: {0}")]
    Batch(std::io::Error),
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
    pub devices: HashMap<MapData, u32, DeviceRole>,
    pub flows: HashMap<MapData, FlowKey, FlowValue>,
    pub sources: HashMap<MapData, u32, GatewaySource>,
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

    fn all(&self) -> [&MapData; 8] {
        [
            self.rules.map(),
            self.tables.map(),
            self.control.map(),
            self.counters.map(),
            self.state.map(),
            self.devices.map(),
            self.flows.map(),
            self.sources.map(),
        ]
    }

    /// The network namespace cookie the socket hooks act on.
    pub fn netns_cookie(&self) -> Result<u64, DataplaneError> {
        Ok(self.control.get(&0, 0)?.netns_cookie)
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
            devices: HashMap::try_from(take(DEVICES_MAP)?)?,
            flows: HashMap::try_from(take(FLOWS_MAP)?)?,
            sources: HashMap::try_from(take(SOURCES_MAP)?)?,
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
        let have: Vec<(RuleKey, RuleValue)> =
            bpfcall::map_dump(self.rules.map().fd().as_fd()).map_err(DataplaneError::Batch)?;
        for (k, v) in have {
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
            // From the kernel, not the object file: maps shared through pins keep their size.
            rules: self.counters.map().info()?.max_entries(),
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
        let fd = self.rules.map().fd().as_fd();
        let (keys, values): (Vec<RuleKey>, Vec<RuleValue>) =
            diff.insert.iter().chain(&diff.update).copied().unzip();
        bpfcall::map_update_batch(fd, &keys, &values).map_err(DataplaneError::Batch)?;
        self.publish(&compiled.tables)?;
        let fd = self.rules.map().fd().as_fd();
        bpfcall::map_delete_batch(fd, &diff.remove).map_err(DataplaneError::Batch)?;
        Ok(diff.stats())
    }

    fn publish(&mut self, tables: &[ShapeTable; 2]) -> Result<(), DataplaneError> {
        let next = (self.generation()? + 1) % GENERATIONS;
        self.tables.set(next * 2, tables[0], 0)?;
        self.tables.set(next * 2 + 1, tables[1], 0)?;
        let control = Control {
            generation: next,
            ..self.control.get(&0, 0)?
        };
        self.control.set(0, control, 0)?;
        Ok(())
    }

    /// Sets the switches other than the table generation.
    pub fn set_control(
        &mut self,
        flags: u32,
        netns_cookie: u64,
        sticky_ttl_ns: u64,
    ) -> Result<(), DataplaneError> {
        let control = Control {
            flags,
            netns_cookie,
            sticky_ttl_ns,
            ..self.control.get(&0, 0)?
        };
        self.control.set(0, control, 0)?;
        Ok(())
    }

    /// Makes `map` hold exactly `want`.
    fn sync<K: aya::Pod + Ord, V: aya::Pod + PartialEq>(
        map: &mut HashMap<MapData, K, V>,
        want: &std::collections::BTreeMap<K, V>,
    ) -> Result<(), DataplaneError> {
        let have: Vec<(K, V)> = map.iter().collect::<Result<_, _>>()?;
        for (k, v) in want {
            if !have.iter().any(|(hk, hv)| hk == k && hv == v) {
                map.insert(k, v, 0)?;
            }
        }
        for (k, _) in have {
            if !want.contains_key(&k) {
                map.remove(&k)?;
            }
        }
        Ok(())
    }

    /// Device roles (ifindex -> role) and gateway source addresses (mark -> addresses).
    pub fn set_roles(
        &mut self,
        devices: &std::collections::BTreeMap<u32, DeviceRole>,
        sources: &std::collections::BTreeMap<u32, GatewaySource>,
    ) -> Result<(), DataplaneError> {
        Self::sync(&mut self.devices, devices)?;
        Self::sync(&mut self.sources, sources)
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

/// The programs of the object, by the name the kernel reports (at most 15 characters).
pub const TC_INGRESS: &str = object::CLASSIFIER_PROGRAM;
pub const TC_EGRESS: &str = "policyroute_eg";
pub const CONNECT4: &str = "pr_connect4";
pub const CONNECT6: &str = "pr_connect6";
pub const SENDMSG4: &str = "pr_sendmsg4";
pub const SENDMSG6: &str = "pr_sendmsg6";
const TC_PROGRAMS: [&str; 2] = [TC_INGRESS, TC_EGRESS];
pub const PROGRAM_NAMES: [&str; 6] = [
    TC_INGRESS, TC_EGRESS, CONNECT4, CONNECT6, SENDMSG4, SENDMSG6,
];
const SOCK_PROGRAMS: [&str; 4] = [CONNECT4, CONNECT6, SENDMSG4, SENDMSG6];
/// Maps in the object, for sharing them with a newly loaded program set.
pub const MAP_NAMES: [&str; 8] = [
    RULES_MAP,
    TABLES_MAP,
    CONTROL_MAP,
    COUNTERS_MAP,
    STATE_MAP,
    DEVICES_MAP,
    FLOWS_MAP,
    SOURCES_MAP,
];

/// The dataplane: maps, and the programs this process loaded (none when it was only
/// found attached and opened by id).
pub struct Dataplane {
    /// Identifies the dataplane: every program of one load shares this rules map.
    pub rules_map_id: u32,
    /// Ids of its maps (for pinning them).
    pub map_ids: Vec<u32>,
    pub maps: Maps,
    programs: std::collections::BTreeMap<&'static str, ProgramFd>,
    ebpf: Option<Ebpf>,
}

impl Dataplane {
    /// Loads and verifies all programs with new maps of the given capacity.
    pub fn load(capacity: Capacity) -> Result<Self, DataplaneError> {
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(RULES_MAP, capacity.entries)
            .map_max_entries(COUNTERS_MAP, capacity.rules);
        Self::load_with(loader)
    }

    /// Loads all programs again, sharing the maps of a dataplane pinned (by map name) in
    /// `pin_dir`: new hooks can be attached while counters, rules and flows stay.
    pub fn load_sharing(pin_dir: &std::path::Path) -> Result<Self, DataplaneError> {
        let mut loader = EbpfLoader::new();
        for name in MAP_NAMES {
            loader.map_pin_path(name, pin_dir.join(name));
        }
        Self::load_with(loader)
    }

    fn load_with(mut loader: EbpfLoader<'_>) -> Result<Self, DataplaneError> {
        let mut ebpf = loader.load(object::classifier())?;
        let mut programs = std::collections::BTreeMap::new();
        for name in TC_PROGRAMS {
            let prog = classifier_mut(&mut ebpf, name)?;
            prog.load()?;
            programs.insert(name, prog.fd()?.try_clone().map_err(ProgramError::from)?);
        }
        for name in SOCK_PROGRAMS {
            let prog: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or(DataplaneError::Missing(name))?
                .try_into()?;
            prog.load()?;
            programs.insert(name, prog.fd()?.try_clone().map_err(ProgramError::from)?);
        }
        let maps = Maps::take(&mut ebpf)?;
        // Every program lists every map, so whichever program a later process finds
        // attached leads it to all of them (the state record is read only by userspace,
        // the gateway sources only by the socket hooks).
        for fd in programs.values() {
            for map in maps.all() {
                bpfcall::prog_bind_map(fd.as_fd(), map.fd().as_fd())
                    .map_err(DataplaneError::Bind)?;
            }
        }
        let info = classifier_mut(&mut ebpf, TC_INGRESS)?.info()?;
        Ok(Self {
            rules_map_id: maps.rules.map().info()?.id(),
            map_ids: info.map_ids()?.unwrap_or_default(),
            maps,
            programs,
            ebpf: Some(ebpf),
        })
    }

    /// Opens the maps of a loaded program (e.g. found attached to a device).
    pub fn open(info: &ProgramInfo) -> Result<Self, DataplaneError> {
        let maps = Maps::of_program(info)?;
        Ok(Self {
            rules_map_id: maps.rules.map().info()?.id(),
            map_ids: info.map_ids()?.unwrap_or_default(),
            maps,
            programs: Default::default(),
            ebpf: None,
        })
    }

    /// A program this process loaded, by name.
    pub fn program_fd(&self, name: &str) -> Option<BorrowedFd<'_>> {
        self.programs.get(name).map(|fd| fd.as_fd())
    }

    pub fn has_programs(&self) -> bool {
        !self.programs.is_empty()
    }

    /// The aya TC ingress program, for test runs; only for programs this process loaded.
    pub fn program(&mut self) -> Result<&mut SchedClassifier, DataplaneError> {
        let ebpf = self.ebpf.as_mut().ok_or(DataplaneError::NotLoadedHere)?;
        classifier_mut(ebpf, TC_INGRESS)
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
