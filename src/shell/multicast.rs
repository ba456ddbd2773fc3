//! Discovery multicast groups (`discovery.multicast[]`): one receiving socket per group, joined
//! to it and bound to the group's address, so only datagrams sent to the group arrive there;
//! what the core sends to a group leaves from the group's UDP transport, so devices learn
//! that transport's address from the GWINFO or ADVERTISE source.
//!
//! Owns no protocol state: the core says which group and which radius; this file turns the
//! radius into the IP scope (TTL / hop limit) and sends. Must never answer a SEARCHGW itself.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV6};

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::UdpSocket;
use tracing::debug;

use super::error::ShellError;
use crate::config::MulticastGroup;

/// Where the group's interface is, as the socket options want it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interface {
    /// IPv4: a local address of the interface; 0.0.0.0 = the kernel's choice.
    V4(Ipv4Addr),
    /// IPv6: an interface index; 0 = the kernel's choice.
    V6(u32),
}

/// A joined group, as the driver needs it for sending.
#[derive(Debug, Clone)]
pub struct Group {
    /// Index into the driver's transports (a UDP one).
    pub transport: usize,
    /// The group's address and port (with the interface as scope for IPv6).
    pub dest: SocketAddr,
    ttl: u8,
    interface: Interface,
}

/// The TTL / hop limit for a send with `radius` (spec §5.3.9: 0 = the whole network): the
/// configured `ttl`, narrowed by a non-zero radius, never widened.
pub fn scope(ttl: u8, radius: u8) -> u8 {
    if radius == 0 {
        ttl
    } else {
        radius.min(ttl)
    }
}

fn error(index: usize, reason: impl Into<String>) -> ShellError {
    ShellError::Multicast {
        index,
        reason: reason.into(),
    }
}

fn interface(index: usize, entry: &MulticastGroup) -> Result<Interface, ShellError> {
    let name = entry.interface.as_deref();
    match entry.group {
        IpAddr::V4(_) => Ok(Interface::V4(match name {
            // Checked when the configuration was read.
            Some(a) => a
                .parse()
                .map_err(|_| error(index, format!("interface `{a}` is not an IPv4 address")))?,
            None => Ipv4Addr::UNSPECIFIED,
        })),
        IpAddr::V6(_) => Ok(Interface::V6(match name {
            None => 0,
            Some(n) => match n.parse::<u32>() {
                Ok(i) => i,
                Err(_) => nix::net::if_::if_nametoindex(n)
                    .map_err(|e| error(index, format!("interface `{n}`: {e}")))?,
            },
        })),
    }
}

/// The index into `udp` (each UDP transport's address, in config order; they are the first
/// transports) of the transport `discovery.multicast[index]` sends from. Run on the configured
/// addresses before anything is bound, and on the bound ones (port 0 resolved) after.
pub fn transport(
    index: usize,
    entry: &MulticastGroup,
    udp: &[SocketAddr],
) -> Result<usize, ShellError> {
    let same_family = |a: &SocketAddr| a.is_ipv4() == entry.group.is_ipv4();
    let transport = match entry.transport {
        Some(t) => {
            let bound = udp.get(t).ok_or_else(|| {
                error(
                    index,
                    format!("transport {t}: there is no transports.udp[{t}]"),
                )
            })?;
            if !same_family(bound) {
                return Err(error(
                    index,
                    format!("transport {t}: transports.udp[{t}] ({bound}) is not of the group's address family"),
                ));
            }
            t
        }
        None => udp.iter().position(same_family).ok_or_else(|| {
            error(
                index,
                format!(
                    "no UDP transport of the address family of {} to send from",
                    entry.group
                ),
            )
        })?,
    };
    if udp[transport].port() == entry.port {
        return Err(error(
            index,
            format!(
                "port {}: transports.udp[{transport}] uses it already; the group needs a port of its own (Paho: group 1883, gateway 10000)",
                entry.port
            ),
        ));
    }
    Ok(transport)
}

/// Joins the group of `discovery.multicast[index]`. `udp`: each UDP transport's bound address,
/// in config order. Returns the group and its receiving socket.
pub fn open(
    index: usize,
    entry: &MulticastGroup,
    udp: &[SocketAddr],
    receive_buffer: usize,
) -> Result<(Group, UdpSocket), ShellError> {
    let transport = transport(index, entry, udp)?;
    let interface = interface(index, entry)?;
    let dest = match (entry.group, interface) {
        (IpAddr::V6(g), Interface::V6(i)) => SocketAddrV6::new(g, entry.port, 0, i).into(),
        _ => entry.addr(),
    };
    let socket = receiver(dest, interface, receive_buffer).map_err(|e| {
        let hint = if matches!(interface, Interface::V6(0)) {
            " (a link-local group such as ff02:: needs `interface`)"
        } else {
            ""
        };
        error(index, format!("cannot join {}: {e}{hint}", entry.addr()))
    })?;
    Ok((
        Group {
            transport,
            dest,
            ttl: entry.ttl,
            interface,
        },
        socket,
    ))
}

fn receiver(dest: SocketAddr, interface: Interface, buffer: usize) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::for_address(dest), Type::DGRAM, Some(Protocol::UDP))?;
    // Other listeners of the group on this host (devices, another gateway) bind it too.
    socket.set_reuse_address(true)?;
    if let Err(e) = socket.set_recv_buffer_size(buffer) {
        debug!(%dest, error = %e, "cannot set the multicast receive buffer");
    }
    match (dest, interface) {
        (SocketAddr::V4(d), Interface::V4(i)) => {
            // Only this socket's own membership counts, not every group joined on the host.
            #[cfg(target_os = "linux")]
            socket.set_multicast_all_v4(false)?;
            socket.bind(&dest.into())?;
            socket.join_multicast_v4(d.ip(), &i)?;
        }
        (SocketAddr::V6(d), Interface::V6(i)) => {
            socket.set_only_v6(true)?;
            #[cfg(target_os = "linux")]
            socket.set_multicast_all_v6(false)?;
            socket.bind(&dest.into())?;
            socket.join_multicast_v6(d.ip(), i)?;
        }
        _ => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "group and interface are of different address families",
            ))
        }
    }
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket.into())
}

/// Sends `frame` to `group` from `sock` (the group's transport) with `radius` as scope.
pub async fn send(sock: &UdpSocket, group: &Group, radius: u8, frame: &[u8]) {
    let hops = u32::from(scope(group.ttl, radius));
    let sock_ref = SockRef::from(sock);
    // One driver sends on this socket, so the options hold for exactly this datagram.
    let set = match group.interface {
        Interface::V4(i) => sock_ref
            .set_multicast_if_v4(&i)
            .and_then(|()| sock_ref.set_multicast_ttl_v4(hops)),
        Interface::V6(i) => sock_ref
            .set_multicast_if_v6(i)
            .and_then(|()| sock_ref.set_multicast_hops_v6(hops)),
    };
    if let Err(e) = set {
        debug!(group = %group.dest, error = %e, "cannot set the multicast interface or scope");
        return;
    }
    if let Err(e) = sock.send_to(frame, group.dest).await {
        debug!(group = %group.dest, error = %e, "send to multicast group failed");
    }
}

#[cfg(test)]
mod tests {
    use super::scope;

    #[test]
    fn radius_narrows_the_configured_scope_and_zero_keeps_it() {
        assert_eq!(scope(1, 0), 1);
        assert_eq!(scope(8, 0), 8);
        assert_eq!(scope(8, 3), 3);
        assert_eq!(scope(2, 5), 2);
        assert_eq!(scope(255, 255), 255);
    }
}
