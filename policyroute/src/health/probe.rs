//! One round of probes, whatever the method: the events it reports, when its probes go
//! out, and the socket settings every probe shares.
use std::{io, sync::Arc, time::Duration};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::{sync::mpsc::UnboundedSender, time::Instant};

use super::{detector::RoundId, icmp, tcp, CheckSpec, Method};

/// Probes of a round are spread over at most this much (and over half the timeout): a
/// short burst of loss should not take every probe of a round.
const SPREAD_MAX: Duration = Duration::from_millis(200);

/// What became of one probe.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Outcome {
    /// Answered, this long after it was sent.
    Answer(Duration),
    /// Failed explicitly: ICMP error, connection refused, send error.
    Failed(String),
}

#[derive(Debug)]
pub(crate) struct Event {
    pub round: RoundId,
    pub at: Instant,
    pub outcome: Outcome,
}

/// Why a round could not probe at all.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("cannot open a {kind} socket on {dev}: {source}")]
    Socket {
        kind: &'static str,
        dev: String,
        source: io::Error,
    },
}

/// A round in flight: which, since when, and where its probe events go.
pub(crate) struct Round {
    pub id: RoundId,
    pub start: Instant,
    pub spec: Arc<CheckSpec>,
    pub events: UnboundedSender<Event>,
}

impl Round {
    pub fn deadline(&self) -> Instant {
        self.start + self.spec.timeout
    }

    /// When the `i`-th probe to each target goes out.
    pub fn send_time(&self, i: u32) -> Instant {
        let count = self.spec.count.max(1);
        let spread = SPREAD_MAX.min(self.spec.timeout / 2);
        self.start + spread / count * i
    }

    pub fn report(&self, outcome: Outcome) {
        // The check's task holds the receiver until it is stopped, and then nobody cares.
        let _ = self.events.send(Event {
            round: self.id,
            at: Instant::now(),
            outcome,
        });
    }
}

/// Runs `round` to its end: every probe answered or failed, or the timeout. `icmp_ident`
/// and `first_seq` tell ICMP replies of this round from all others.
pub(crate) async fn run(
    round: Round,
    icmp_ident: u16,
    first_seq: u16,
) -> (RoundId, Result<(), ProbeError>) {
    let result = match round.spec.method {
        Method::Icmp => icmp::round(&round, icmp_ident, first_seq).await,
        Method::Tcp(port) => tcp::round(&round, port).await,
    };
    (round.id, result)
}

/// A non-blocking socket routed like the gateway's traffic: its fwmark selects the
/// gateway's table, and binding it to the gateway's device keeps it there (the socket
/// hooks of policyroute leave device-bound sockets alone).
pub(crate) fn socket(
    spec: &CheckSpec,
    ty: Type,
    protocol: Protocol,
    kind: &'static str,
) -> Result<Socket, ProbeError> {
    let domain = match spec.family {
        super::Family::V4 => Domain::IPV4,
        super::Family::V6 => Domain::IPV6,
    };
    let open = || -> io::Result<Socket> {
        let socket = Socket::new(domain, ty, Some(protocol))?;
        socket.set_mark(spec.mark)?;
        socket.bind_device(Some(spec.dev.as_bytes()))?;
        socket.set_nonblocking(true)?;
        Ok(socket)
    };
    open().map_err(|source| ProbeError::Socket {
        kind,
        dev: spec.dev.clone(),
        source,
    })
}
