//! Frames: a fixed 10-byte header (magic, u16 protocol version, u32 body length,
//! all little-endian) followed by a postcard body.
//!
//! The length is checked against the limit before a single byte of the body is
//! buffered, so a peer cannot make the reader allocate what it announces.

use std::io::{self, Read, Write};

use serde::{de::DeserializeOwned, Serialize};

/// The four bytes every frame starts with.
pub const MAGIC: [u8; 4] = *b"TEND";
/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// The oldest protocol version this build still answers.
pub const MIN_PROTOCOL_VERSION: u16 = 1;
/// Size of the frame header in bytes.
pub const HEADER_LEN: usize = 10;
/// The largest body accepted, in bytes.
pub const MAX_FRAME_LEN: u32 = 1 << 20;

/// Why a frame could not be read, written or decoded.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The first four bytes were not [`MAGIC`].
    #[error("frame: bad magic {0:02x?} (expected \"TEND\")")]
    BadMagic([u8; 4]),
    /// A protocol version outside what this build speaks.
    #[error("frame: unsupported protocol version {version} (this build speaks {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION})")]
    UnsupportedVersion {
        /// The version in the header.
        version: u16,
    },
    /// The header announced a body over the limit.
    #[error("frame: body of {len} bytes is over the limit of {max} bytes")]
    TooLong {
        /// Announced length.
        len: u32,
        /// Limit in force.
        max: u32,
    },
    /// The body is not a valid encoding of the expected message.
    #[error("frame: cannot decode {what}: {source}")]
    Body {
        /// The message type that was expected.
        what: &'static str,
        /// What postcard said.
        source: postcard::Error,
    },
    /// The body decoded but left bytes over.
    #[error("frame: {extra} trailing bytes after {what}")]
    TrailingBytes {
        /// The message type that was decoded.
        what: &'static str,
        /// How many bytes were left.
        extra: usize,
    },
    /// A later part of a message was set without an earlier one it needs
    /// on the wire (they are read back in order).
    #[error("frame: {needed_by} travels after {what}, which is not set")]
    Missing {
        /// The earlier part.
        what: &'static str,
        /// The later part.
        needed_by: &'static str,
    },
    /// The message could not be encoded.
    #[error("frame: cannot encode {what}: {source}")]
    Encode {
        /// The message type.
        what: &'static str,
        /// What postcard said.
        source: postcard::Error,
    },
    /// The peer closed the stream in the middle of a frame.
    #[error("frame: stream ended after {got} of {want} bytes")]
    Truncated {
        /// Bytes read.
        got: usize,
        /// Bytes needed.
        want: usize,
    },
    /// The peer closed the stream before a frame began.
    #[error("frame: stream closed")]
    Closed,
    /// An I/O error on the stream.
    #[error("frame: {0}")]
    Io(#[from] io::Error),
}

/// One frame off the wire: the version it was written with and its raw body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Protocol version from the header.
    pub version: u16,
    /// The postcard body.
    pub body: Vec<u8>,
}

impl Frame {
    /// Decode the body as `T`, refusing trailing bytes.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, FrameError> {
        decode_body(&self.body)
    }
}

fn type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

/// Decode a postcard body as `T`, refusing trailing bytes.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, FrameError> {
    let what = type_name::<T>();
    let (value, rest) =
        postcard::take_from_bytes::<T>(body).map_err(|source| FrameError::Body { what, source })?;
    if !rest.is_empty() {
        return Err(FrameError::TrailingBytes {
            what,
            extra: rest.len(),
        });
    }
    Ok(value)
}

/// Encode `msg` as one frame (header and body) of the current protocol version.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    encode_with_version(PROTOCOL_VERSION, msg)
}

/// Encode `msg` as one frame carrying `version` in its header.
pub fn encode_with_version<T: Serialize>(version: u16, msg: &T) -> Result<Vec<u8>, FrameError> {
    let what = type_name::<T>();
    let body = postcard::to_allocvec(msg).map_err(|source| FrameError::Encode { what, source })?;
    wrap_body(version, &body)
}

/// One frame of the current protocol version around an already encoded body.
pub fn wrap_body(version: u16, body: &[u8]) -> Result<Vec<u8>, FrameError> {
    let len = u32::try_from(body.len())
        .ok()
        .filter(|len| *len <= MAX_FRAME_LEN)
        .ok_or(FrameError::TooLong {
            len: u32::try_from(body.len()).unwrap_or(u32::MAX),
            max: MAX_FRAME_LEN,
        })?;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(body);
    Ok(out)
}

/// A parsed, checked frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Protocol version.
    pub version: u16,
    /// Body length in bytes (already checked against the limit).
    pub len: u32,
}

/// Parse and check a header: magic, version range, length limit.
pub fn parse_header(bytes: &[u8; HEADER_LEN], max: u32) -> Result<Header, FrameError> {
    let mut magic = [0u8; 4];
    magic.copy_from_slice(&bytes[..4]);
    if magic != MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&version) {
        return Err(FrameError::UnsupportedVersion { version });
    }
    let len = u32::from_le_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]);
    if len > max {
        return Err(FrameError::TooLong { len, max });
    }
    Ok(Header { version, len })
}

/// Incremental decoder for non-blocking readers: push what arrived, take whole frames.
#[derive(Debug)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    max: u32,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    /// A decoder with the default limit, [`MAX_FRAME_LEN`].
    pub fn new() -> Self {
        Self::with_max(MAX_FRAME_LEN)
    }

    /// A decoder refusing bodies over `max` bytes.
    pub fn with_max(max: u32) -> Self {
        Self {
            buf: Vec::new(),
            max,
        }
    }

    /// Append bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held that do not yet form a whole frame.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Take the next whole frame, if one has arrived. A header error is reported as
    /// soon as the header is complete, before any of the body is waited for.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.buf.len() < HEADER_LEN {
            // A wrong magic is reported as early as its bytes are there.
            let n = self.buf.len().min(4);
            if self.buf[..n] != MAGIC[..n] {
                let mut magic = [0u8; 4];
                magic[..n].copy_from_slice(&self.buf[..n]);
                return Err(FrameError::BadMagic(magic));
            }
            return Ok(None);
        }
        let mut head = [0u8; HEADER_LEN];
        head.copy_from_slice(&self.buf[..HEADER_LEN]);
        let header = parse_header(&head, self.max)?;
        let total = HEADER_LEN + header.len as usize;
        if self.buf.len() < total {
            return Ok(None);
        }
        let body = self.buf[HEADER_LEN..total].to_vec();
        self.buf.drain(..total);
        Ok(Some(Frame {
            version: header.version,
            body,
        }))
    }
}

/// Read one whole frame from a blocking reader.
pub fn read_frame<R: Read>(reader: &mut R, max: u32) -> Result<Frame, FrameError> {
    let mut head = [0u8; HEADER_LEN];
    let got = read_full(reader, &mut head)?;
    if got == 0 {
        return Err(FrameError::Closed);
    }
    if got < HEADER_LEN {
        return Err(FrameError::Truncated {
            got,
            want: HEADER_LEN,
        });
    }
    let header = parse_header(&head, max)?;
    let mut body = vec![0u8; header.len as usize];
    let got = read_full(reader, &mut body)?;
    if got < body.len() {
        return Err(FrameError::Truncated {
            got,
            want: body.len(),
        });
    }
    Ok(Frame {
        version: header.version,
        body,
    })
}

/// Write one message as a frame to a blocking writer.
pub fn write_frame<W: Write, T: Serialize>(writer: &mut W, msg: &T) -> Result<(), FrameError> {
    let bytes = encode(msg)?;
    writer.write_all(&bytes)?;
    writer.flush()?;
    Ok(())
}

fn read_full<R: Read>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_through_decoder_byte_by_byte() {
        let bytes = encode(&(7u32, String::from("hi"))).unwrap();
        let mut dec = FrameDecoder::new();
        let mut frames = Vec::new();
        for b in &bytes {
            dec.push(std::slice::from_ref(b));
            if let Some(f) = dec.next_frame().unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames.len(), 1);
        let v: (u32, String) = frames[0].decode().unwrap();
        assert_eq!(v, (7, "hi".to_string()));
        assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn over_limit_is_refused_before_the_body_arrives() {
        let mut dec = FrameDecoder::with_max(16);
        let mut head = MAGIC.to_vec();
        head.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
        head.extend_from_slice(&17u32.to_le_bytes());
        dec.push(&head);
        assert!(matches!(
            dec.next_frame(),
            Err(FrameError::TooLong { len: 17, max: 16 })
        ));
    }

    #[test]
    fn bad_magic_is_reported_on_the_first_byte() {
        let mut dec = FrameDecoder::new();
        dec.push(b"G");
        assert!(matches!(dec.next_frame(), Err(FrameError::BadMagic(_))));
    }

    #[test]
    fn unknown_version_is_refused() {
        let bytes = encode_with_version(PROTOCOL_VERSION + 1, &1u8).unwrap();
        let mut dec = FrameDecoder::new();
        dec.push(&bytes);
        assert!(matches!(
            dec.next_frame(),
            Err(FrameError::UnsupportedVersion { .. })
        ));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        assert!(matches!(
            decode_body::<u8>(&[1, 2]),
            Err(FrameError::TrailingBytes { extra: 1, .. })
        ));
    }

    #[test]
    fn blocking_read_reports_truncation() {
        let bytes = encode(&String::from("hello")).unwrap();
        let mut r = &bytes[..bytes.len() - 1];
        assert!(matches!(
            read_frame(&mut r, MAX_FRAME_LEN),
            Err(FrameError::Truncated { .. })
        ));
        let mut empty: &[u8] = &[];
        assert!(matches!(
            read_frame(&mut empty, MAX_FRAME_LEN),
            Err(FrameError::Closed)
        ));
    }
}
