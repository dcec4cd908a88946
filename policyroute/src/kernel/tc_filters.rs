//! Classic tc hooks for kernels without tcx (before Linux 6.6): the `clsact` qdisc and
//! `cls_bpf` filters in direct-action mode, over a blocking rtnetlink socket (never `tc`).
//!
//! A filter holds its own reference to its program, like a tcx attachment made without a
//! link, so the dataplane outlives the `apply` process without any pin; a later process
//! finds it by dumping the device's filters and reading each one's program id.
use std::io;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::{
    tc::{TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcMessage, TcOption},
    RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// `ETH_P_ALL`: the filter sees every protocol.
const ETH_P_ALL: u16 = 0x0003;
/// `TC_H_CLSACT` / `TC_H_MIN_INGRESS` / `TC_H_MIN_EGRESS`.
const CLSACT: TcHandle = TcHandle::CLSACT;
const CLSACT_HANDLE: TcHandle = TcHandle {
    major: 0xffff,
    minor: 0,
};

/// Which side of the clsact qdisc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    fn parent(self) -> TcHandle {
        let minor = match self {
            Direction::Ingress => TcHandle::MIN_INGRESS,
            Direction::Egress => TcHandle::MIN_EGRESS,
        };
        TcHandle {
            major: 0xffff,
            minor,
        }
    }
}

/// A bpf filter found on a device: where it sits (what deleting it needs) and its program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Filter {
    pub priority: u16,
    pub handle: u32,
    pub program_id: u32,
}

/// Adds the clsact qdisc to `ifindex` unless one is there already.
pub fn ensure_clsact(ifindex: u32) -> io::Result<()> {
    let mut msg = TcMessage::with_index(ifindex as i32);
    msg.header.parent = CLSACT;
    msg.header.handle = CLSACT_HANDLE;
    msg.attributes.push(TcAttribute::Kind("clsact".into()));
    let flags = NLM_F_CREATE | NLM_F_EXCL;
    match request(RouteNetlinkMessage::NewQueueDiscipline(msg), flags) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other.map(drop),
    }
}

/// Attaches `prog_fd` (called `name`) as a direct-action bpf filter. The kernel picks the
/// priority and handle: ours is told apart by its program, not by where it sits.
pub fn attach(ifindex: u32, dir: Direction, prog_fd: u32, name: &str) -> io::Result<()> {
    ensure_clsact(ifindex)?;
    let mut msg = filter_message(ifindex, dir);
    msg.header.info = u32::from(ETH_P_ALL.to_be());
    msg.attributes.push(TcAttribute::Kind("bpf".into()));
    msg.attributes.push(TcAttribute::Options(vec![
        TcOption::Bpf(TcFilterBpfOption::ProgFd(prog_fd)),
        TcOption::Bpf(TcFilterBpfOption::ProgName(name.into())),
        TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
    ]));
    let flags = NLM_F_CREATE | NLM_F_EXCL;
    request(RouteNetlinkMessage::NewTrafficFilter(msg), flags).map(drop)
}

/// Removes one filter found by [`filters`].
pub fn detach(ifindex: u32, dir: Direction, filter: &Filter) -> io::Result<()> {
    let mut msg = filter_message(ifindex, dir);
    msg.header.handle = filter.handle.into();
    msg.header.info = (u32::from(filter.priority) << 16) | u32::from(ETH_P_ALL.to_be());
    msg.attributes.push(TcAttribute::Kind("bpf".into()));
    request(RouteNetlinkMessage::DelTrafficFilter(msg), 0).map(drop)
}

/// The bpf filters on one side of `ifindex` (none without a clsact qdisc).
pub fn filters(ifindex: u32, dir: Direction) -> io::Result<Vec<Filter>> {
    let msg = filter_message(ifindex, dir);
    let answers = match request(RouteNetlinkMessage::GetTrafficFilter(msg), NLM_F_DUMP) {
        // No clsact (or no such parent) on this device: nothing of ours can be there.
        Err(e) if [Some(libc::EINVAL), Some(libc::ENOENT)].contains(&e.raw_os_error()) => {
            return Ok(Vec::new())
        }
        other => other?,
    };
    Ok(answers.iter().filter_map(bpf_filter).collect())
}

fn filter_message(ifindex: u32, dir: Direction) -> TcMessage {
    let mut msg = TcMessage::with_index(ifindex as i32);
    msg.header.parent = dir.parent();
    msg
}

/// The program id and place of a bpf filter in a dump answer (other kinds: `None`).
fn bpf_filter(answer: &RouteNetlinkMessage) -> Option<Filter> {
    let RouteNetlinkMessage::NewTrafficFilter(msg) = answer else {
        return None;
    };
    let program_id = msg.attributes.iter().find_map(|a| match a {
        TcAttribute::Options(options) => options.iter().find_map(|o| match o {
            TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => Some(*id),
            _ => None,
        }),
        _ => None,
    })?;
    Some(Filter {
        priority: (msg.header.info >> 16) as u16,
        handle: msg.header.handle.into(),
        program_id,
    })
}

/// Sends one request and collects the answers until the ack or the end of the dump.
fn request(body: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    header.sequence_number = 1;
    let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(body));
    msg.finalize();
    let mut buf = vec![0; msg.buffer_len()];
    msg.serialize(&mut buf);
    socket.send(&buf, 0)?;
    let mut answers = Vec::new();
    loop {
        let (data, _) = socket.recv_from_full()?;
        let mut offset = 0;
        while offset < data.len() {
            let answer = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                .map_err(io::Error::other)?;
            offset += (answer.header.length as usize).next_multiple_of(4).max(1);
            match answer.payload {
                NetlinkPayload::Done(_) => return Ok(answers),
                NetlinkPayload::Error(e) if e.code.is_none() => return Ok(answers),
                NetlinkPayload::Error(e) => return Err(e.to_io()),
                NetlinkPayload::InnerMessage(m) => answers.push(m),
                _ => {}
            }
        }
    }
}
