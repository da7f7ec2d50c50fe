//! The two packets this crate builds by hand: the 42-byte Ethernet ARP frame (gratuitous ARP and
//! probe) and the 40-byte IPv4 + TCP "tickle ACK". Pure functions, no I/O.

use std::net::{Ipv4Addr, SocketAddrV4};

/// EtherType of ARP.
pub(crate) const ETH_P_ARP: u16 = 0x0806;
/// Length of an Ethernet ARP frame without padding: 14 bytes of Ethernet header, 28 of ARP.
pub(crate) const ARP_FRAME_LEN: usize = 42;
/// Length of the tickle packet: a 20-byte IPv4 header and a 20-byte TCP header, no options.
pub(crate) const TICKLE_LEN: usize = 40;
/// Window advertised by the tickle ACK (any value does; CTDB's is 1234 too).
pub(crate) const TICKLE_WINDOW: u16 = 1234;

pub(crate) const ARP_REQUEST: u16 = 1;
pub(crate) const ARP_REPLY: u16 = 2;

const BROADCAST_MAC: [u8; 6] = [0xff; 6];

/// An Ethernet ARP frame: broadcast destination, `sender_mac` as Ethernet source and ARP sender
/// hardware address, the target hardware address zero (RFC 5227 says it is ignored).
pub(crate) fn arp_frame(
    op: u16,
    sender_mac: [u8; 6],
    sender_ip: Ipv4Addr,
    target_ip: Ipv4Addr,
) -> [u8; ARP_FRAME_LEN] {
    let mut frame = [0u8; ARP_FRAME_LEN];
    frame[0..6].copy_from_slice(&BROADCAST_MAC);
    frame[6..12].copy_from_slice(&sender_mac);
    frame[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    frame[14..16].copy_from_slice(&1u16.to_be_bytes()); // Hardware type: Ethernet.
    frame[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // Protocol type: IPv4.
    frame[18] = 6;
    frame[19] = 4;
    frame[20..22].copy_from_slice(&op.to_be_bytes());
    frame[22..28].copy_from_slice(&sender_mac);
    frame[28..32].copy_from_slice(&sender_ip.octets());
    // 32..38: target hardware address, zero.
    frame[38..42].copy_from_slice(&target_ip.octets());
    frame
}

/// The gratuitous ARP that keepalived and `arping -U` send: a request whose sender and target IP
/// are both the VIP.
pub(crate) fn gratuitous_arp(mac: [u8; 6], vip: Ipv4Addr) -> [u8; ARP_FRAME_LEN] {
    arp_frame(ARP_REQUEST, mac, vip, vip)
}

/// The RFC 5227 probe: a request for `vip` with sender IP 0.0.0.0, so that no neighbour learns
/// anything from it.
pub(crate) fn arp_probe(mac: [u8; 6], vip: Ipv4Addr) -> [u8; ARP_FRAME_LEN] {
    arp_frame(ARP_REQUEST, mac, Ipv4Addr::UNSPECIFIED, vip)
}

/// The fields of a received Ethernet/IPv4 ARP packet that the probe looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Arp {
    pub(crate) op: u16,
    pub(crate) sender_mac: [u8; 6],
    pub(crate) sender_ip: Ipv4Addr,
    pub(crate) target_ip: Ipv4Addr,
}

/// Parses an Ethernet frame; `None` for anything but a well-formed Ethernet/IPv4 ARP packet.
pub(crate) fn parse_arp(frame: &[u8]) -> Option<Arp> {
    let frame = frame.get(..ARP_FRAME_LEN)?;
    let be16 = |at: usize| u16::from_be_bytes([frame[at], frame[at + 1]]);
    let ip = |at: usize| Ipv4Addr::new(frame[at], frame[at + 1], frame[at + 2], frame[at + 3]);
    if be16(12) != ETH_P_ARP || be16(14) != 1 || be16(16) != 0x0800 || frame[18] != 6 || frame[19] != 4 {
        return None;
    }
    let mut sender_mac = [0u8; 6];
    sender_mac.copy_from_slice(&frame[22..28]);
    Some(Arp { op: be16(20), sender_mac, sender_ip: ip(28), target_ip: ip(38) })
}

/// The tickle ACK: IPv4 (DF, TTL 64) + TCP with only ACK set, sequence and acknowledgement 0,
/// both checksums filled in. The receiver finds the sequence number outside its window and
/// answers with an ACK carrying its real numbers.
pub(crate) fn tickle_packet(local: SocketAddrV4, peer: SocketAddrV4) -> [u8; TICKLE_LEN] {
    let mut packet = [0u8; TICKLE_LEN];
    let (ip, tcp) = packet.split_at_mut(20);
    ip[0] = 0x45; // Version 4, header length 5 words.
    ip[2..4].copy_from_slice(&(TICKLE_LEN as u16).to_be_bytes());
    ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // Don't fragment.
    ip[8] = 64; // TTL.
    ip[9] = libc::IPPROTO_TCP as u8;
    ip[12..16].copy_from_slice(&local.ip().octets());
    ip[16..20].copy_from_slice(&peer.ip().octets());
    let ip_checksum = checksum(0, ip);
    ip[10..12].copy_from_slice(&ip_checksum.to_be_bytes());

    tcp[0..2].copy_from_slice(&local.port().to_be_bytes());
    tcp[2..4].copy_from_slice(&peer.port().to_be_bytes());
    // 4..8 sequence number 0, 8..12 acknowledgement number 0.
    tcp[12] = 5 << 4; // Data offset: 5 words.
    tcp[13] = 0x10; // ACK.
    tcp[14..16].copy_from_slice(&TICKLE_WINDOW.to_be_bytes());
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&local.ip().octets());
    pseudo[4..8].copy_from_slice(&peer.ip().octets());
    pseudo[9] = libc::IPPROTO_TCP as u8;
    pseudo[10..12].copy_from_slice(&20u16.to_be_bytes());
    let tcp_checksum = checksum(sum_words(0, &pseudo), tcp);
    tcp[16..18].copy_from_slice(&tcp_checksum.to_be_bytes());
    packet
}

/// Adds `bytes` as big-endian 16-bit words (an odd last byte padded with zero) to `sum`.
fn sum_words(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut words = bytes.chunks_exact(2);
    for word in &mut words {
        sum += u32::from(u16::from_be_bytes([word[0], word[1]]));
    }
    if let [last] = words.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

/// The Internet checksum (RFC 1071) of `bytes`, starting from the partial sum `initial`.
pub(crate) fn checksum(initial: u32, bytes: &[u8]) -> u16 {
    let mut sum = sum_words(initial, bytes);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gratuitous_arp_layout() {
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let vip = Ipv4Addr::new(10, 231, 0, 50);
        let frame = gratuitous_arp(mac, vip);
        let expected: [u8; 42] = [
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x08, 0x06, // Ethernet
            0, 1, 0x08, 0, 6, 4, 0, 1, // Ethernet/IPv4, request
            0x52, 0x54, 0, 0x12, 0x34, 0x56, 10, 231, 0, 50, // sender
            0, 0, 0, 0, 0, 0, 10, 231, 0, 50, // target
        ];
        assert_eq!(frame, expected);
        let arp = parse_arp(&frame).expect("parses");
        assert_eq!(arp, Arp { op: ARP_REQUEST, sender_mac: mac, sender_ip: vip, target_ip: vip });
    }

    #[test]
    fn probe_has_no_sender_address_and_parse_rejects_garbage() {
        let frame = arp_probe([2, 0, 0, 0, 0, 1], Ipv4Addr::new(10, 0, 0, 1));
        let arp = parse_arp(&frame).expect("parses");
        assert_eq!(arp.sender_ip, Ipv4Addr::UNSPECIFIED);
        assert_eq!(arp.target_ip, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(parse_arp(&frame[..41]), None);
        let mut ipv4 = frame;
        ipv4[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        assert_eq!(parse_arp(&ipv4), None);
        let mut padded = frame.to_vec();
        padded.resize(60, 0);
        assert_eq!(parse_arp(&padded), Some(arp));
    }

    #[test]
    fn tickle_checksums_verify() {
        let local = SocketAddrV4::new(Ipv4Addr::new(10, 231, 0, 50), 2049);
        let peer = SocketAddrV4::new(Ipv4Addr::new(10, 231, 0, 100), 812);
        let packet = tickle_packet(local, peer);
        // A correct header sums, checksum included, to 0xffff, so the checksum over it is 0.
        assert_eq!(checksum(0, &packet[..20]), 0);
        let mut pseudo = [0u8; 12];
        pseudo[0..4].copy_from_slice(&packet[12..16]);
        pseudo[4..8].copy_from_slice(&packet[16..20]);
        pseudo[9] = 6;
        pseudo[11] = 20;
        assert_eq!(checksum(sum_words(0, &pseudo), &packet[20..]), 0);
        assert_eq!(&packet[20..24], &[0x08, 0x01, 0x03, 0x2c]);
        assert_eq!(packet[33], 0x10);
    }

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (one's complement).
        assert_eq!(checksum(0, &[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), !0xddf2);
        assert_eq!(checksum(0, &[0xab]), !0xab00);
    }
}
