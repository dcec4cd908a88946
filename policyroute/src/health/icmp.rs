//! ICMP echo probes over raw sockets. Ping sockets (`SOCK_DGRAM`) would spare the parsing,
//! but fresh network namespaces disable them (`net.ipv4.ping_group_range = 1 0`).
//!
//! Every raw socket sees every ICMP packet of its device, so replies are told apart by
//! identifier, sequence number and source. The socket is never connected: connect() would
//! run the cgroup connect hooks of policyroute itself.
use std::{
    collections::HashMap,
    io,
    mem::MaybeUninit,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
};

use socket2::{Protocol, SockAddr, Socket, Type};
use tokio::{
    io::{unix::AsyncFd, Interest},
    time::{sleep_until, Instant},
};

use super::{
    probe::{self, Outcome, ProbeError, Round},
    Family,
};

const ECHO_REPLY_V4: u8 = 0;
const UNREACHABLE_V4: u8 = 3;
const ECHO_REQUEST_V4: u8 = 8;
const TIME_EXCEEDED_V4: u8 = 11;
const PARAMETER_PROBLEM_V4: u8 = 12;
const UNREACHABLE_V6: u8 = 1;
const TIME_EXCEEDED_V6: u8 = 3;
const PARAMETER_PROBLEM_V6: u8 = 4;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;

const PROTO_ICMP: u8 = 1;
const PROTO_ICMPV6: u8 = 58;

/// `ICMP_FILTER` (level `SOL_RAW`) and `ICMP6_FILTER` (level `IPPROTO_ICMPV6`): bit n set
/// drops type n before it reaches the socket. libc does not define them.
const ICMP_FILTER: libc::c_int = 1;
const ICMP6_FILTER: libc::c_int = 1;

const PAYLOAD: &[u8] = b"policyroute health check";

/// A message of the probed target or about a probe: echo reply or error.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Reply {
    Echo {
        from: IpAddr,
        ident: u16,
        seq: u16,
    },
    /// `from` says the echo request `ident`/`seq` to `to` failed.
    Error {
        from: IpAddr,
        to: IpAddr,
        ident: u16,
        seq: u16,
        what: String,
    },
}

/// Sends `count` echo requests to every target and reports their answers and errors
/// until all are settled or the round's timeout.
pub(super) async fn round(round: &Round, ident: u16, first_seq: u16) -> Result<(), ProbeError> {
    let spec = &round.spec;
    let socket = open(spec.family, spec)?;
    let mut pending: HashMap<u16, (IpAddr, Instant)> = HashMap::new();
    let mut seq = first_seq;
    let mut batch = 0;
    loop {
        let sending = batch < spec.count;
        tokio::select! {
            _ = sleep_until(round.deadline()) => return Ok(()),
            _ = sleep_until(round.send_time(batch)), if sending => {
                for &target in &spec.targets {
                    send(round, socket.get_ref(), target, ident, seq, &mut pending);
                    seq = seq.wrapping_add(1);
                }
                batch += 1;
            }
            received = receive(&socket, spec.family) => match received {
                Ok(Some(reply)) => settle(round, &mut pending, reply, ident),
                Ok(None) => {}
                Err(e) => {
                    // The probes still pending time out as lost.
                    tracing::debug!("health check of {} ({}): icmp receive: {e}", spec.gateway, spec.family);
                    return Ok(());
                }
            },
        }
        if batch >= spec.count && pending.is_empty() {
            return Ok(());
        }
    }
}

fn open(family: Family, spec: &super::CheckSpec) -> Result<AsyncFd<Socket>, ProbeError> {
    let (protocol, kind) = match family {
        Family::V4 => (Protocol::ICMPV4, "raw ICMP"),
        Family::V6 => (Protocol::ICMPV6, "raw ICMPv6"),
    };
    let socket = probe::socket(spec, Type::RAW, protocol, kind)?;
    let wrap = |source| ProbeError::Socket {
        kind,
        dev: spec.dev.clone(),
        source,
    };
    filter(&socket, family).map_err(wrap)?;
    // SAFETY: the Socket owns its descriptor, keeps it open until it is dropped with the
    // AsyncFd, and nothing here swaps it for another.
    unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }
        .map_err(|e| wrap(e.into()))
}

/// Lets only echo replies and the errors that can quote an echo request reach the socket,
/// so a busy router does not wake the check for every ICMP packet.
fn filter(socket: &Socket, family: Family) -> io::Result<()> {
    match family {
        Family::V4 => {
            let pass = [
                ECHO_REPLY_V4,
                UNREACHABLE_V4,
                TIME_EXCEEDED_V4,
                PARAMETER_PROBLEM_V4,
            ];
            let blocked: u32 = pass.iter().fold(!0, |m, t| m & !(1 << t));
            set_option(socket, libc::SOL_RAW, ICMP_FILTER, &blocked)
        }
        Family::V6 => {
            let pass = [
                ECHO_REPLY_V6,
                UNREACHABLE_V6,
                TIME_EXCEEDED_V6,
                PARAMETER_PROBLEM_V6,
            ];
            let mut blocked = [!0u32; 8];
            for t in pass {
                blocked[usize::from(t >> 5)] &= !(1 << (t & 31));
            }
            set_option(socket, libc::IPPROTO_ICMPV6, ICMP6_FILTER, &blocked)
        }
    }
}

fn set_option<T>(
    socket: &Socket,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` points to a live `T` of the size passed; the kernel only reads it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn send(
    round: &Round,
    socket: &Socket,
    target: IpAddr,
    ident: u16,
    seq: u16,
    pending: &mut HashMap<u16, (IpAddr, Instant)>,
) {
    let packet = echo_request(Family::of(&target), ident, seq);
    let sent = Instant::now();
    match socket.send_to(&packet, &SockAddr::from(SocketAddr::new(target, 0))) {
        Ok(_) => {
            pending.insert(seq, (target, sent));
        }
        Err(e) => round.report(Outcome::Failed(format!("{target}: cannot send: {e}"))),
    }
}

/// Settles the pending probe `reply` is about, if it is one of this round's.
fn settle(round: &Round, pending: &mut HashMap<u16, (IpAddr, Instant)>, reply: Reply, ours: u16) {
    let outcome = match reply {
        Reply::Echo { from, ident, seq } if ident == ours => {
            take(pending, seq, from).map(|(_, sent)| Outcome::Answer(sent.elapsed()))
        }
        Reply::Error {
            from,
            to,
            ident,
            seq,
            what,
        } if ident == ours => {
            take(pending, seq, to).map(|_| Outcome::Failed(format!("{to}: {what} from {from}")))
        }
        _ => None,
    };
    if let Some(outcome) = outcome {
        round.report(outcome);
    }
}

/// The pending probe `seq` if it went to `target`.
fn take(
    pending: &mut HashMap<u16, (IpAddr, Instant)>,
    seq: u16,
    target: IpAddr,
) -> Option<(IpAddr, Instant)> {
    if pending.get(&seq)?.0 != target {
        return None;
    }
    pending.remove(&seq)
}

/// The next ICMP message on the socket, `None` if it is none of ours to look at.
async fn receive(socket: &AsyncFd<Socket>, family: Family) -> io::Result<Option<Reply>> {
    let mut buf = [0u8; 2048];
    loop {
        let mut ready = socket.readable().await?;
        if let Ok(received) = ready.try_io(|s| recv_from(s.get_ref(), &mut buf)) {
            let (n, from) = received?;
            return Ok(match family {
                Family::V4 => parse_v4(&buf[..n]),
                Family::V6 => from.and_then(|from| parse_v6(&buf[..n], from)),
            });
        }
    }
}

fn recv_from(socket: &Socket, buf: &mut [u8]) -> io::Result<(usize, Option<IpAddr>)> {
    // SAFETY: recvfrom(2) writes only initialised bytes, so lending the initialised buffer
    // as maybe-uninitialised memory cannot leave uninitialised bytes in it.
    let uninit = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
    let (n, from) = socket.recv_from(uninit)?;
    Ok((n, from.as_socket().map(|a| a.ip())))
}

/// An echo request. ICMPv4 carries its checksum; the kernel fills the ICMPv6 one (it needs
/// the source address, which the route picks).
pub(crate) fn echo_request(family: Family, ident: u16, seq: u16) -> Vec<u8> {
    let kind = match family {
        Family::V4 => ECHO_REQUEST_V4,
        Family::V6 => ECHO_REQUEST_V6,
    };
    let mut packet = vec![kind, 0, 0, 0];
    packet.extend_from_slice(&ident.to_be_bytes());
    packet.extend_from_slice(&seq.to_be_bytes());
    packet.extend_from_slice(PAYLOAD);
    if family == Family::V4 {
        let sum = checksum(&packet);
        packet[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    packet
}

/// The Internet checksum (RFC 1071).
pub(crate) fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4 packet as a raw ICMP socket receives it, IP header included.
pub(crate) fn parse_v4(packet: &[u8]) -> Option<Reply> {
    let header = ipv4_header(packet)?;
    let from = IpAddr::V4(ipv4_at(packet, 12)?);
    let icmp = packet.get(header..)?;
    let (kind, code) = (*icmp.first()?, *icmp.get(1)?);
    match kind {
        ECHO_REPLY_V4 => {
            let (ident, seq) = ident_seq(icmp)?;
            Some(Reply::Echo { from, ident, seq })
        }
        UNREACHABLE_V4 | TIME_EXCEEDED_V4 | PARAMETER_PROBLEM_V4 => {
            let quoted = icmp.get(8..)?;
            let request = quoted.get(ipv4_header(quoted)?..)?;
            if *request.first()? != ECHO_REQUEST_V4 {
                return None;
            }
            let (ident, seq) = ident_seq(request)?;
            Some(Reply::Error {
                from,
                to: IpAddr::V4(ipv4_at(quoted, 16)?),
                ident,
                seq,
                what: describe(kind == UNREACHABLE_V4, kind == TIME_EXCEEDED_V4, code),
            })
        }
        _ => None,
    }
}

/// An ICMPv6 message from `from` as a raw socket receives it, without the IPv6 header.
pub(crate) fn parse_v6(icmp: &[u8], from: IpAddr) -> Option<Reply> {
    let (kind, code) = (*icmp.first()?, *icmp.get(1)?);
    match kind {
        ECHO_REPLY_V6 => {
            let (ident, seq) = ident_seq(icmp)?;
            Some(Reply::Echo { from, ident, seq })
        }
        UNREACHABLE_V6 | TIME_EXCEEDED_V6 | PARAMETER_PROBLEM_V6 => {
            // The quoted request: its IPv6 header, then (our requests have no extension
            // headers) the ICMPv6 header.
            let quoted = icmp.get(8..)?;
            if quoted.first()? >> 4 != 6 || *quoted.get(6)? != PROTO_ICMPV6 {
                return None;
            }
            let to: [u8; 16] = quoted.get(24..40)?.try_into().ok()?;
            let request = quoted.get(40..)?;
            if *request.first()? != ECHO_REQUEST_V6 {
                return None;
            }
            let (ident, seq) = ident_seq(request)?;
            Some(Reply::Error {
                from,
                to: IpAddr::V6(Ipv6Addr::from(to)),
                ident,
                seq,
                what: describe(kind == UNREACHABLE_V6, kind == TIME_EXCEEDED_V6, code),
            })
        }
        _ => None,
    }
}

fn describe(unreachable: bool, time_exceeded: bool, code: u8) -> String {
    let what = if unreachable {
        "destination unreachable"
    } else if time_exceeded {
        "time exceeded"
    } else {
        "parameter problem"
    };
    format!("{what} (code {code})")
}

/// The length of the IPv4 header `packet` starts with, if it carries ICMP.
fn ipv4_header(packet: &[u8]) -> Option<usize> {
    let first = *packet.first()?;
    let len = usize::from(first & 0x0f) * 4;
    let icmp = first >> 4 == 4 && *packet.get(9)? == PROTO_ICMP;
    (icmp && len >= 20 && packet.len() >= len).then_some(len)
}

fn ipv4_at(packet: &[u8], offset: usize) -> Option<Ipv4Addr> {
    let octets: [u8; 4] = packet.get(offset..offset + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(octets))
}

/// Identifier and sequence number of an echo message.
fn ident_seq(icmp: &[u8]) -> Option<(u16, u16)> {
    let b = icmp.get(4..8)?;
    Some((
        u16::from_be_bytes([b[0], b[1]]),
        u16::from_be_bytes([b[2], b[3]]),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, proto, 0, 0];
        p.extend_from_slice(&src);
        p.extend_from_slice(&dst);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn checksum_of_rfc1071_example() {
        // RFC 1071, section 3: the sum of these words is ddf2, so the checksum is 220d.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn v4_request_checksums_to_zero() {
        let packet = echo_request(Family::V4, 0x1234, 7);
        assert_eq!(&packet[..2], &[8, 0]);
        assert_eq!(&packet[4..8], &[0x12, 0x34, 0, 7]);
        assert_eq!(checksum(&packet), 0);
    }

    #[test]
    fn v6_request_leaves_checksum_to_kernel() {
        let packet = echo_request(Family::V6, 1, 2);
        assert_eq!(&packet[..8], &[128, 0, 0, 0, 0, 1, 0, 2]);
    }

    #[test]
    fn v4_echo_reply() {
        let mut icmp = echo_request(Family::V4, 0xabcd, 9);
        icmp[0] = ECHO_REPLY_V4;
        let packet = ipv4(PROTO_ICMP, [198, 18, 0, 53], [192, 0, 2, 1], &icmp);
        assert_eq!(
            parse_v4(&packet),
            Some(Reply::Echo {
                from: "198.18.0.53".parse().unwrap(),
                ident: 0xabcd,
                seq: 9
            })
        );
    }

    #[test]
    fn v4_error_quotes_the_request() {
        let request = echo_request(Family::V4, 5, 6);
        let quoted = ipv4(PROTO_ICMP, [192, 0, 2, 1], [198, 18, 0, 53], &request[..8]);
        let mut icmp = vec![UNREACHABLE_V4, 1, 0, 0, 0, 0, 0, 0];
        icmp.extend_from_slice(&quoted);
        let packet = ipv4(PROTO_ICMP, [198, 51, 100, 2], [192, 0, 2, 1], &icmp);
        assert_eq!(
            parse_v4(&packet),
            Some(Reply::Error {
                from: "198.51.100.2".parse().unwrap(),
                to: "198.18.0.53".parse().unwrap(),
                ident: 5,
                seq: 6,
                what: "destination unreachable (code 1)".into(),
            })
        );
    }

    #[test]
    fn v4_ignores_requests_and_other_protocols() {
        let request = echo_request(Family::V4, 5, 6);
        assert_eq!(parse_v4(&ipv4(PROTO_ICMP, [1; 4], [2; 4], &request)), None);
        assert_eq!(parse_v4(&ipv4(6, [1; 4], [2; 4], &request)), None);
        assert_eq!(parse_v4(&[0x45, 0, 0]), None);
    }

    #[test]
    fn v6_echo_reply_and_error() {
        let from: IpAddr = "2001:db8::2".parse().unwrap();
        let mut reply = echo_request(Family::V6, 3, 4);
        reply[0] = ECHO_REPLY_V6;
        assert_eq!(
            parse_v6(&reply, from),
            Some(Reply::Echo {
                from,
                ident: 3,
                seq: 4
            })
        );

        let target: Ipv6Addr = "2001:db8:5::53".parse().unwrap();
        let mut header = vec![0x60, 0, 0, 0, 0, 0, PROTO_ICMPV6, 64];
        header.extend_from_slice(&[0; 16]);
        header.extend_from_slice(&target.octets());
        let mut error = vec![TIME_EXCEEDED_V6, 0, 0, 0, 0, 0, 0, 0];
        error.extend_from_slice(&header);
        error.extend_from_slice(&echo_request(Family::V6, 3, 4));
        assert_eq!(
            parse_v6(&error, from),
            Some(Reply::Error {
                from,
                to: IpAddr::V6(target),
                ident: 3,
                seq: 4,
                what: "time exceeded (code 0)".into(),
            })
        );
    }
}
