//! Encoding of SFTP v3 replies (draft-ietf-secsh-filexfer-02) straight into the output buffer,
//! and small readers for extension request payloads. Requests are decoded with `russh-sftp`'s
//! protocol types.

use russh_sftp::protocol::StatusCode;

use crate::userfs::{EntryKind, FileStat};

pub const FXP_VERSION: u8 = 2;
pub const FXP_STATUS: u8 = 101;
pub const FXP_HANDLE: u8 = 102;
pub const FXP_DATA: u8 = 103;
pub const FXP_NAME: u8 = 104;
pub const FXP_ATTRS: u8 = 105;
pub const FXP_EXTENDED_REPLY: u8 = 201;

const ATTR_SIZE: u32 = 0x1;
const ATTR_PERMISSIONS: u32 = 0x4;
const ATTR_ACMODTIME: u32 = 0x8;

/// Builds one packet: length, type, then the fields.
pub struct Packet {
    buf: Vec<u8>,
}

impl Packet {
    pub fn new(kind: u8, id: Option<u32>, capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity + 9);
        buf.extend_from_slice(&[0, 0, 0, 0, kind]);
        if let Some(id) = id {
            buf.extend_from_slice(&id.to_be_bytes());
        }
        Packet { buf }
    }

    pub fn u32(&mut self, value: u32) -> &mut Self {
        self.buf.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub fn u64(&mut self, value: u64) -> &mut Self {
        self.buf.extend_from_slice(&value.to_be_bytes());
        self
    }

    pub fn bytes(&mut self, value: &[u8]) -> &mut Self {
        self.u32(value.len() as u32);
        self.buf.extend_from_slice(value);
        self
    }

    pub fn raw(&mut self, value: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(value);
        self
    }

    pub fn attrs(&mut self, stat: &FileStat) -> &mut Self {
        self.u32(ATTR_SIZE | ATTR_PERMISSIONS | ATTR_ACMODTIME);
        self.u64(stat.size);
        self.u32(mode_of(stat));
        self.u32(stat.atime.min(u64::from(u32::MAX)) as u32);
        self.u32(stat.mtime.min(u64::from(u32::MAX)) as u32);
        self
    }

    pub fn finish(mut self) -> Vec<u8> {
        let len = (self.buf.len() - 4) as u32;
        self.buf[..4].copy_from_slice(&len.to_be_bytes());
        self.buf
    }
}

/// `st_mode` with the file type bits.
pub fn mode_of(stat: &FileStat) -> u32 {
    let kind = match stat.kind {
        EntryKind::Dir => 0o040000,
        EntryKind::Symlink => 0o120000,
        EntryKind::File => 0o100000,
    };
    kind | stat.permissions
}

pub fn status(id: u32, code: StatusCode, message: &str) -> Vec<u8> {
    let mut packet = Packet::new(FXP_STATUS, Some(id), 16 + message.len());
    packet
        .u32(code as u32)
        .bytes(message.as_bytes())
        .bytes(b"en");
    packet.finish()
}

pub fn ok(id: u32) -> Vec<u8> {
    status(id, StatusCode::Ok, "ok")
}

pub fn handle(id: u32, handle: &str) -> Vec<u8> {
    let mut packet = Packet::new(FXP_HANDLE, Some(id), 8 + handle.len());
    packet.bytes(handle.as_bytes());
    packet.finish()
}

pub fn data(id: u32, data: &[u8]) -> Vec<u8> {
    let mut packet = start_data(id, data.len());
    packet.extend_from_slice(data);
    finish_data(packet)
}

/// Bytes of an `SSH_FXP_DATA` packet before its data: length, type, id, data length.
pub const DATA_HEADER: usize = 13;

/// Starts an `SSH_FXP_DATA` reply for up to `capacity` bytes of data, which the caller appends
/// (a download's read-ahead copies file data straight into it); [`finish_data`] fills in the
/// lengths.
pub fn start_data(id: u32, capacity: usize) -> Vec<u8> {
    let mut packet = Vec::with_capacity(DATA_HEADER + capacity);
    packet.extend_from_slice(&[0, 0, 0, 0, FXP_DATA]);
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&[0, 0, 0, 0]);
    packet
}

/// Ends a reply of [`start_data`]: everything after the header is its data. A reply shorter
/// than the room it was started with gives the rest back: the reply budget
/// (`budgets.maxQueuedReplyBytes`) counts a reply's length, so a 1-byte reply must not hold
/// 64 KiB (a client reading 64 KiB at the end of a file and never reading the answers would
/// otherwise pin 64 KiB per ~14 bytes of budget).
pub fn finish_data(mut packet: Vec<u8>) -> Vec<u8> {
    let length = (packet.len() - 4) as u32;
    let data_length = (packet.len() - DATA_HEADER) as u32;
    packet[..4].copy_from_slice(&length.to_be_bytes());
    packet[9..DATA_HEADER].copy_from_slice(&data_length.to_be_bytes());
    if packet.capacity() > packet.len() + REPLY_SLACK {
        packet.shrink_to_fit();
    }
    packet
}

/// Unused room a reply buffer may keep: the reply budget counts lengths, so a buffer must not
/// hold much more memory than its length (a finished DATA reply; a reply or batch handed to
/// russh, `replies`).
pub const REPLY_SLACK: usize = 1024;

pub fn attrs(id: u32, stat: &FileStat) -> Vec<u8> {
    let mut packet = Packet::new(FXP_ATTRS, Some(id), 32);
    packet.attrs(stat);
    packet.finish()
}

/// `ls -l` style line for READDIR's longname.
pub fn long_name(name: &str, stat: &FileStat, owner: &str) -> String {
    let kind = match stat.kind {
        EntryKind::Dir => 'd',
        EntryKind::Symlink => 'l',
        EntryKind::File => '-',
    };
    let mut perms = String::with_capacity(9);
    for shift in [6u32, 3, 0] {
        let bits = (stat.permissions >> shift) & 7;
        perms.push(if bits & 4 != 0 { 'r' } else { '-' });
        perms.push(if bits & 2 != 0 { 'w' } else { '-' });
        perms.push(if bits & 1 != 0 { 'x' } else { '-' });
    }
    let when = jiff::Timestamp::from_second(stat.mtime.min(i64::MAX as u64) as i64)
        .map(|t| t.strftime("%b %d %Y %H:%M").to_string())
        .unwrap_or_default();
    format!(
        "{kind}{perms}    1 {owner:<8} {owner:<8} {:>8} {when} {name}",
        stat.size
    )
}

/// Reads the fields of an extension request payload.
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    pub fn u32(&mut self) -> Option<u32> {
        let (head, rest) = self.data.split_at_checked(4)?;
        self.data = rest;
        Some(u32::from_be_bytes(head.try_into().ok()?))
    }

    pub fn u64(&mut self) -> Option<u64> {
        let (head, rest) = self.data.split_at_checked(8)?;
        self.data = rest;
        Some(u64::from_be_bytes(head.try_into().ok()?))
    }

    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()? as usize;
        let (head, rest) = self.data.split_at_checked(len)?;
        self.data = rest;
        Some(head)
    }

    pub fn string(&mut self) -> Option<String> {
        self.bytes()
            .and_then(|b| std::str::from_utf8(b).ok())
            .map(str::to_string)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_packet_layout() {
        let packet = status(7, StatusCode::NoSuchFile, "gone");
        assert_eq!(&packet[..4], &((packet.len() - 4) as u32).to_be_bytes());
        assert_eq!(packet[4], FXP_STATUS);
        assert_eq!(&packet[5..9], &7u32.to_be_bytes());
        assert_eq!(&packet[9..13], &2u32.to_be_bytes());
        let mut reader = Reader::new(&packet[13..]);
        assert_eq!(reader.string().as_deref(), Some("gone"));
        assert_eq!(reader.string().as_deref(), Some("en"));
        assert!(reader.u32().is_none());
    }

    #[test]
    fn a_data_reply_filled_in_place_is_the_data_packet() {
        for size in [0usize, 1, 13, 65_536] {
            let data: Vec<u8> = (0..size).map(|i| (i * 7 + 1) as u8).collect();
            let mut packet = start_data(9, size);
            packet.extend_from_slice(&data);
            let packet = finish_data(packet);
            assert_eq!(&packet[..4], &((size + 9) as u32).to_be_bytes());
            assert_eq!(packet[4], FXP_DATA);
            assert_eq!(&packet[5..9], &9u32.to_be_bytes());
            assert_eq!(&packet[9..13], &(size as u32).to_be_bytes());
            assert_eq!(&packet[DATA_HEADER..], &data[..]);
        }
    }

    /// The reply budget counts lengths: a short reply to a large READ must not keep the room.
    #[test]
    fn a_short_data_reply_does_not_keep_the_room_of_a_large_read() {
        let mut packet = start_data(3, 65_536);
        packet.push(b'x');
        let packet = finish_data(packet);
        assert_eq!(packet.len(), DATA_HEADER + 1);
        assert!(
            packet.capacity() <= packet.len() + REPLY_SLACK,
            "{}",
            packet.capacity()
        );
        let mut full = start_data(3, 65_536);
        full.resize(DATA_HEADER + 65_536, 7);
        assert_eq!(finish_data(full).len(), DATA_HEADER + 65_536);
    }

    #[test]
    fn long_name_looks_like_ls() {
        let stat = FileStat {
            kind: EntryKind::Dir,
            size: 4096,
            permissions: 0o755,
            atime: 0,
            mtime: 0,
        };
        let line = long_name("docs", &stat, "alice");
        assert!(line.starts_with("drwxr-xr-x"), "{line}");
        assert!(line.ends_with(" docs"), "{line}");
    }
}
