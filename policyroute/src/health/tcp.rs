//! `tcp:PORT` probes: a connection established is an answer and is closed at once; a
//! refused one (RST) is an explicit failure.
use std::{
    io,
    net::{IpAddr, SocketAddr},
};

use futures::{stream::FuturesUnordered, StreamExt};
use socket2::{Protocol, Socket, Type};
use tokio::{
    net::TcpSocket,
    time::{sleep_until, timeout_at, Instant},
};

use super::probe::{self, Outcome, ProbeError, Round};

/// Connects `count` times to every target, spread like other probes, and reports each
/// connection until all are settled or the round's timeout.
pub(super) async fn round(round: &Round, port: u16) -> Result<(), ProbeError> {
    let spec = &round.spec;
    // Every socket first: a round that cannot open one cannot probe as configured.
    let mut probes = Vec::new();
    for i in 0..spec.count {
        for &target in &spec.targets {
            let socket = probe::socket(spec, Type::STREAM, Protocol::TCP, "TCP")?;
            probes.push((round.send_time(i), target, socket));
        }
    }
    let deadline = round.deadline();
    let mut connects: FuturesUnordered<_> = probes
        .into_iter()
        .map(|(at, target, socket)| async move {
            sleep_until(at).await;
            connect(socket, SocketAddr::new(target, port), deadline).await
        })
        .collect();
    while let Some(outcome) = connects.next().await {
        if let Some(outcome) = outcome {
            round.report(outcome);
        }
    }
    Ok(())
}

/// The outcome of one connection attempt; `None` if it timed out (no answer).
async fn connect(socket: Socket, to: SocketAddr, deadline: Instant) -> Option<Outcome> {
    let socket = TcpSocket::from_std_stream(socket.into());
    let sent = Instant::now();
    match timeout_at(deadline, socket.connect(to)).await {
        Err(_elapsed) => None,
        // Dropping the stream closes it: the handshake was the answer.
        Ok(Ok(_stream)) => Some(Outcome::Answer(sent.elapsed())),
        Ok(Err(e)) => Some(Outcome::Failed(failure(to.ip(), &e))),
    }
}

fn failure(target: IpAddr, e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::ConnectionRefused {
        format!("{target} refused")
    } else {
        format!("{target}: {e}")
    }
}
