//! The UDP header (RFC 768): its length and where its length and checksum fields are.

/// Length of the UDP header.
pub const UDP_HEADER: usize = 8;
/// Offset of the length field.
pub const UDP_LEN: usize = 4;
/// Offset of the checksum field.
pub const UDP_CHECKSUM: usize = 6;
