//! `broker.upstream.source_addresses`: the local address each upstream session connects from.
//!
//! Why: the kernel tells TCP connections to one broker address and port apart by the local
//! address and port only, so one local address reaches one broker with at most the ephemeral
//! port range (`net.ipv4.ip_local_port_range`, 32768-60999 = 28,232 by default) connections at
//! once; a connect past that fails with "Cannot assign requested address". Several local
//! addresses used one after the other multiply that.
//!
//! Owns: the round-robin over the addresses (one owner, the driver: no lock), the family check
//! at start, and the socket bound to an address before its connect. Must never pick a port: the
//! port is chosen by the kernel at connect time (`IP_BIND_ADDRESS_NO_PORT` on Linux), against
//! the whole 4-tuple, so one port may serve several brokers.

use std::net::{IpAddr, SocketAddr};

use tokio::net::{TcpSocket, TcpStream};

use super::error::ShellError;

/// The source addresses, handed out round-robin.
#[derive(Debug, Default)]
pub(super) struct Sources {
    addrs: Vec<IpAddr>,
    next: usize,
}

impl Sources {
    /// `addrs` for sessions to `broker`: every address must be of the broker's family (the
    /// broker's host name is resolved only at start, so this is checked here, not in config).
    pub(super) fn new(addrs: &[IpAddr], broker: SocketAddr) -> Result<Sources, ShellError> {
        for (index, addr) in addrs.iter().enumerate() {
            if addr.is_ipv4() != broker.is_ipv4() {
                return Err(ShellError::SourceAddress {
                    index,
                    addr: *addr,
                    reason: format!(
                        "cannot reach the broker at {broker} (another address family): list \
                         addresses of the broker's family, or leave the list empty"
                    ),
                });
            }
        }
        Ok(Sources {
            addrs: addrs.to_vec(),
            next: 0,
        })
    }

    /// The address for the next session; `None` (the kernel picks) when there are none.
    pub(super) fn next(&mut self) -> Option<IpAddr> {
        let addr = *self.addrs.get(self.next)?;
        self.next = (self.next + 1) % self.addrs.len();
        Some(addr)
    }
}

/// A TCP connection to `broker`, from `source` when given. The error is the reason, the same
/// words for every session that fails the same way (the driver counts them as one).
pub(super) async fn connect(
    broker: SocketAddr,
    source: Option<IpAddr>,
) -> Result<TcpStream, String> {
    let Some(source) = source else {
        return TcpStream::connect(broker)
            .await
            .map_err(|e| format!("TCP connect: {e}{}", exhausted_hint(&e, None)));
    };
    let socket = bound(source, broker).map_err(|e| {
        format!(
            "cannot bind source address {source} (broker.upstream.source_addresses): {e} (is it \
             an address of this machine? `ip addr`)"
        )
    })?;
    socket.connect(broker).await.map_err(|e| {
        format!(
            "TCP connect from {source}: {e}{}",
            exhausted_hint(&e, Some(source))
        )
    })
}

/// A socket of `broker`'s family bound to `(source, 0)`, the port left to connect time.
fn bound(source: IpAddr, broker: SocketAddr) -> std::io::Result<TcpSocket> {
    let socket = if broker.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        // Without it, bind reserves a port for this socket alone whatever it later connects
        // to; with it the port is picked at connect, unique per 4-tuple only. Best effort:
        // an old kernel without it still works, with fewer connections per address.
        let _ = nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::IpBindAddressNoPort,
            &true,
        );
    }
    socket.bind(SocketAddr::new(source, 0))?;
    Ok(socket)
}

/// What to do when the local ports toward the broker are used up (EADDRNOTAVAIL at connect).
fn exhausted_hint(e: &std::io::Error, source: Option<IpAddr>) -> &'static str {
    if e.kind() != std::io::ErrorKind::AddrNotAvailable {
        return "";
    }
    match source {
        None => {
            " (no free local port toward the broker: one source address carries at most \
             net.ipv4.ip_local_port_range connections to it; list more addresses in \
             broker.upstream.source_addresses)"
        }
        Some(_) => {
            " (no free local port from this address toward the broker, or the address is not \
             this machine's: add addresses to broker.upstream.source_addresses)"
        }
    }
}

/// `check --deep`: can a socket be bound to `source` (toward `broker`'s family)?
pub(super) fn check_bind(source: IpAddr, broker: SocketAddr) -> Result<String, String> {
    bound(source, broker)
        .map(|_| "can bind".to_owned())
        .map_err(|e| format!("{e} (is it an address of this machine? `ip addr`)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_are_handed_out_round_robin() {
        let broker: SocketAddr = "127.0.0.1:1883".parse().unwrap();
        let addrs = [v4("127.0.0.1"), v4("127.0.0.2"), v4("127.0.0.3")];
        let mut s = Sources::new(&addrs, broker).unwrap();
        let got: Vec<_> = (0..7).map(|_| s.next().unwrap()).collect();
        assert_eq!(
            got,
            [addrs[0], addrs[1], addrs[2], addrs[0], addrs[1], addrs[2], addrs[0]]
        );
        let mut none = Sources::new(&[], broker).unwrap();
        assert_eq!(none.next(), None);
        assert_eq!(none.next(), None);
    }

    #[test]
    fn an_address_of_the_other_family_is_refused_at_start() {
        let broker: SocketAddr = "[::1]:1883".parse().unwrap();
        let err = Sources::new(&[v4("127.0.0.2")], broker).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("broker.upstream.source_addresses[0]: 127.0.0.2: cannot reach"),
            "{text}"
        );
        assert!(Sources::new(&[v4("::1")], broker).is_ok());
    }

    #[test]
    fn check_bind_tells_a_local_address_from_a_foreign_one() {
        let broker: SocketAddr = "127.0.0.1:1883".parse().unwrap();
        assert_eq!(check_bind(v4("127.0.0.2"), broker), Ok("can bind".into()));
        // TEST-NET-1 (RFC 5737) is never an address of this machine.
        let err = check_bind(v4("192.0.2.1"), broker).unwrap_err();
        assert!(err.contains("is it an address of this machine"), "{err}");
    }

    #[tokio::test]
    async fn a_session_connects_from_its_source_address() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let broker = listener.local_addr().unwrap();
        let (stream, accepted) =
            tokio::join!(connect(broker, Some(v4("127.0.0.2"))), listener.accept());
        let stream = stream.unwrap();
        assert_eq!(stream.local_addr().unwrap().ip(), v4("127.0.0.2"));
        assert_eq!(accepted.unwrap().1.ip(), v4("127.0.0.2"));
        let err = connect(broker, Some(v4("192.0.2.1"))).await.unwrap_err();
        assert!(
            err.starts_with("cannot bind source address 192.0.2.1"),
            "{err}"
        );
    }
}
