//! Notifications of network changes in this namespace: rtnetlink's multicast groups for
//! links, addresses, routes and rules of both families. `run` reconciles on them.
use futures::channel::mpsc::UnboundedReceiver;
use futures::StreamExt;
use netlink_packet_route::RouteNetlinkMessage;
use rtnetlink::{
    packet_core::{NetlinkMessage, NetlinkPayload},
    sys::{AsyncSocket, SocketAddr},
};

use crate::kernel::netlink::NetlinkError;

/// What kind of object changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Change {
    Link,
    Address,
    Route,
    Rule,
}

impl Change {
    pub fn as_str(self) -> &'static str {
        match self {
            Change::Link => "link",
            Change::Address => "address",
            Change::Route => "route",
            Change::Rule => "rule",
        }
    }
}

const GROUPS: [u32; 7] = [
    libc::RTNLGRP_LINK,
    libc::RTNLGRP_IPV4_IFADDR,
    libc::RTNLGRP_IPV6_IFADDR,
    libc::RTNLGRP_IPV4_ROUTE,
    libc::RTNLGRP_IPV6_ROUTE,
    libc::RTNLGRP_IPV4_RULE,
    libc::RTNLGRP_IPV6_RULE,
];

type Messages = UnboundedReceiver<(NetlinkMessage<RouteNetlinkMessage>, SocketAddr)>;

/// A subscription to the namespace's network changes (the namespace of the calling thread
/// when it is made).
pub struct Events {
    messages: Messages,
    /// Kept: the connection task ends when its last handle is gone.
    _handle: rtnetlink::Handle,
}

impl Events {
    /// Subscribes; the connection task runs on the current tokio runtime.
    pub fn subscribe() -> Result<Self, NetlinkError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| NetlinkError::NoRuntime)?;
        let (mut connection, handle, messages) =
            rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
        let socket = connection.socket_mut().socket_mut();
        // Bound to a port of its own: the kernel skips an unbound socket (port 0, the
        // kernel's own) when it broadcasts.
        socket.bind_auto().map_err(NetlinkError::Socket)?;
        for group in GROUPS {
            socket.add_membership(group).map_err(NetlinkError::Socket)?;
        }
        runtime.spawn(connection);
        Ok(Self {
            messages,
            _handle: handle,
        })
    }

    /// The next change; `None` when the connection is gone.
    pub async fn next(&mut self) -> Option<Change> {
        loop {
            let (message, _) = self.messages.next().await?;
            if let Some(change) = change(&message) {
                return Some(change);
            }
        }
    }
}

fn change(message: &NetlinkMessage<RouteNetlinkMessage>) -> Option<Change> {
    let NetlinkPayload::InnerMessage(inner) = &message.payload else {
        return None;
    };
    Some(match inner {
        RouteNetlinkMessage::NewLink(_) | RouteNetlinkMessage::DelLink(_) => Change::Link,
        RouteNetlinkMessage::NewAddress(_) | RouteNetlinkMessage::DelAddress(_) => Change::Address,
        RouteNetlinkMessage::NewRoute(_) | RouteNetlinkMessage::DelRoute(_) => Change::Route,
        RouteNetlinkMessage::NewRule(_) | RouteNetlinkMessage::DelRule(_) => Change::Rule,
        _ => return None,
    })
}
