//! Multicast discovery over real sockets (spec §6.1): a device joined to the group sends
//! SEARCHGW to the group and hears GWINFO and ADVERTISE on the group; a unicast SEARCHGW still
//! gets a unicast GWINFO.
//!
//! Multicast leaves the host unless it is fenced in, so the scenario runs only inside a private
//! network namespace: the test re-executes its own binary under `unshare -n` (root needed) with
//! a marker variable; the child checks that it sees no interface but `lo`, brings `lo` up with
//! multicast and a 224.0.0.0/4 route (source 127.0.0.1: without it the kernel sends from
//! 0.0.0.0 on `lo`, an address a device cannot answer), adds a veth pair for IPv6 link-local
//! multicast (which `lo` does not loop back), and runs the gateway and the devices there.
//! Without root, `unshare` or `ip` the test passes with a loud "SKIPPED".

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use mqttsn_gateway::codec::{self, Message};
use mqttsn_gateway::config::{BrokerMode, Config, MulticastGroup, UdpTransport};
use mqttsn_gateway::shell;
use socket2::{Domain, Protocol, Socket, Type};
use testkit::{in_private_netns, netns_scenario_passed, no_private_netns, run_in_private_netns};
use tokio::net::UdpSocket;

/// Set in the child that runs inside the namespace.
const CHILD: &str = "MQTTSN_DISCOVERY_NETNS_CHILD";
const TEST: &str = "multicast_discovery_in_a_private_network_namespace";
const WAIT: Duration = Duration::from_secs(3);
const GW_ID: u8 = 42;

#[test]
fn multicast_discovery_in_a_private_network_namespace() {
    if in_private_netns(CHILD) {
        inside_namespace();
        netns_scenario_passed();
        return;
    }
    if let Some(why) = no_private_netns(&[]) {
        eprintln!("\n*** SKIPPED: {TEST}: {why} ***\n");
        return;
    }
    run_in_private_netns(TEST, CHILD);
}

fn sh(cmd: &str) -> Result<(), String> {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Interfaces of the namespace this process is in (/proc/self/net is per network namespace;
/// /sys/class/net is not).
fn interfaces() -> Vec<String> {
    let dev = std::fs::read_to_string("/proc/self/net/dev").expect("read /proc/self/net/dev");
    dev.lines()
        .skip(2)
        .filter_map(|l| l.split(':').next().map(|n| n.trim().to_owned()))
        .collect()
}

/// Start-time checks of `discovery.multicast[]` against `transports.udp`: each start fails
/// before anything is bound or joined (run in the namespace all the same, in case one did not).
async fn groups_that_do_not_fit_their_transport_are_refused_at_start() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    drop(taken);
    let base = || {
        let mut c = Config::default();
        c.store.path = None;
        c.broker.mode = BrokerMode::Upstream;
        c.broker.upstream.port = 9;
        c.transports.udp = vec![UdpTransport {
            bind: SocketAddr::from(([127, 0, 0, 1], port)),
        }];
        c
    };
    let cases: [(Vec<MulticastGroup>, &str); 3] = [
        (
            vec![MulticastGroup {
                port,
                ..MulticastGroup::default()
            }],
            "uses it already",
        ),
        (
            vec![MulticastGroup {
                transport: Some(3),
                ..MulticastGroup::default()
            }],
            "there is no transports.udp[3]",
        ),
        (
            vec![MulticastGroup {
                group: "ff05::1:1883".parse().unwrap(),
                ..MulticastGroup::default()
            }],
            "no UDP transport of the address family",
        ),
    ];
    for (groups, says) in cases {
        let mut c = base();
        c.discovery.multicast = groups;
        match shell::start(&c).await {
            Err(e @ shell::ShellError::Multicast { index: 0, .. }) => {
                println!("refused at start: {e}");
                assert!(e.to_string().contains(says), "{e}");
                assert!(e.to_string().starts_with("discovery.multicast[0]: "), "{e}");
            }
            Err(e) => panic!("expected a discovery.multicast error, got {e}"),
            Ok(running) => {
                running.shutdown().await;
                panic!("started with a group that does not fit ({says})");
            }
        }
    }
}

const VETH: &str = "mcsn0";

fn inside_namespace() {
    // Never send multicast where it could leave the machine.
    assert_eq!(
        interfaces(),
        vec!["lo".to_owned()],
        "not in a fresh private network namespace; refusing to send multicast"
    );
    sh("ip link set lo up && ip link set lo multicast on && ip route add 224.0.0.0/4 dev lo src 127.0.0.1")
        .expect("set up lo for IPv4 multicast");
    // IPv6 multicast is not looped back over `lo`; a veth end is (DAD off so its link-local
    // address is usable at once).
    let v6 = sh(&format!(
        "echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad && \
         ip link add {VETH} type veth peer name {VETH}p && ip link set {VETH} up && ip link set {VETH}p up"
    ));
    if let Err(e) = &v6 {
        eprintln!("\n*** SKIPPED (IPv6 part of {TEST}): {e} ***\n");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(groups_that_do_not_fit_their_transport_are_refused_at_start());
    rt.block_on(scenario(v6.is_ok()));
}

/// A device socket bound to `group` (port 0: the kernel picks) and joined to it; only what is
/// sent to the group arrives on it.
fn group_socket(group: SocketAddr, ifindex: u32) -> UdpSocket {
    let s = Socket::new(Domain::for_address(group), Type::DGRAM, Some(Protocol::UDP)).unwrap();
    s.set_reuse_address(true).unwrap();
    match group {
        SocketAddr::V4(g) => {
            s.bind(&group.into()).unwrap();
            s.join_multicast_v4(g.ip(), &Ipv4Addr::UNSPECIFIED).unwrap();
        }
        SocketAddr::V6(g) => {
            s.set_only_v6(true).unwrap();
            s.bind(&group.into()).unwrap();
            s.join_multicast_v6(g.ip(), ifindex).unwrap();
            s.set_multicast_if_v6(ifindex).unwrap();
        }
    }
    s.set_nonblocking(true).unwrap();
    UdpSocket::from_std(s.into()).unwrap()
}

/// A datagram a device heard.
#[derive(Debug)]
struct Heard {
    msg: Message,
    from: SocketAddr,
    /// The IPv4 TTL / IPv6 hop limit it arrived with (group sockets ask for it).
    ttl: Option<u8>,
}

/// The next message on `sock` other than a SEARCHGW (devices hear their own).
async fn recv_not_searchgw(sock: &UdpSocket) -> Option<Heard> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrStorage};
    use std::io::IoSliceMut;
    use std::os::fd::AsRawFd;

    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        tokio::time::timeout_at(deadline, sock.readable())
            .await
            .ok()?
            .unwrap();
        let mut buf = [0u8; 512];
        let mut cmsg = nix::cmsg_space!(i32);
        let got = sock.try_io(tokio::io::Interest::READABLE, || {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = recvmsg::<SockaddrStorage>(
                sock.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::empty(),
            )
            .map_err(std::io::Error::from)?;
            let ttl = msg.cmsgs().ok().and_then(|mut c| {
                c.find_map(|c| match c {
                    ControlMessageOwned::Ipv4Ttl(t) | ControlMessageOwned::Ipv6HopLimit(t) => {
                        u8::try_from(t).ok()
                    }
                    _ => None,
                })
            });
            let from: SocketAddr = match msg.address {
                Some(a) if a.as_sockaddr_in().is_some() => {
                    std::net::SocketAddrV4::from(*a.as_sockaddr_in().unwrap()).into()
                }
                Some(a) if a.as_sockaddr_in6().is_some() => {
                    std::net::SocketAddrV6::from(*a.as_sockaddr_in6().unwrap()).into()
                }
                _ => panic!("datagram without a source address"),
            };
            Ok((msg.bytes, from, ttl))
        });
        let (n, from, ttl) = match got {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => panic!("recvmsg: {e}"),
        };
        let msg = codec::decode_message(Bytes::copy_from_slice(&buf[..n])).expect("valid frame");
        if !matches!(msg, Message::SearchGw { .. }) {
            return Some(Heard { msg, from, ttl });
        }
    }
}

async fn send(sock: &UdpSocket, m: Message, to: SocketAddr) {
    sock.send_to(&m.to_bytes().unwrap(), to).await.unwrap();
}

const GWINFO: Message = Message::GwInfo {
    gw_id: GW_ID,
    gw_add: None,
};

const ADVERTISE: Message = Message::Advertise {
    gw_id: GW_ID,
    duration: 1,
};

/// The next message on the group that is `kind` (GWINFO or ADVERTISE), skipping the other.
async fn recv_on_group(sock: &UdpSocket, kind: &Message) -> Heard {
    loop {
        let h = recv_not_searchgw(sock)
            .await
            .unwrap_or_else(|| panic!("no {kind:?} on the group"));
        if std::mem::discriminant(&h.msg) == std::mem::discriminant(kind) {
            return h;
        }
    }
}

async fn scenario(v6: bool) {
    use nix::sys::socket::{setsockopt, sockopt};

    let group4 = SocketAddr::new(Ipv4Addr::new(225, 1, 1, 1).into(), 0);
    let dev4 = group_socket(group4, 0);
    setsockopt(&dev4, sockopt::Ipv4RecvTtl, &true).unwrap();
    let group4 = dev4.local_addr().unwrap();
    let mut groups = vec![MulticastGroup {
        group: group4.ip(),
        port: group4.port(),
        ttl: 4,
        ..MulticastGroup::default()
    }];
    let mut udp = vec![UdpTransport {
        bind: "0.0.0.0:0".parse().unwrap(),
    }];
    let mut dev6 = None;
    if v6 {
        let index = nix::net::if_::if_nametoindex(VETH).expect("veth index");
        let g: Ipv6Addr = "ff02::1:1883".parse().unwrap();
        let sock = group_socket(SocketAddrV6::new(g, 0, 0, index).into(), index);
        setsockopt(&sock, sockopt::Ipv6RecvHopLimit, &true).unwrap();
        let port = sock.local_addr().unwrap().port();
        groups.push(MulticastGroup {
            group: IpAddr::V6(g),
            port,
            interface: Some(VETH.to_owned()),
            transport: Some(1),
            ttl: 3,
        });
        udp.push(UdpTransport {
            bind: "[::]:0".parse().unwrap(),
        });
        dev6 = Some((sock, SocketAddr::V6(SocketAddrV6::new(g, port, 0, index))));
    }
    let mut config = Config::default();
    config.gateway.id = GW_ID;
    config.store.path = None;
    config.transports.udp = udp;
    // No device connects: the broker is never dialled.
    config.broker.mode = BrokerMode::Upstream;
    config.broker.upstream.port = 9;
    config.discovery.multicast = groups;
    config.discovery.advertise = Some(mqttsn_gateway::config::Advertise {
        address: None,
        interval: Duration::from_secs(1),
    });
    let gw = shell::start(&config).await.expect("gateway starts");
    let gw4 = gw.udp_addrs[0];

    // SEARCHGW to the group: GWINFO to the group, from the gateway's unicast port, its TTL the
    // SEARCHGW's radius (under the group's ttl 4).
    send(&dev4, Message::SearchGw { radius: 2 }, group4).await;
    let h = recv_on_group(&dev4, &GWINFO).await;
    assert_eq!(h.msg, GWINFO);
    assert_eq!(
        h.from.port(),
        gw4.port(),
        "GWINFO comes from the gateway's transport"
    );
    assert_eq!(h.ttl, Some(2), "GWINFO has the SEARCHGW's radius as TTL");
    let gateway = h.from;
    // Radius 0 ("whole network"): the group's ttl.
    send(&dev4, Message::SearchGw { radius: 0 }, group4).await;
    assert_eq!(recv_on_group(&dev4, &GWINFO).await.ttl, Some(4));
    // ADVERTISE on the group, every interval, with the group's ttl.
    let h = recv_on_group(&dev4, &ADVERTISE).await;
    assert_eq!((h.msg, h.from, h.ttl), (ADVERTISE, gateway, Some(4)));
    println!("IPv4: GWINFO and ADVERTISE on {group4} from {gateway}");

    // SEARCHGW to the gateway's address (learnt from GWINFO): GWINFO back to the sender only.
    let uni = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    send(&uni, Message::SearchGw { radius: 1 }, gateway).await;
    let h = recv_not_searchgw(&uni).await.expect("unicast GWINFO");
    assert_eq!((h.msg, h.from), (GWINFO, gateway));
    // ... and nothing but ADVERTISE on the group.
    let quiet = tokio::time::Instant::now() + Duration::from_millis(700);
    while let Ok(Some(h)) = tokio::time::timeout_at(quiet, recv_not_searchgw(&dev4)).await {
        assert_eq!(
            h.msg, ADVERTISE,
            "unexpected on the group after a unicast SEARCHGW"
        );
    }

    if let Some((dev6, group6)) = dev6 {
        send(&dev6, Message::SearchGw { radius: 2 }, group6).await;
        let h = recv_on_group(&dev6, &GWINFO).await;
        assert_eq!(h.from.port(), gw.udp_addrs[1].port());
        assert_eq!(
            h.ttl,
            Some(2),
            "GWINFO has the SEARCHGW's radius as hop limit"
        );
        let from = h.from;
        let h = recv_on_group(&dev6, &ADVERTISE).await;
        assert_eq!((h.msg, h.from, h.ttl), (ADVERTISE, from, Some(3)));
        println!("IPv6: GWINFO and ADVERTISE on {group6} from {from}");
    }
    gw.shutdown().await;
}
