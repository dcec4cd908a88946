//! Typed handles on the classifier's maps, and how a compiled policy, the switches and the
//! device roles are written into them.
use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::AsFd,
};

use ipnet::IpNet;

use aya::{
    maps::{
        Array, HashMap, IterableMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuValues,
    },
    programs::ProgramInfo,
    Ebpf,
};
use policyroute_common::{
    Control, Counter, DeviceRole, FastGateway, FastStats, FlowChoice, FlowKey, FlowTuple,
    FlowValue, GatewaySource, RuleKey, RuleValue, ShapeTable, StateChunk, TargetState, TraceFilter,
    TraceRate, TrieNode, ADDRESSES_MAP, CHOICES_MAP, CONTROL_MAP, CONTROL_TRACE, COUNTERS_MAP,
    DEVICES_MAP, FAST_MAP, FAST_STATS_MAP, FLOWS_MAP, GENERATIONS, KERNEL4_MAP, KERNEL6_MAP,
    LOGS_MAP, PREFIX_TRIE_MAP, RULES_MAP, SOURCES_MAP, STATE_CHUNK, STATE_MAP, TABLES_MAP,
    TARGETS_MAP, TRACE_MAP, TRACE_RATE_MAP, TRIE_NODE_WORDS,
};

use rustc_hash::FxHashSet;

use crate::{
    kernel::{
        bpf_syscalls as bpf, dataplane::DataplaneError, record_store::EPOCH_KEY, trie_map::Mapped,
    },
    plan::{
        compile::{addr_words, shapes_of, Compiled, ShapeDesc},
        Capacity,
    },
};

/// Typed handles on the classifier's maps.
pub struct Maps {
    pub rules: HashMap<MapData, RuleKey, RuleValue>,
    /// The prefix tries (nodes of `TRIE_NODE_WORDS` words), written through a mapping
    /// (`trie_map`).
    pub trie: Array<MapData, TrieNode>,
    pub tables: Array<MapData, ShapeTable>,
    pub control: Array<MapData, Control>,
    pub counters: PerCpuArray<MapData, Counter>,
    pub state: HashMap<MapData, u32, StateChunk>,
    pub devices: HashMap<MapData, u32, DeviceRole>,
    pub flows: HashMap<MapData, FlowKey, FlowValue>,
    pub sources: HashMap<MapData, u32, GatewaySource>,
    pub targets: HashMap<MapData, u32, TargetState>,
    pub choices: HashMap<MapData, FlowTuple, FlowChoice>,
    pub trace: Array<MapData, TraceFilter>,
    pub trace_rate: PerCpuArray<MapData, TraceRate>,
    /// aya-log's ring buffer (read by `policyroute trace` through aya-log itself).
    pub logs: MapData,
    pub fast: HashMap<MapData, u32, FastGateway>,
    pub kernel4: LpmTrie<MapData, [u8; 4], u8>,
    pub kernel6: LpmTrie<MapData, [u32; 4], u8>,
    pub fast_stats: PerCpuArray<MapData, FastStats>,
    pub addresses: HashMap<MapData, u32, GatewaySource>,
}

/// Entry changes between a compiled policy and the maps.
#[derive(Clone, Debug, Default)]
pub struct EntryDiff {
    pub insert: Vec<(RuleKey, RuleValue)>,
    pub update: Vec<(RuleKey, RuleValue)>,
    pub remove: Vec<RuleKey>,
    pub compared: usize,
}

impl EntryDiff {
    pub fn stats(&self) -> InstallStats {
        InstallStats {
            inserted: self.insert.len(),
            updated: self.update.len(),
            removed: self.remove.len(),
            trie_words: 0,
            compared: self.compared,
        }
    }
}

/// What [`Maps::install`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct InstallStats {
    pub inserted: usize,
    pub updated: usize,
    pub removed: usize,
    /// Prefix trie words stored (a new image is compared with what its half held).
    #[serde(default)]
    pub trie_words: usize,
    /// Entries looked at: all of the map's, or (re-applying an edit in place) only those of
    /// the edited rules.
    pub compared: usize,
}

impl InstallStats {
    pub fn changed(&self) -> bool {
        self.inserted + self.updated + self.removed + self.trie_words > 0
    }
}

impl Maps {
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Self, DataplaneError> {
        Self::build(|name| ebpf.take_map(name).ok_or(DataplaneError::Missing(name)))
    }

    /// Every map with its name.
    pub(super) fn all(&self) -> [(&'static str, &MapData); 19] {
        [
            (RULES_MAP, self.rules.map()),
            (PREFIX_TRIE_MAP, self.trie.map()),
            (TABLES_MAP, self.tables.map()),
            (CONTROL_MAP, self.control.map()),
            (COUNTERS_MAP, self.counters.map()),
            (STATE_MAP, self.state.map()),
            (DEVICES_MAP, self.devices.map()),
            (FLOWS_MAP, self.flows.map()),
            (SOURCES_MAP, self.sources.map()),
            (TARGETS_MAP, self.targets.map()),
            (CHOICES_MAP, self.choices.map()),
            (TRACE_MAP, self.trace.map()),
            (TRACE_RATE_MAP, self.trace_rate.map()),
            (LOGS_MAP, &self.logs),
            (FAST_MAP, self.fast.map()),
            (KERNEL4_MAP, self.kernel4.map()),
            (KERNEL6_MAP, self.kernel6.map()),
            (FAST_STATS_MAP, self.fast_stats.map()),
            (ADDRESSES_MAP, self.addresses.map()),
        ]
    }

    /// The id of the rules map, which identifies the dataplane: every program of one load
    /// shares it.
    pub fn rules_map_id(&self) -> Result<u32, DataplaneError> {
        Ok(self.rules.map().info()?.id())
    }

    /// The network namespace cookie the socket hooks act on.
    pub fn netns_cookie(&self) -> Result<u64, DataplaneError> {
        Ok(self.control.get(&0, 0)?.netns_cookie)
    }

    /// The maps of an already loaded classifier, found through the program's map ids.
    pub(super) fn of_program(info: &ProgramInfo) -> Result<Self, DataplaneError> {
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
            trie: Array::try_from(take(PREFIX_TRIE_MAP)?)?,
            tables: Array::try_from(take(TABLES_MAP)?)?,
            control: Array::try_from(take(CONTROL_MAP)?)?,
            counters: PerCpuArray::try_from(take(COUNTERS_MAP)?)?,
            state: HashMap::try_from(take(STATE_MAP)?)?,
            devices: HashMap::try_from(take(DEVICES_MAP)?)?,
            flows: HashMap::try_from(take(FLOWS_MAP)?)?,
            sources: HashMap::try_from(take(SOURCES_MAP)?)?,
            targets: HashMap::try_from(take(TARGETS_MAP)?)?,
            choices: HashMap::try_from(take(CHOICES_MAP)?)?,
            trace: Array::try_from(take(TRACE_MAP)?)?,
            trace_rate: PerCpuArray::try_from(take(TRACE_RATE_MAP)?)?,
            logs: ring_buffer(take(LOGS_MAP)?)?,
            fast: HashMap::try_from(take(FAST_MAP)?)?,
            kernel4: LpmTrie::try_from(take(KERNEL4_MAP)?)?,
            kernel6: LpmTrie::try_from(take(KERNEL6_MAP)?)?,
            fast_stats: PerCpuArray::try_from(take(FAST_STATS_MAP)?)?,
            addresses: HashMap::try_from(take(ADDRESSES_MAP)?)?,
        })
    }

    fn generation(&self) -> Result<u32, DataplaneError> {
        Ok(self.control.get(&0, 0)?.generation % GENERATIONS)
    }

    /// Counts the controller's writes of rule entries (raised before each); the record of
    /// the applied policy notes the value its entries were written at. Kept in the state
    /// map under its own key (the programs never read it).
    pub fn epoch(&self) -> Result<u32, DataplaneError> {
        match self.state.get(&EPOCH_KEY, 0) {
            Ok(chunk) => Ok(u32::from_le_bytes(
                chunk.data[..4].try_into().expect("four bytes"),
            )),
            Err(MapError::KeyNotFound) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// Raises the epoch before rule entries are written: a record noting an older one no
    /// longer describes the entries (an install may have been cut short).
    fn begin_writes(&mut self) -> Result<(), DataplaneError> {
        let mut chunk = StateChunk {
            len: 4,
            data: [0; STATE_CHUNK],
        };
        chunk.data[..4].copy_from_slice(&self.epoch()?.wrapping_add(1).to_le_bytes());
        Ok(self.state.insert(EPOCH_KEY, chunk, 0)?)
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
        let mut same = FxHashSet::default();
        let have: Vec<(RuleKey, RuleValue)> =
            bpf::map_dump(self.rules.map().fd().as_fd()).map_err(DataplaneError::Batch)?;
        diff.compared = have.len();
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
            trie_nodes: self.trie.map().info()?.max_entries(),
        })
    }

    /// Makes the maps hold `compiled`, touching only entries that differ. Order matters
    /// for packets in flight: new entries first (unreachable until their shape is
    /// published), then the shape tables switch in one store, then stale entries go.
    pub fn install(&mut self, compiled: &Compiled) -> Result<InstallStats, DataplaneError> {
        self.check_capacity(compiled)?;
        let diff = self.diff(compiled)?;
        let trie_words = self.write(compiled, &diff)?;
        Ok(InstallStats {
            trie_words,
            ..diff.stats()
        })
    }

    fn check_capacity(&self, compiled: &Compiled) -> Result<(), DataplaneError> {
        let have = self.capacity()?;
        for (what, need, cap) in [
            ("rules", compiled.counter_slots, have.rules),
            ("hash entries", compiled.entries.len(), have.entries),
            (
                "prefix trie nodes",
                compiled.trie.nodes(),
                have.trie_nodes / 2,
            ),
        ] {
            if need > cap as usize {
                return Err(DataplaneError::Capacity {
                    what,
                    need,
                    have: cap as usize,
                });
            }
        }
        Ok(())
    }

    /// [`Maps::install`] when the entries are known to differ from `compiled` at most at
    /// `keys` (the entries of the rules that changed): looks those up instead of reading
    /// the whole map.
    pub fn install_keys(
        &mut self,
        compiled: &Compiled,
        keys: &[RuleKey],
    ) -> Result<InstallStats, DataplaneError> {
        self.check_capacity(compiled)?;
        let mut diff = EntryDiff {
            compared: keys.len(),
            ..EntryDiff::default()
        };
        for key in keys {
            let have = match self.rules.get(key, 0) {
                Ok(v) => Some(v),
                Err(MapError::KeyNotFound) => None,
                Err(e) => return Err(e.into()),
            };
            match (have, compiled.entries.get(key)) {
                (None, Some(want)) => diff.insert.push((*key, *want)),
                (Some(v), Some(want)) if v != *want => diff.update.push((*key, *want)),
                (Some(_), None) => diff.remove.push(*key),
                _ => {}
            }
        }
        let trie_words = self.write(compiled, &diff)?;
        Ok(InstallStats {
            trie_words,
            ..diff.stats()
        })
    }

    /// New and changed entries, then the switch to the new shape tables, then deletions.
    /// The new trie image goes first, into the half the live tables do not use. Returns
    /// the trie words stored.
    fn write(&mut self, compiled: &Compiled, diff: &EntryDiff) -> Result<usize, DataplaneError> {
        self.begin_writes()?;
        let (base, stored) = self.write_trie(&compiled.trie.words)?;
        let mut tables = compiled.tables;
        for t in &mut tables {
            t.trie_base = base;
        }
        let fd = self.rules.map().fd().as_fd();
        let (keys, values): (Vec<RuleKey>, Vec<RuleValue>) =
            diff.insert.iter().chain(&diff.update).copied().unzip();
        bpf::map_update_batch(fd, &keys, &values).map_err(DataplaneError::Batch)?;
        self.publish(&tables)?;
        let fd = self.rules.map().fd().as_fd();
        bpf::map_delete_batch(fd, &diff.remove).map_err(DataplaneError::Batch)?;
        Ok(stored)
    }

    /// Writes `image` into the trie half the live tables do not use; returns its base (a
    /// node index) and the words stored.
    fn write_trie(&mut self, image: &[u32]) -> Result<(u32, usize), DataplaneError> {
        let nodes = self.trie.map().info()?.max_entries();
        let half = nodes / 2;
        let live = self.live_tables()?[0].trie_base;
        let base = if live == 0 { half } else { 0 };
        if image.is_empty() {
            return Ok((base, 0));
        }
        let words = nodes as usize * TRIE_NODE_WORDS as usize;
        let mapped =
            Mapped::new(self.trie.map().fd().as_fd(), words).map_err(DataplaneError::Mmap)?;
        Ok((
            base,
            mapped.write(base as usize * TRIE_NODE_WORDS as usize, image),
        ))
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
        let now = self.control.get(&0, 0)?;
        let control = Control {
            // A running trace's bit is not the policy's to change.
            flags: (flags & !CONTROL_TRACE) | (now.flags & CONTROL_TRACE),
            netns_cookie,
            sticky_ttl_ns,
            ..now
        };
        self.control.set(0, control, 0)?;
        Ok(())
    }

    /// Sets or clears [`CONTROL_TRACE`], keeping the rest of the control word.
    pub fn set_trace_bit(&mut self, on: bool) -> Result<(), DataplaneError> {
        let mut control = self.control.get(&0, 0)?;
        let flags = if on {
            control.flags | CONTROL_TRACE
        } else {
            control.flags & !CONTROL_TRACE
        };
        if flags != control.flags {
            control.flags = flags;
            self.control.set(0, control, 0)?;
        }
        Ok(())
    }

    /// Makes `map` hold exactly `want`.
    fn sync<K: aya::Pod + Ord, V: aya::Pod + PartialEq>(
        map: &mut HashMap<MapData, K, V>,
        want: &BTreeMap<K, V>,
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
        devices: &BTreeMap<u32, DeviceRole>,
        sources: &BTreeMap<u32, GatewaySource>,
    ) -> Result<(), DataplaneError> {
        Self::sync(&mut self.devices, devices)?;
        Self::sync(&mut self.sources, sources)
    }

    /// The fast path's gateway tables (mark -> table), classifying devices' addresses
    /// (ifindex -> addresses), and the destinations it leaves to the kernel.
    pub fn set_fast_path(
        &mut self,
        fast: &BTreeMap<u32, FastGateway>,
        addresses: &BTreeMap<u32, GatewaySource>,
        kernel: &BTreeSet<IpNet>,
    ) -> Result<(), DataplaneError> {
        Self::sync(&mut self.fast, fast)?;
        Self::sync(&mut self.addresses, addresses)?;
        sync_prefixes(&mut self.kernel4, &mut self.kernel6, kernel)
    }

    /// What the fast path did, summed over the CPUs.
    pub fn fast_stats(&self) -> Result<FastStats, DataplaneError> {
        let per_cpu = self.fast_stats.get(&0, 0)?;
        Ok(per_cpu.iter().fold(FastStats::default(), |a, s| a + *s))
    }

    /// The gateway and group states, by key.
    pub fn targets(&self) -> Result<BTreeMap<u32, TargetState>, DataplaneError> {
        Ok(self.targets.iter().collect::<Result<_, _>>()?)
    }

    /// The two maps a health change writes, to keep open between passes (see
    /// [`SwitchMaps`]).
    pub fn switch_maps(&self) -> Result<SwitchMaps, DataplaneError> {
        SwitchMaps::open(
            self.targets.map().info()?.id(),
            self.flows.map().info()?.id(),
        )
    }

    /// Writes the states of `want` that differ from `have` (what [`Self::targets`] read).
    pub fn write_targets(
        &mut self,
        want: &BTreeMap<u32, TargetState>,
        have: &BTreeMap<u32, TargetState>,
    ) -> Result<usize, DataplaneError> {
        write_targets(&mut self.targets, want, have)
    }

    /// Removes the states of `have` that `want` lacks (after no rule names them).
    pub fn remove_targets(
        &mut self,
        want: &BTreeMap<u32, TargetState>,
        have: &BTreeMap<u32, TargetState>,
    ) -> Result<(), DataplaneError> {
        for k in have.keys().filter(|k| !want.contains_key(k)) {
            remove(&mut self.targets, k)?;
        }
        Ok(())
    }

    /// See [`forget_flows`].
    pub fn forget_flows(&mut self, gone: &[(u32, u8)]) -> Result<usize, DataplaneError> {
        forget_flows(&mut self.flows, gone)
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

/// The maps a gateway's health change writes: the target states, and the sticky flows
/// of gateways that went down. The daemon keeps them open between passes, so a switch is
/// a few map writes, whatever the size of the policy.
pub struct SwitchMaps {
    targets: HashMap<MapData, u32, TargetState>,
    flows: HashMap<MapData, FlowKey, FlowValue>,
}

impl SwitchMaps {
    pub fn open(targets_id: u32, flows_id: u32) -> Result<Self, DataplaneError> {
        let map =
            |id| -> Result<Map, DataplaneError> { Ok(Map::from_map_data(MapData::from_id(id)?)?) };
        Ok(Self {
            targets: HashMap::try_from(map(targets_id)?)?,
            flows: HashMap::try_from(map(flows_id)?)?,
        })
    }

    /// See [`write_targets`] and [`forget_flows`].
    pub fn switch(
        &mut self,
        want: &BTreeMap<u32, TargetState>,
        have: &BTreeMap<u32, TargetState>,
        gone: &[(u32, u8)],
    ) -> Result<(usize, usize), DataplaneError> {
        let written = write_targets(&mut self.targets, want, have)?;
        Ok((written, forget_flows(&mut self.flows, gone)?))
    }
}

/// Writes the states of `want` that differ from `have`. Each write replaces the element
/// whole (a hash map update links a new one), so a packet sees the old state or the new
/// one, never a mix.
fn write_targets(
    map: &mut HashMap<MapData, u32, TargetState>,
    want: &BTreeMap<u32, TargetState>,
    have: &BTreeMap<u32, TargetState>,
) -> Result<usize, DataplaneError> {
    let mut written = 0;
    for (k, v) in want {
        if have.get(k) != Some(v) {
            map.insert(k, v, 0)?;
            written += 1;
        }
    }
    Ok(written)
}

/// Drops the sticky flow records of gateways that went down, given as (mark, family
/// index): their replies must not keep going to a dead uplink. Returns how many went.
fn forget_flows(
    map: &mut HashMap<MapData, FlowKey, FlowValue>,
    gone: &[(u32, u8)],
) -> Result<usize, DataplaneError> {
    if gone.is_empty() {
        return Ok(0);
    }
    let stale: Vec<FlowKey> = map
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, v)| gone.contains(&(v.mark, k.family)))
        .map(|(k, _)| k)
        .collect();
    for k in &stale {
        remove(map, k)?;
    }
    Ok(stale.len())
}

/// Removes `key`; one already gone is fine.
fn remove<K: aya::Pod, V: aya::Pod>(
    map: &mut HashMap<MapData, K, V>,
    key: &K,
) -> Result<(), DataplaneError> {
    match map.remove(key) {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn ring_buffer(map: Map) -> Result<MapData, DataplaneError> {
    match map {
        Map::RingBuf(data) => Ok(data),
        // Named like aya-log's map but of another type: not one of ours.
        _ => Err(DataplaneError::Missing(LOGS_MAP)),
    }
}

/// Makes the two LPM tries hold exactly `want` (the value is unused).
fn sync_prefixes(
    v4: &mut LpmTrie<MapData, [u8; 4], u8>,
    v6: &mut LpmTrie<MapData, [u32; 4], u8>,
    want: &BTreeSet<IpNet>,
) -> Result<(), DataplaneError> {
    let (mut want4, mut want6) = (Vec::new(), Vec::new());
    for net in want {
        let len = u32::from(net.prefix_len());
        match net {
            IpNet::V4(n) => want4.push((len, n.network().octets())),
            IpNet::V6(n) => want6.push((len, addr_words(&n.network().into()))),
        }
    }
    sync_trie(v4, &want4)?;
    sync_trie(v6, &want6)
}

fn sync_trie<K: aya::Pod + PartialEq>(
    trie: &mut LpmTrie<MapData, K, u8>,
    want: &[(u32, K)],
) -> Result<(), DataplaneError> {
    use aya::maps::lpm_trie::Key;
    let have: Vec<(u32, K)> = trie
        .keys()
        .map(|k| k.map(|k| (k.prefix_len(), k.data())))
        .collect::<Result<_, _>>()?;
    for (len, data) in want.iter().filter(|w| !have.contains(w)) {
        trie.insert(&Key::new(*len, *data), 1, 0)?;
    }
    for (len, data) in have.iter().filter(|h| !want.contains(h)) {
        trie.remove(&Key::new(*len, *data))?;
    }
    Ok(())
}
