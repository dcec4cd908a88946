//! The loaded classifier: its program and typed handles on its maps, and how a compiled
//! policy is written into them.
use std::collections::{BTreeMap, HashSet};

use aya::{
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuValues},
    programs::{ProgramError, SchedClassifier},
    Ebpf, EbpfError, EbpfLoader,
};
use policyroute_common::{
    Control, Counter, RuleKey, RuleValue, ShapeTable, CONTROL_MAP, COUNTERS_MAP,
    DEFAULT_MAX_COUNTERS, DEFAULT_MAX_ENTRIES, GENERATIONS, RULES_MAP, TABLES_MAP,
};

use crate::{
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
}

/// Typed handles on the classifier's maps.
pub struct Maps {
    pub rules: HashMap<MapData, RuleKey, RuleValue>,
    pub tables: Array<MapData, ShapeTable>,
    pub control: Array<MapData, Control>,
    pub counters: PerCpuArray<MapData, Counter>,
}

/// What [`Maps::install`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InstallStats {
    pub inserted: usize,
    pub updated: usize,
    pub removed: usize,
}

impl Maps {
    fn take(ebpf: &mut Ebpf) -> Result<Self, DataplaneError> {
        let mut take =
            |name: &'static str| ebpf.take_map(name).ok_or(DataplaneError::Missing(name));
        Ok(Self {
            rules: HashMap::try_from(take(RULES_MAP)?)?,
            tables: Array::try_from(take(TABLES_MAP)?)?,
            control: Array::try_from(take(CONTROL_MAP)?)?,
            counters: PerCpuArray::try_from(take(COUNTERS_MAP)?)?,
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

    /// Makes the maps hold `compiled`, touching only entries that differ. Order matters
    /// for packets in flight: new entries first (unreachable until their shape is
    /// published), then the shape tables switch in one store, then stale entries go.
    pub fn install(&mut self, compiled: &Compiled) -> Result<InstallStats, DataplaneError> {
        let capacity = self.counters.len();
        if compiled.rules > capacity as usize {
            return Err(DataplaneError::Capacity {
                what: "rules",
                need: compiled.rules,
                have: capacity as usize,
            });
        }
        let mut stats = InstallStats::default();
        let mut stale = Vec::new();
        let mut seen = HashSet::new();
        for item in self.rules.iter() {
            let (k, v) = item?;
            match compiled.entries.get(&k) {
                Some(want) if *want == v => {
                    seen.insert(k);
                }
                Some(_) => {}
                None => stale.push(k),
            }
        }
        for (k, v) in &compiled.entries {
            if seen.contains(k) {
                continue;
            }
            let existed = self.rules.get(k, 0).is_ok();
            self.rules.insert(k, v, 0)?;
            if existed {
                stats.updated += 1;
            } else {
                stats.inserted += 1;
            }
        }
        self.publish(&compiled.tables)?;
        for k in &stale {
            self.rules.remove(k)?;
        }
        stats.removed = stale.len();
        Ok(stats)
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

/// The classifier object loaded into the kernel (program verified, not attached).
pub struct Dataplane {
    pub ebpf: Ebpf,
    pub maps: Maps,
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

impl Dataplane {
    /// Loads and verifies the classifier with maps of the given capacity.
    pub fn load(capacity: Capacity) -> Result<Self, DataplaneError> {
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(RULES_MAP, capacity.entries)
            .map_max_entries(COUNTERS_MAP, capacity.rules);
        let mut ebpf = loader.load(object::classifier())?;
        classifier_mut(&mut ebpf, object::CLASSIFIER_PROGRAM)?.load()?;
        let maps = Maps::take(&mut ebpf)?;
        Ok(Self { ebpf, maps })
    }

    pub fn program(&mut self) -> Result<&mut SchedClassifier, DataplaneError> {
        classifier_mut(&mut self.ebpf, object::CLASSIFIER_PROGRAM)
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
