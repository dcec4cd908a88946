//! Stage 2 of the pipeline: what the namespace holds now. [`installed`] finds our programs
//! on their hooks and opens the dataplane in use (kernel handles, for reading counters and
//! detaching); [`observe`] turns that and rtnetlink's view into the plain [`Observed`] the
//! planner works from.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    path::PathBuf,
};

use aya::programs::ProgramInfo;

use crate::{
    kernel::{
        attach::{self, Attached},
        dataplane::{Dataplane, DataplaneError},
        mounts, namespace,
        netlink::{Link, Netlink, RTPROT_POLICYROUTE},
        run_dir, KernelError,
    },
    plan::{
        objects::{Frames, Hook},
        Attachment, Observed, ObservedDataplane,
    },
};

/// Our programs on their hooks in this namespace, and the dataplane in use.
pub struct Installed {
    pub attached: Vec<Attached>,
    /// The rules map id of each attachment's dataplane (parallel to `attached`).
    dataplane_ids: Vec<u32>,
    /// The dataplane to keep: the one whose programs hold the most hooks (others are
    /// stale leftovers of an interrupted apply).
    pub dataplane: Option<Dataplane>,
    /// Where the cgroup v2 hierarchy is mounted for this process, if anywhere.
    pub cgroup_root: Option<PathBuf>,
    /// This namespace's cookie (socket hooks of other namespaces are told apart by it).
    netns_cookie: u64,
    /// Whether the kernel has tcx (Linux 6.6+).
    pub tcx: bool,
}

impl Installed {
    /// The program called `name` of the dataplane in use, as found on a hook.
    pub fn take_live_program(&mut self, name: &str) -> Option<ProgramInfo> {
        let live = self.dataplane.as_ref()?.rules_map_id;
        let i = (0..self.attached.len())
            .find(|&i| self.dataplane_ids[i] == live && self.attached[i].hook.program() == name)?;
        self.dataplane_ids.remove(i);
        Some(self.attached.remove(i).program)
    }
}

/// Finds our attachments: the tcx hooks and clsact filters of every device in `links`, and the socket hooks
/// of the root cgroup, of `cgroups`, and of the cgroups earlier applies in this namespace
/// used.
pub fn installed(links: &[Link], cgroups: &[String]) -> Result<Installed, KernelError> {
    let links: Vec<(u32, String)> = links.iter().map(|l| (l.index, l.name.clone())).collect();
    let tcx = attach::tcx_available();
    let mut found = attach::find_devices(&links, tcx)?;
    let cgroup_root = mounts::cgroup2_root().map_err(KernelError::io("finding cgroup2"))?;
    if let Some(root) = &cgroup_root {
        let mut candidates: BTreeSet<String> = cgroups.iter().cloned().collect();
        candidates.insert("/".into());
        candidates.extend(run_dir::cgroup_hints());
        for cg in &candidates {
            found.extend(attach::find_cgroup(root, cg)?);
        }
    }
    let cookie = namespace::netns_cookie().map_err(KernelError::io("netns cookie"))?;
    // One open dataplane per rules map, with the number of hooks its programs hold.
    let mut dataplanes: BTreeMap<u32, (usize, Dataplane)> = BTreeMap::new();
    let (mut attached, mut dataplane_ids) = (Vec::new(), Vec::new());
    for a in found {
        let dp = match Dataplane::open(&a.program) {
            Ok(dp) => dp,
            // An older release's programs (their maps differ): never the one to keep,
            // so the plan loads a new dataplane and detaches them.
            Err(DataplaneError::Missing(_)) if !matches!(a.hook, Hook::Cgroup { .. }) => {
                dataplane_ids.push(0);
                attached.push(a);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        // Socket hooks of other namespaces' policies may share a cgroup with ours.
        if matches!(a.hook, Hook::Cgroup { .. }) && dp.maps.netns_cookie()? != cookie {
            continue;
        }
        dataplane_ids.push(dp.rules_map_id);
        dataplanes.entry(dp.rules_map_id).or_insert((0, dp)).0 += 1;
        attached.push(a);
    }
    let keep = dataplanes
        .iter()
        .max_by_key(|(id, (n, _))| (*n, **id))
        .map(|(id, _)| *id);
    let dataplane = keep.and_then(|id| dataplanes.remove(&id)).map(|(_, dp)| dp);
    Ok(Installed {
        attached,
        dataplane_ids,
        dataplane,
        cgroup_root,
        netns_cookie: cookie,
        tcx,
    })
}

/// What a plan needs to know of the namespace. `address_devices`: the devices whose
/// addresses matter (gateway devices); missing ones are left out. `tables`: those whose
/// routes of others' matter (gateway tables).
pub async fn observe(
    nl: &Netlink,
    links: &[Link],
    installed: &Installed,
    address_devices: &[&str],
    tables: &BTreeSet<u32>,
) -> Result<Observed, KernelError> {
    let index_of: BTreeMap<String, u32> = links.iter().map(|l| (l.name.clone(), l.index)).collect();
    let mut addresses = BTreeMap::new();
    for dev in address_devices {
        if let Some(&index) = index_of.get(*dev) {
            addresses.insert(dev.to_string(), routable_addresses(nl, index).await?);
        }
    }
    let attachments = installed
        .attached
        .iter()
        .zip(&installed.dataplane_ids)
        .map(|(a, &dataplane)| Attachment {
            hook: a.hook.clone(),
            program_id: a.program.id(),
            dataplane,
        })
        .collect();
    let targets = match &installed.dataplane {
        Some(dp) => dp.maps.targets()?,
        None => Default::default(),
    };
    let routes = nl.route_dump(RTPROT_POLICYROUTE, tables).await?;
    let (ip_rules, foreign_rules) = nl.rule_dump(RTPROT_POLICYROUTE).await?;
    let dataplane = match &installed.dataplane {
        None => None,
        Some(dp) => Some(ObservedDataplane {
            id: dp.rules_map_id,
            capacity: dp.maps.capacity()?,
            shapes: dp.maps.live_shapes()?,
            epoch: dp.maps.epoch()?,
        }),
    };
    Ok(Observed {
        down: links
            .iter()
            .filter(|l| !l.up)
            .map(|l| l.name.clone())
            .collect(),
        links: index_of,
        frames: links
            .iter()
            .filter(|l| l.frames != Frames::Ethernet)
            .map(|l| (l.name.clone(), l.frames))
            .collect(),
        addresses,
        ip_rules: ip_rules.into_iter().collect(),
        routes: routes.owned.into_iter().collect(),
        foreign_routes: routes.foreign,
        foreign_rules,
        kernel_prefixes: routes.kernel.into_iter().collect(),
        attachments,
        dataplane,
        netns_cookie: installed.netns_cookie,
        tcx: installed.tcx,
        targets,
        checks: Default::default(),
        now_ns: monotonic_ns(),
    })
}

/// CLOCK_MONOTONIC in ns: the clock of the classifier's `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Addresses a device answers on that route anywhere (link-local ones do not).
async fn routable_addresses(nl: &Netlink, ifindex: u32) -> Result<Vec<IpAddr>, KernelError> {
    Ok(nl
        .addresses(ifindex)
        .await?
        .into_iter()
        .map(|n| n.addr())
        .filter(|a| match a {
            IpAddr::V4(v4) => !v4.is_link_local(),
            IpAddr::V6(v6) => !v6.is_unicast_link_local(),
        })
        .collect())
}
