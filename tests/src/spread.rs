//! Many flows at once: where each of thousands of UDP flows from a LAN host landed (one
//! datagram per source port, one listener per upstream), and how long the network takes
//! until fresh flows land where a test expects them ([`Topology::time_until`]).
use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr, UdpSocket},
    ops::Range,
    os::fd::AsRawFd,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use socket2::{Domain, Socket, Type};

use crate::topology::{Place, Receivers, Topology};

/// The source ports [`Topology::fresh_sports`] hands out, round robin. Below the
/// ephemeral range, so no socket the kernel numbers takes one of them.
pub const FRESH_SPORTS: Range<u16> = 10_000..32_000;

/// How long [`Topology::spread_udp`] waits for more datagrams after the last one came.
pub const QUIET: Duration = Duration::from_millis(300);

/// Rounds of [`Topology::spread_udp`]: flows not seen are sent again (the same 5-tuples),
/// in case the first packets were lost to neighbour resolution.
const ROUNDS: usize = 3;

/// Between two polls of [`Topology::time_until`].
const POLL_GAP: Duration = Duration::from_millis(20);

impl Topology {
    /// `n` source ports no earlier call gave out (until the round robin of
    /// [`FRESH_SPORTS`] wraps): fresh flows from the LAN hosts.
    pub fn fresh_sports(&self, n: u16) -> Range<u16> {
        let span = FRESH_SPORTS.end - FRESH_SPORTS.start;
        assert!(n <= span, "at most {span} fresh ports at once");
        let mut start = 0;
        self.next_sport
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |next| {
                start = if next + n > FRESH_SPORTS.end {
                    FRESH_SPORTS.start
                } else {
                    next
                };
                Some(start + n)
            })
            .expect("always updated");
        start..start + n
    }

    /// One UDP datagram from the LAN host `src` per source port of `sports` to
    /// `dst:dport`: where each flow landed, by source port. Flows that arrived nowhere
    /// (after [`ROUNDS`] tries, each waiting [`QUIET`] after the last arrival) are missing.
    pub fn spread_udp(
        &self,
        src: &str,
        dst: &str,
        dport: u16,
        sports: Range<u16>,
    ) -> HashMap<u16, Place> {
        let all: Vec<u16> = sports.collect();
        let mut got = HashMap::new();
        for _ in 0..ROUNDS {
            let missing: Vec<u16> = all
                .iter()
                .copied()
                .filter(|p| !got.contains_key(p))
                .collect();
            if missing.is_empty() {
                break;
            }
            got.extend(self.send_spread(src, dst, dport, &missing, QUIET));
        }
        got
    }

    /// [`Self::spread_udp`] in one round, waiting `quiet` after the last arrival: for
    /// polls, where a flow that does not arrive at once counts as lost.
    pub fn spread_udp_once(
        &self,
        src: &str,
        dst: &str,
        dport: u16,
        sports: Range<u16>,
        quiet: Duration,
    ) -> HashMap<u16, Place> {
        let all: Vec<u16> = sports.collect();
        self.send_spread(src, dst, dport, &all, quiet)
    }

    fn send_spread(
        &self,
        src: &str,
        dst: &str,
        dport: u16,
        sports: &[u16],
        quiet: Duration,
    ) -> HashMap<u16, Place> {
        let src: IpAddr = src.parse().unwrap();
        let dst: IpAddr = dst.parse().unwrap();
        let tried = self.udp_listeners(dst, dport);
        let why: Vec<String> = tried
            .iter()
            .filter_map(|(place, r)| Some(format!("{place:?}: {}", r.as_ref().err()?)))
            .collect();
        let listeners: Vec<(Place, UdpSocket)> = tried
            .into_iter()
            .filter_map(|(place, r)| Some((place, r.ok()?)))
            .collect();
        assert!(!listeners.is_empty(), "nobody owns {dst}: {why:?}");
        // Datagrams of an earlier call still on their way do not count.
        let nonce: u32 = rand::random();
        let to = SocketAddr::new(dst, dport);
        {
            let _in = self.lan.enter();
            for &sport in sports {
                let s = UdpSocket::bind((src, sport))
                    .unwrap_or_else(|e| panic!("bind {src}:{sport} in the LAN: {e}"));
                let mut payload = nonce.to_be_bytes().to_vec();
                payload.extend_from_slice(&sport.to_be_bytes());
                // An error (an unreachable route) is a lost flow like any other.
                let _ = s.send_to(&payload, to);
            }
        }
        let wanted: HashSet<u16> = sports.iter().copied().collect();
        let mut got = HashMap::new();
        let mut last = Instant::now();
        let mut pfds: Vec<libc::pollfd> = listeners
            .iter()
            .map(|(_, s)| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        while got.len() < wanted.len() {
            let left = quiet.saturating_sub(last.elapsed());
            if left.is_zero() {
                break;
            }
            // SAFETY: pfds is a valid array of pollfd.
            let n = unsafe {
                libc::poll(
                    pfds.as_mut_ptr(),
                    pfds.len() as _,
                    left.as_millis().max(1) as i32,
                )
            };
            if n <= 0 {
                continue;
            }
            for (place, sock) in &listeners {
                let mut buf = [0u8; 16];
                while let Ok((len, _)) = sock.recv_from(&mut buf) {
                    if len != 6 || buf[..4] != nonce.to_be_bytes() {
                        continue;
                    }
                    let sport = u16::from_be_bytes([buf[4], buf[5]]);
                    if wanted.contains(&sport) {
                        // The first arrival counts: the flow went there.
                        got.entry(sport).or_insert(*place);
                        last = Instant::now();
                    }
                }
            }
        }
        got
    }

    /// One [`big_udp`] listener per receiver. A bind that finds the address in use is
    /// tried again for up to a second: the listeners of the previous call are closed, but
    /// a process another test thread forks in that instant holds copies of them until it
    /// execs (the descriptors are close-on-exec).
    fn udp_listeners(&self, dst: IpAddr, dport: u16) -> Vec<(Place, std::io::Result<UdpSocket>)> {
        let start = Instant::now();
        loop {
            let tried = self.try_listeners(dst, dport, big_udp);
            let in_use = tried.iter().any(|(_, r)| {
                r.as_ref()
                    .is_err_and(|e| e.kind() == std::io::ErrorKind::AddrInUse)
            });
            if !in_use || start.elapsed() > Duration::from_secs(1) {
                return tried;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Calls `check` with `batch` fresh source ports ([`Self::fresh_sports`]) every
    /// [`POLL_GAP`] until it returns true: the time from this call to the start of that
    /// successful call (when its flows were sent), or None if `deadline` passed first.
    /// `check` sends its flows and says whether they all landed where expected, e.g. with
    /// [`Self::spread_udp_once`] and a short quiet time.
    pub fn time_until(
        &self,
        deadline: Duration,
        batch: u16,
        mut check: impl FnMut(Range<u16>) -> bool,
    ) -> Option<Duration> {
        let start = Instant::now();
        loop {
            let sent = start.elapsed();
            if sent > deadline {
                return None;
            }
            if check(self.fresh_sports(batch)) {
                return Some(sent);
            }
            std::thread::sleep(POLL_GAP);
        }
    }
}

/// A non-blocking UDP socket bound to `at` with a receive buffer for thousands of
/// datagrams (SO_RCVBUFFORCE: root, past rmem_max).
fn big_udp(at: SocketAddr) -> std::io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(at), Type::DGRAM, None)?;
    let size: libc::c_int = 32 << 20;
    // SAFETY: setsockopt with a valid int option value.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
    s.bind(&at.into())?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// How many of `flows` landed at each place.
pub fn counts(flows: &HashMap<u16, Place>) -> HashMap<Place, usize> {
    let mut n = HashMap::new();
    for p in flows.values() {
        *n.entry(*p).or_default() += 1;
    }
    n
}
