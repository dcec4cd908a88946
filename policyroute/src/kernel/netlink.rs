//! Ip rules, routes, links and addresses through rtnetlink (never through `ip`).
//!
//! Every rule and route policyroute installs carries the routing protocol
//! [`RTPROT_POLICYROUTE`], so [`Netlink::rules`] and [`Netlink::routes`] find exactly its own
//! objects and reconciliation never touches anyone else's. What they return parses back into
//! the same [`IpRule`] / [`IpRoute`] that created it, so comparing desired and installed state
//! is plain equality. Others' objects in the way ([`ForeignRoute`], [`ForeignRule`]) keep
//! the message the kernel dumped, and only that exact message deletes them (`--adopt`).
use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use futures::{Stream, TryStreamExt};
use ipnet::IpNet;
use netlink_packet_core::{Emitable, Nla, Parseable};
use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage},
    link::{LinkAttribute, LinkFlags, LinkMessage},
    route::{
        RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope,
        RouteType, RouteVia,
    },
    rule::{RuleAction, RuleAttribute, RuleFlags, RuleMessage},
    AddressFamily,
};
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};

use crate::{
    plan::{
        foreign::{ForeignRoute, ForeignRule, NextHop},
        objects::{Frames, IpRoute, IpRule, KernelPrefix, LOCAL_TABLE, MAIN_TABLE},
    },
    policy::matcher::Family,
};

/// Routing protocol number tagging every rule and route policyroute installs (rtm_protocol /
/// FRA_PROTOCOL), so it finds exactly its own objects later and never touches anyone else's.
pub const RTPROT_POLICYROUTE: u8 = 211;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("opening a netlink socket: {0}")]
    Socket(std::io::Error),
    #[error("a netlink connection needs a running tokio runtime")]
    NoRuntime,
    /// EEXIST: the object is already installed (idempotent callers may ignore it).
    #[error("{what}: already exists")]
    Exists { what: String },
    /// ENOENT / ESRCH: nothing matched (idempotent callers may ignore it on delete).
    #[error("{what}: no such object")]
    NotFound { what: String },
    /// Any other errno from the kernel (`source.raw_os_error()` has it).
    #[error("{what}: {source}")]
    Kernel {
        what: String,
        source: std::io::Error,
    },
    /// The conversation itself failed (unexpected or undecodable message).
    #[error("{what}: {source}")]
    Protocol {
        what: String,
        source: rtnetlink::Error,
    },
    #[error("{what}: the kernel sent no answer")]
    NoAnswer { what: String },
    /// A route whose addresses do not fit its family.
    #[error("invalid route {what}")]
    Invalid { what: String },
}

/// A network interface.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// Administratively up and with carrier (IFF_UP and IFF_LOWER_UP): routes through it
    /// can be installed and carry traffic.
    pub up: bool,
    /// What its frames start with, from its link type.
    pub frames: Frames,
}

/// Link types (`ARPHRD_*`, if_arp.h) whose devices hand TC frames with an Ethernet header.
const ETHERNET_LINK_TYPES: [u16; 2] = [
    1,   // ARPHRD_ETHER: Ethernet, veth, bridge, bond, VLAN, macvlan, Wi-Fi
    772, // ARPHRD_LOOPBACK: eth_header_ops
];
/// Link types of devices without a link-layer header: TC sees the IP header at offset 0
/// (no header_ops, so nothing is pushed before the egress hook either). GRE without a
/// fixed remote (NBMA, `remote any`) is the exception: it pushes the outer IP and GRE
/// headers before egress, so egress marks there see the tunnel's own addresses.
const IP_LINK_TYPES: [u16; 8] = [
    0xfffe, // ARPHRD_NONE: tun (IFF_TUN), WireGuard, xfrm interfaces
    512,    // ARPHRD_PPP
    519,    // ARPHRD_RAWIP: cellular modems (wwan, qmi)
    768,    // ARPHRD_TUNNEL: IP-in-IP, vti
    769,    // ARPHRD_TUNNEL6: ip6tnl
    776,    // ARPHRD_SIT
    778,    // ARPHRD_IPGRE
    823,    // ARPHRD_IP6GRE
];

/// What frames of a device of link type `link_type` start with.
pub fn frames_of(link_type: u16) -> Frames {
    if ETHERNET_LINK_TYPES.contains(&link_type) {
        Frames::Ethernet
    } else if IP_LINK_TYPES.contains(&link_type) {
        Frames::Ip
    } else {
        Frames::Unsupported(link_type)
    }
}

/// What `ip route get DST [from SRC] [iif DEV] mark MARK [ipproto P sport S dport D]` asks.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RouteQuery {
    pub dst: IpAddr,
    pub src: Option<IpAddr>,
    /// Pretend the packet arrived on this interface (IPv4 then needs forwarding and `src`).
    pub iif: Option<u32>,
    pub mark: u32,
    pub proto: Option<u8>,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
}

impl RouteQuery {
    /// A locally originated packet to `dst` carrying `mark`.
    pub fn new(dst: IpAddr, mark: u32) -> Self {
        Self {
            dst,
            src: None,
            iif: None,
            mark,
            proto: None,
            sport: None,
            dport: None,
        }
    }
}

/// The kernel's routing decision for a [`RouteQuery`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
pub struct RouteAnswer {
    pub table: u32,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    pub prefsrc: Option<IpAddr>,
}

/// A connection to rtnetlink in one network namespace.
#[derive(Clone, Debug)]
pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a netlink connection in the *calling thread's current network namespace* (the
    /// socket binds to it for good) and spawns the connection task on the current tokio
    /// runtime.
    pub fn new() -> Result<Self, NetlinkError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NetlinkError::NoRuntime)?;
        let (connection, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        runtime.spawn(connection);
        Ok(Self { handle })
    }

    /// The index of the link called `name`, `None` if there is none.
    pub async fn link_index(&self, name: &str) -> Result<Option<u32>, NetlinkError> {
        let request = self.handle.link().get().match_name(name).execute();
        match collect(request, || format!("link {name}")).await {
            Ok(links) => Ok(links.first().map(|l| l.header.index)),
            // RTM_GETLINK by name answers ENODEV for a missing link.
            Err(NetlinkError::Kernel { source, .. })
                if source.raw_os_error() == Some(libc::ENODEV) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    pub async fn links(&self) -> Result<Vec<Link>, NetlinkError> {
        let links = collect(self.handle.link().get().execute(), || "dump links".into()).await?;
        Ok(links.iter().filter_map(parse_link).collect())
    }

    /// All ip rules (IPv4 and IPv6) whose FRA_PROTOCOL is `proto` and whose shape an
    /// [`IpRule`] can hold; policyroute installs no other shape.
    pub async fn rules(&self, proto: u8) -> Result<Vec<IpRule>, NetlinkError> {
        Ok(self.rule_dump(proto).await?.0)
    }

    /// The rules tagged `proto` (as [`Netlink::rules`]), and the others that have a fwmark
    /// selector, from one dump per family.
    pub async fn rule_dump(
        &self,
        proto: u8,
    ) -> Result<(Vec<IpRule>, Vec<ForeignRule>), NetlinkError> {
        let (mut rules, mut foreign) = (Vec::new(), Vec::new());
        for version in [IpVersion::V4, IpVersion::V6] {
            let dump = self.handle.rule().get(version).execute();
            let messages = collect(dump, || "dump rules".into()).await?;
            for m in &messages {
                if rule_protocol(m) == Some(proto) {
                    rules.extend(parse_rule(m));
                } else {
                    foreign.extend(parse_foreign_rule(m));
                }
            }
        }
        Ok((rules, foreign))
    }

    /// Adds `rule` tagged with `proto`; [`NetlinkError::Exists`] if it is already there.
    pub async fn add_rule(&self, rule: &IpRule, proto: u8) -> Result<(), NetlinkError> {
        let mut request = self.handle.rule().add();
        *request.message_mut() = rule_message(&self.handle, rule, proto);
        let what = || format!("add {rule:?}");
        request.execute().await.map_err(|e| error(what(), e))
    }

    /// Deletes exactly `rule` tagged with `proto`; [`NetlinkError::NotFound`] if absent.
    pub async fn del_rule(&self, rule: &IpRule, proto: u8) -> Result<(), NetlinkError> {
        let request = self
            .handle
            .rule()
            .del(rule_message(&self.handle, rule, proto));
        let what = || format!("delete {rule:?}");
        request.execute().await.map_err(|e| error(what(), e))
    }

    /// All unicast routes (IPv4 and IPv6, all tables) whose rtm_protocol is `proto`; cached
    /// clones and multipath routes are left out.
    pub async fn routes(&self, proto: u8) -> Result<Vec<IpRoute>, NetlinkError> {
        Ok(self.route_dump(proto, &BTreeSet::new()).await?.owned)
    }

    /// The routes tagged `proto`, the destinations the kernel routes itself (see
    /// [`kernel_prefix`]), and the other routes of `tables`, from one dump per family.
    pub async fn route_dump(
        &self,
        proto: u8,
        tables: &BTreeSet<u32>,
    ) -> Result<RouteDump, NetlinkError> {
        let mut dump = RouteDump::default();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            // Without strict checking the kernel ignores every filter but the family: this
            // dumps all tables, and the protocol and tables are filtered here.
            let mut query = RouteMessage::default();
            query.header.address_family = family;
            let request = self.handle.route().get(query).execute();
            let messages = collect(request, || "dump routes".into()).await?;
            for m in &messages {
                if u8::from(m.header.protocol) == proto {
                    dump.owned.extend(parse_route(m));
                } else if tables.contains(&route_table(m)) {
                    dump.foreign.extend(parse_foreign_route(m));
                }
            }
            dump.kernel
                .extend(messages.iter().filter_map(kernel_prefix));
        }
        Ok(dump)
    }

    /// Adds `route` tagged with `proto`; [`NetlinkError::Exists`] if the table already has a
    /// route to `dst` (also with another gateway: no silent multipath).
    pub async fn add_route(&self, route: &IpRoute, proto: u8) -> Result<(), NetlinkError> {
        let request = self.handle.route().add(route_message(route, proto)?);
        let what = || format!("add {route:?}");
        request.execute().await.map_err(|e| error(what(), e))
    }

    /// Puts `route` tagged with `proto` in the place of the route with its table,
    /// destination and metric (NLM_F_REPLACE), or adds it where there is none: in one step,
    /// so the table is never without a route there.
    pub async fn replace_route(&self, route: &IpRoute, proto: u8) -> Result<(), NetlinkError> {
        let request = self
            .handle
            .route()
            .add(route_message(route, proto)?)
            .replace();
        let what = || format!("replace with {route:?}");
        request.execute().await.map_err(|e| error(what(), e))
    }

    /// Puts back `route` as it was dumped, in the place of whatever took it.
    pub async fn restore_route(&self, route: &ForeignRoute) -> Result<(), NetlinkError> {
        let what = || format!("restore {route:?}");
        let message = decode::<RouteMessage>(&route.message, what)?;
        let request = self.handle.route().add(message).replace();
        request.execute().await.map_err(|e| error(what(), e))
    }

    /// Deletes exactly the foreign `route` (by the message it was dumped as);
    /// [`NetlinkError::NotFound`] if it is gone.
    pub async fn del_foreign_route(&self, route: &ForeignRoute) -> Result<(), NetlinkError> {
        let what = || format!("delete {route:?}");
        let message = decode::<RouteMessage>(&route.message, what)?;
        let request = self.handle.route().del(message);
        request.execute().await.map_err(|e| error(what(), e))
    }

    /// Deletes exactly the foreign `rule` (by the message it was dumped as);
    /// [`NetlinkError::NotFound`] if it is gone.
    pub async fn del_foreign_rule(&self, rule: &ForeignRule) -> Result<(), NetlinkError> {
        let what = || format!("delete {rule:?}");
        let message = decode::<RuleMessage>(&rule.message, what)?;
        let request = self.handle.rule().del(message);
        request.execute().await.map_err(|e| error(what(), e))
    }

    /// Deletes exactly `route` tagged with `proto`; [`NetlinkError::NotFound`] if absent.
    pub async fn del_route(&self, route: &IpRoute, proto: u8) -> Result<(), NetlinkError> {
        let request = self.handle.route().del(route_message(route, proto)?);
        let what = || format!("delete {route:?}");
        request.execute().await.map_err(|e| error(what(), e))
    }

    /// RTM_GETROUTE as `ip route get` does it: the table, gateway, output device and preferred
    /// source the kernel chose for a packet like `q`.
    pub async fn route_get(&self, q: &RouteQuery) -> Result<RouteAnswer, NetlinkError> {
        let what = || format!("route get {q:?}");
        let answers = collect(self.handle.route().get(query_message(q)).execute(), what).await?;
        let answer = answers
            .first()
            .ok_or_else(|| NetlinkError::NoAnswer { what: what() })?;
        Ok(parse_answer(answer))
    }

    /// Addresses configured on link `index`, with their prefix length (host bits kept).
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpNet>, NetlinkError> {
        let dump = self.handle.address().get().set_link_index_filter(index);
        let messages = collect(dump.execute(), || format!("addresses of link {index}")).await?;
        Ok(messages.iter().filter_map(parse_address).collect())
    }
}

/// One dump of every table's routes, sorted by whose they are.
#[derive(Debug, Default)]
pub struct RouteDump {
    /// Those tagged with the protocol asked for.
    pub owned: Vec<IpRoute>,
    /// The destinations the kernel routes itself (see [`kernel_prefix`]).
    pub kernel: Vec<KernelPrefix>,
    /// The others of the tables asked for (cached clones left out).
    pub foreign: Vec<ForeignRoute>,
}

/// A dumped message as bytes: what a foreign object keeps to be deleted by.
fn encode(message: &impl Emitable) -> Vec<u8> {
    let mut bytes = vec![0; message.buffer_len()];
    message.emit(&mut bytes);
    bytes
}

fn decode<T: Parseable<[u8]>>(bytes: &[u8], what: impl Fn() -> String) -> Result<T, NetlinkError> {
    T::parse(bytes).map_err(|e| NetlinkError::Invalid {
        what: format!("{}: {e}", what()),
    })
}

/// Drains a response stream, naming the request in the error.
async fn collect<T>(
    stream: impl Stream<Item = Result<T, rtnetlink::Error>>,
    what: impl Fn() -> String,
) -> Result<Vec<T>, NetlinkError> {
    stream.try_collect().await.map_err(|e| error(what(), e))
}

/// Sorts kernel errors into what callers act on: exists, not found, anything else.
fn error(what: String, e: rtnetlink::Error) -> NetlinkError {
    let rtnetlink::Error::NetlinkError(message) = e else {
        return NetlinkError::Protocol { what, source: e };
    };
    match message.raw_code().abs() {
        libc::EEXIST => NetlinkError::Exists { what },
        // Rules answer ENOENT, routes ESRCH.
        libc::ENOENT | libc::ESRCH => NetlinkError::NotFound { what },
        _ => NetlinkError::Kernel {
            what,
            source: message.to_io(),
        },
    }
}

fn address_family(family: Family) -> AddressFamily {
    match family {
        Family::V4 => AddressFamily::Inet,
        Family::V6 => AddressFamily::Inet6,
    }
}

fn family_of(family: AddressFamily) -> Option<Family> {
    match family {
        AddressFamily::Inet => Some(Family::V4),
        AddressFamily::Inet6 => Some(Family::V6),
        _ => None,
    }
}

fn parse_link(link: &LinkMessage) -> Option<Link> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(Link {
            index: link.header.index,
            name: name.clone(),
            up: link
                .header
                .flags
                .contains(LinkFlags::Up | LinkFlags::LowerUp),
            frames: frames_of(u16::from(link.header.link_layer_type)),
        }),
        _ => None,
    })
}

fn parse_address(message: &AddressMessage) -> Option<IpNet> {
    // IFA_LOCAL is the local end on point-to-point links, where IFA_ADDRESS is the peer;
    // IPv6 usually sends IFA_ADDRESS only.
    let find = |local: bool| {
        message.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(ip) if local => Some(*ip),
            AddressAttribute::Address(ip) if !local => Some(*ip),
            _ => None,
        })
    };
    let ip = find(true).or_else(|| find(false))?;
    IpNet::new(ip, message.header.prefix_len).ok()
}

/// The message that adds (or deletes) exactly `rule`. rtnetlink's request builder covers
/// the family, table, action, priority, fwmark and source; it lacks FRA_FWMASK,
/// FRA_SUPPRESS_PREFIXLEN and FRA_PROTOCOL, which are added by hand.
fn rule_message(handle: &Handle, rule: &IpRule, proto: u8) -> RuleMessage {
    let request = handle
        .rule()
        .add()
        .table_id(rule.table)
        // The default action is Unspec, which makes lookups fail.
        .action(RuleAction::ToTable)
        // Always explicit: without it the kernel picks a priority of its own.
        .priority(rule.priority);
    let request = match rule.fwmark {
        Some((mark, _)) => request.fw_mark(mark),
        None => request,
    };
    let mut message = match (rule.family, rule.src) {
        (Family::V4, Some(IpNet::V4(src))) => {
            let mut r = request.v4().source_prefix(src.addr(), src.prefix_len());
            r.message_mut().clone()
        }
        (Family::V6, Some(IpNet::V6(src))) => {
            let mut r = request.v6().source_prefix(src.addr(), src.prefix_len());
            r.message_mut().clone()
        }
        (Family::V4, _) => request.v4().message_mut().clone(),
        (Family::V6, _) => request.v6().message_mut().clone(),
    };
    let attributes = &mut message.attributes;
    attributes.push(RuleAttribute::Protocol(RouteProtocol::from(proto)));
    if let Some((_, mask)) = rule.fwmark {
        attributes.push(RuleAttribute::FwMask(mask));
    }
    if let Some(len) = rule.suppress_prefixlen {
        attributes.push(RuleAttribute::SuppressPrefixLen(len));
    }
    message
}

fn rule_protocol(message: &RuleMessage) -> Option<u8> {
    message.attributes.iter().find_map(|a| match a {
        RuleAttribute::Protocol(p) => Some(u8::from(*p)),
        _ => None,
    })
}

/// The [`IpRule`] a dumped rule is, `None` if it has a condition or action an `IpRule`
/// cannot hold (reporting it anyway would make deleting it delete something else).
fn parse_rule(message: &RuleMessage) -> Option<IpRule> {
    parse_any_rule(message)?.as_ip_rule()
}

/// The kernel sends FRA_FWMARK only when the value is non-zero and FRA_FWMASK whenever a
/// mark is set, so `fwmark 0/0xff` comes back as a mask alone.
fn fwmark(mark: Option<u32>, mask: Option<u32>) -> Option<(u32, u32)> {
    match (mark, mask) {
        (None, None) => None,
        _ => Some((mark.unwrap_or(0), mask.unwrap_or(u32::MAX))),
    }
}

/// The message that adds (or deletes) exactly `route`, built with rtnetlink's builder.
fn route_message(route: &IpRoute, proto: u8) -> Result<RouteMessage, NetlinkError> {
    let mut builder = RouteMessageBuilder::<IpAddr>::new()
        .table_id(route.table)
        .protocol(RouteProtocol::from(proto))
        // As iproute2: a route without gateway reaches only the link. IPv4 deletes match
        // the scope too, which this keeps the same as at creation.
        .scope(match route.gateway {
            Some(_) => RouteScope::Universe,
            None => RouteScope::Link,
        })
        .output_interface(route.oif);
    // The builder takes the family from the first address it is given, and a default
    // device route gives none.
    builder.get_mut().header.address_family = address_family(route.family);
    if route.dst.prefix_len() > 0 {
        builder = builder
            .destination_prefix(route.dst.addr(), route.dst.prefix_len())
            .map_err(|e| invalid(route, e))?;
    }
    if let Some(gateway) = route.gateway {
        builder = builder.gateway(gateway).map_err(|e| invalid(route, e))?;
    }
    Ok(builder.build())
}

fn invalid(route: &IpRoute, e: impl std::fmt::Display) -> NetlinkError {
    NetlinkError::Invalid {
        what: format!("{route:?}: {e}"),
    }
}

/// The [`IpRoute`] a dumped route is, `None` for cached clones, non-unicast routes and
/// multipath routes (no single RTA_OIF).
fn kernel_prefix(message: &RouteMessage) -> Option<KernelPrefix> {
    let header = &message.header;
    if header.flags.contains(RouteFlags::Cloned) {
        return None;
    }
    let family = family_of(header.address_family)?;
    let table = route_table(message);
    let mut dst = None;
    let mut oif = None;
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Destination(a) => dst = Some(route_ip(a)?),
            RouteAttribute::Oif(i) => oif = Some(*i),
            _ => {}
        }
    }
    if table != MAIN_TABLE && table != LOCAL_TABLE {
        return None;
    }
    let dst = dst.unwrap_or_else(|| unspecified(family));
    Some(KernelPrefix {
        table,
        dst: IpNet::new(dst, header.destination_prefix_length).ok()?,
        oif,
    })
}

/// A route's table: RTA_TABLE, which holds ids above 255 too, else the header's.
fn route_table(message: &RouteMessage) -> u32 {
    message
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(message.header.table))
}

/// Any route that is not a cached clone, as far as `ip route` shows it, with the message
/// that deletes it.
fn parse_foreign_route(message: &RouteMessage) -> Option<ForeignRoute> {
    let header = &message.header;
    if header.flags.contains(RouteFlags::Cloned) {
        return None;
    }
    let family = family_of(header.address_family)?;
    let (mut dst, mut metric) = (None, 0);
    let mut hop = NextHop {
        gateway: None,
        oif: None,
    };
    let mut nexthops = Vec::new();
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Destination(a) => dst = Some(route_ip(a)?),
            RouteAttribute::Priority(p) => metric = *p,
            RouteAttribute::MultiPath(hops) => nexthops.extend(hops.iter().map(|h| NextHop {
                gateway: h.attributes.iter().find_map(next_hop_gateway),
                oif: Some(h.interface_index),
            })),
            RouteAttribute::Oif(index) => hop.oif = Some(*index),
            a => hop.gateway = hop.gateway.or(next_hop_gateway(a)),
        }
    }
    if hop.gateway.is_some() || hop.oif.is_some() {
        nexthops.insert(0, hop);
    }
    let dst = dst.unwrap_or_else(|| unspecified(family));
    Some(ForeignRoute {
        family,
        table: route_table(message),
        kind: route_type(header.kind),
        dst: IpNet::new(dst, header.destination_prefix_length).ok()?,
        nexthops,
        metric,
        protocol: header.protocol.into(),
        message: encode(message),
    })
}

fn next_hop_gateway(attribute: &RouteAttribute) -> Option<IpAddr> {
    match attribute {
        RouteAttribute::Gateway(a) => route_ip(a),
        RouteAttribute::Via(v) => via_ip(v),
        _ => None,
    }
}

/// As `ip -d route` names route types.
fn route_type(kind: RouteType) -> &'static str {
    match kind {
        RouteType::Unicast => "unicast",
        RouteType::Local => "local",
        RouteType::Broadcast => "broadcast",
        RouteType::Anycast => "anycast",
        RouteType::Multicast => "multicast",
        RouteType::BlackHole => "blackhole",
        RouteType::Unreachable => "unreachable",
        RouteType::Prohibit => "prohibit",
        RouteType::Throw => "throw",
        RouteType::Nat => "nat",
        _ => "unknown",
    }
}

/// A rule with a fwmark selector (the only kind that can catch marked traffic by its
/// mark). `None` for a rule without one.
fn parse_foreign_rule(message: &RuleMessage) -> Option<ForeignRule> {
    parse_any_rule(message).filter(|r| r.fwmark.is_some())
}

/// Any dumped rule, with the selectors beyond what an [`IpRule`] holds as `ip rule` prints
/// them, and the message that deletes it.
fn parse_any_rule(message: &RuleMessage) -> Option<ForeignRule> {
    let header = &message.header;
    let mut selectors = Vec::new();
    if header.tos != 0 {
        selectors.push(format!("tos {:#x}", header.tos));
    }
    let flags = header.flags;
    if flags.intersects(RuleFlags::IifDetached | RuleFlags::OifDetached) {
        selectors.push("[detached]".into());
    }
    if flags.contains(RuleFlags::Unresolved) {
        selectors.push("[unresolved]".into());
    }
    let mut rule = ForeignRule {
        family: family_of(header.family)?,
        priority: 0, // the kernel leaves FRA_PRIORITY out for 0
        invert: flags.contains(RuleFlags::Invert),
        src: None,
        fwmark: None,
        selectors: Vec::new(),
        action: match header.action {
            RuleAction::ToTable => "lookup",
            RuleAction::Goto => "goto",
            RuleAction::Nop => "nop",
            RuleAction::Blackhole => "blackhole",
            RuleAction::Unreachable => "unreachable",
            RuleAction::Prohibit => "prohibit",
            _ => "unknown",
        },
        table: header.table.into(),
        goto: None,
        suppress_prefixlen: None,
        protocol: 0,
        message: encode(message),
    };
    let (mut mark, mut mask) = (None, None);
    for attribute in &message.attributes {
        let selector = match attribute {
            RuleAttribute::Priority(p) => {
                rule.priority = *p;
                continue;
            }
            RuleAttribute::Table(t) => {
                rule.table = *t;
                continue;
            }
            RuleAttribute::FwMark(v) => {
                mark = Some(*v);
                continue;
            }
            RuleAttribute::FwMask(v) => {
                mask = Some(*v);
                continue;
            }
            RuleAttribute::Source(ip) => {
                rule.src = IpNet::new(*ip, header.src_len).ok();
                continue;
            }
            RuleAttribute::Goto(p) => {
                rule.goto = Some(*p);
                continue;
            }
            // The kernel sends -1 for "not set".
            RuleAttribute::SuppressPrefixLen(len) => {
                rule.suppress_prefixlen = (*len != u32::MAX).then_some(*len);
                continue;
            }
            RuleAttribute::SuppressIfGroup(u32::MAX) => continue,
            RuleAttribute::Protocol(p) => {
                rule.protocol = u8::from(*p);
                continue;
            }
            RuleAttribute::Destination(ip) => {
                format!("to {}", IpNet::new(*ip, header.dst_len).ok()?)
            }
            RuleAttribute::Iifname(dev) => format!("iif {dev}"),
            RuleAttribute::Oifname(dev) => format!("oif {dev}"),
            RuleAttribute::L3MDev(true) => "l3mdev".into(),
            RuleAttribute::UidRange(r) => format!("uidrange {}-{}", r.start, r.end),
            RuleAttribute::IpProtocol(p) => format!("ipproto {}", u8::from(*p)),
            RuleAttribute::SourcePortRange(r) => format!("sport {}-{}", r.start, r.end),
            RuleAttribute::DestinationPortRange(r) => format!("dport {}-{}", r.start, r.end),
            RuleAttribute::TunId(id) => format!("tun_id {id}"),
            RuleAttribute::SuppressIfGroup(group) => format!("suppress_ifgroup {group}"),
            // Nothing an `IpRule` could hold, whatever it is.
            other => format!("(attribute {})", other.kind()),
        };
        selectors.push(selector);
    }
    rule.fwmark = fwmark(mark, mask);
    if rule.action != "lookup" {
        rule.table = 0;
    }
    rule.selectors = selectors;
    Some(rule)
}

fn parse_route(message: &RouteMessage) -> Option<IpRoute> {
    let header = &message.header;
    if header.kind != RouteType::Unicast || header.flags.contains(RouteFlags::Cloned) {
        return None;
    }
    let family = family_of(header.address_family)?;
    let (mut dst, mut gateway, mut oif) = (None, None, None);
    let mut table = u32::from(header.table);
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Destination(a) => dst = Some(route_ip(a)?),
            RouteAttribute::Gateway(a) => gateway = Some(route_ip(a)?),
            RouteAttribute::Via(v) => gateway = Some(via_ip(v)?),
            RouteAttribute::Oif(index) => oif = Some(*index),
            RouteAttribute::Table(t) => table = *t,
            _ => {}
        }
    }
    let dst = dst.unwrap_or_else(|| unspecified(family));
    Some(IpRoute {
        family,
        table,
        dst: IpNet::new(dst, header.destination_prefix_length).ok()?,
        gateway,
        oif: oif?,
    })
}

fn unspecified(family: Family) -> IpAddr {
    match family {
        Family::V4 => Ipv4Addr::UNSPECIFIED.into(),
        Family::V6 => Ipv6Addr::UNSPECIFIED.into(),
    }
}

fn route_ip(address: &RouteAddress) -> Option<IpAddr> {
    match address {
        RouteAddress::Inet(ip) => Some((*ip).into()),
        RouteAddress::Inet6(ip) => Some((*ip).into()),
        _ => None,
    }
}

fn via_ip(via: &RouteVia) -> Option<IpAddr> {
    match via {
        RouteVia::Inet(ip) => Some((*ip).into()),
        RouteVia::Inet6(ip) => Some((*ip).into()),
        _ => None,
    }
}

fn full_length(ip: &IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn query_message(q: &RouteQuery) -> RouteMessage {
    let mut message = RouteMessage::default();
    let header = &mut message.header;
    header.address_family = address_family(Family::of(&q.dst));
    header.destination_prefix_length = full_length(&q.dst);
    header.source_prefix_length = q.src.as_ref().map_or(0, full_length);
    // Report the id of the table that matched, not that of the cached route.
    header.flags = RouteFlags::LookupTable;
    let attributes = &mut message.attributes;
    attributes.push(RouteAttribute::Destination(q.dst.into()));
    attributes.extend(q.src.map(|ip| RouteAttribute::Source(ip.into())));
    attributes.extend(q.iif.map(RouteAttribute::Iif));
    attributes.push(RouteAttribute::Mark(q.mark));
    // RTA_IP_PROTO / RTA_SPORT / RTA_DPORT need kernel >= 4.17.
    attributes.extend(q.proto.map(RouteAttribute::IpProto));
    attributes.extend(q.sport.map(RouteAttribute::Sport));
    attributes.extend(q.dport.map(RouteAttribute::Dport));
    message
}

fn parse_answer(message: &RouteMessage) -> RouteAnswer {
    let mut answer = RouteAnswer {
        table: message.header.table.into(),
        gateway: None,
        oif: None,
        prefsrc: None,
    };
    for attribute in &message.attributes {
        match attribute {
            RouteAttribute::Table(t) => answer.table = *t,
            RouteAttribute::Gateway(a) => answer.gateway = route_ip(a),
            RouteAttribute::Via(v) => answer.gateway = via_ip(v),
            RouteAttribute::Oif(index) => answer.oif = Some(*index),
            RouteAttribute::PrefSource(a) => answer.prefsrc = route_ip(a),
            _ => {}
        }
    }
    answer
}
