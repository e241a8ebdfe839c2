//! Primitive types of the Kafka wire protocol: fixed-width integers, varints, strings, bytes,
//! arrays and tagged fields, in both the classic and the flexible ("compact") encodings. The
//! generated message codecs in `messages/` are built from these.
//!
//! Every length read from the wire is checked against the bytes actually left before
//! anything is allocated, as Kafka's own readers do: a 14-byte request cannot ask for a
//! two-billion-element vector.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub reason: String,
}

impl DecodeError {
    pub fn new(reason: impl Into<String>) -> DecodeError {
        DecodeError {
            reason: reason.into(),
        }
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed Kafka message: {}", self.reason)
    }
}

impl std::error::Error for DecodeError {}

pub type Result<T> = std::result::Result<T, DecodeError>;

/// A null where the schema allows none in this version.
pub fn non_null<T>(value: Option<T>, field: &'static str) -> Result<T> {
    value.ok_or_else(|| DecodeError::new(format!("null {field}")))
}

/// One message of the protocol (a request, a response or a header), with the versions its
/// schema defines.
pub trait Message: Sized {
    const NAME: &'static str;
    /// The API key; -1 for headers.
    const API_KEY: i16;
    const VERSION_MIN: i16;
    const VERSION_MAX: i16;
    /// The first flexible version, if any.
    const FLEXIBLE_MIN: Option<i16>;
    fn decode(decoder: &mut Decoder, version: i16) -> Result<Self>;
    fn encode(&self, encoder: &mut Encoder, version: i16);
}

/// Reads a message that carries its own version in a leading i16 (the consumer protocol's
/// subscriptions and assignments inside group messages). A version newer than the schema
/// is read as the newest known: those messages only ever append fields.
pub fn decode_versioned<M: Message>(bytes: Bytes) -> Result<M> {
    let mut decoder = Decoder::new(bytes);
    let version = decoder.i16()?;
    if version < M::VERSION_MIN {
        return Err(DecodeError::new(format!("{} version {version}", M::NAME)));
    }
    M::decode(&mut decoder, version.min(M::VERSION_MAX))
}

/// A Kafka UUID (topic ids): 16 bytes, all zero meaning "none".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    pub const ZERO: Uuid = Uuid([0; 16]);
}

impl From<coremq_replication::topics::TopicId> for Uuid {
    fn from(id: coremq_replication::topics::TopicId) -> Uuid {
        Uuid(id.0)
    }
}

impl From<Uuid> for coremq_replication::topics::TopicId {
    fn from(id: Uuid) -> coremq_replication::topics::TopicId {
        coremq_replication::topics::TopicId(id.0)
    }
}

/// A `records` field: one or more stored record batches, kept as the `Bytes` they arrived
/// in (a produce request) or were read as (a fetch), so they are never copied to be sent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Records {
    chunks: Vec<Bytes>,
}

impl Records {
    pub fn new(chunks: Vec<Bytes>) -> Records {
        Records { chunks }
    }

    pub fn len(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn chunks(&self) -> &[Bytes] {
        &self.chunks
    }

    /// The bytes as one buffer: free for a decoded request, a copy for several chunks.
    pub fn to_bytes(&self) -> Bytes {
        match &self.chunks[..] {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => {
                let mut out = BytesMut::with_capacity(self.len());
                for chunk in many {
                    out.extend_from_slice(chunk);
                }
                out.freeze()
            }
        }
    }
}

impl From<Bytes> for Records {
    fn from(bytes: Bytes) -> Records {
        Records {
            chunks: vec![bytes],
        }
    }
}

/// Reads protocol primitives from a received frame; slices of it (`bytes`, `records`) share
/// the frame's memory.
#[derive(Debug)]
pub struct Decoder {
    buf: Bytes,
}

impl Decoder {
    pub fn new(buf: Bytes) -> Decoder {
        Decoder { buf }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn need(&self, bytes: usize, what: &str) -> Result<()> {
        if self.buf.len() < bytes {
            return Err(DecodeError::new(format!(
                "{what}: needs {bytes} bytes, {} left",
                self.buf.len()
            )));
        }
        Ok(())
    }

    /// The next `length` bytes, without copying.
    pub fn take(&mut self, length: usize, what: &str) -> Result<Bytes> {
        self.need(length, what)?;
        Ok(self.buf.split_to(length))
    }

    pub fn bool(&mut self) -> Result<bool> {
        Ok(self.i8()? != 0)
    }

    pub fn i8(&mut self) -> Result<i8> {
        self.need(1, "int8")?;
        Ok(self.buf.get_i8())
    }

    pub fn i16(&mut self) -> Result<i16> {
        self.need(2, "int16")?;
        Ok(self.buf.get_i16())
    }

    pub fn u16(&mut self) -> Result<u16> {
        self.need(2, "uint16")?;
        Ok(self.buf.get_u16())
    }

    pub fn i32(&mut self) -> Result<i32> {
        self.need(4, "int32")?;
        Ok(self.buf.get_i32())
    }

    pub fn u32(&mut self) -> Result<u32> {
        self.need(4, "uint32")?;
        Ok(self.buf.get_u32())
    }

    pub fn i64(&mut self) -> Result<i64> {
        self.need(8, "int64")?;
        Ok(self.buf.get_i64())
    }

    pub fn f64(&mut self) -> Result<f64> {
        self.need(8, "float64")?;
        Ok(self.buf.get_f64())
    }

    pub fn uuid(&mut self) -> Result<Uuid> {
        self.need(16, "uuid")?;
        let mut uuid = [0; 16];
        self.buf.copy_to_slice(&mut uuid);
        Ok(Uuid(uuid))
    }

    /// An unsigned LEB128 varint of at most 32 bits.
    pub fn uvarint(&mut self) -> Result<u32> {
        let mut value: u32 = 0;
        for shift in (0..35).step_by(7) {
            self.need(1, "varint")?;
            let byte = self.buf.get_u8();
            if shift == 28 && byte > 0x0f {
                return Err(DecodeError::new("varint longer than 32 bits"));
            }
            value |= u32::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::new("varint longer than 5 bytes"))
    }

    /// A length prefix: int16 or int32 (classic) or uvarint length + 1 (compact); `None` is
    /// null. Checked against the bytes left.
    fn length(&mut self, compact: bool, wide: bool, what: &str) -> Result<Option<usize>> {
        let length: i64 = if compact {
            i64::from(self.uvarint()?) - 1
        } else if wide {
            i64::from(self.i32()?)
        } else {
            i64::from(self.i16()?)
        };
        if length < 0 {
            return Ok(None);
        }
        let length = length as usize;
        self.need(length, what)?;
        Ok(Some(length))
    }

    pub fn nullable_string(&mut self, compact: bool) -> Result<Option<String>> {
        let Some(length) = self.length(compact, false, "string")? else {
            return Ok(None);
        };
        let bytes = self.buf.split_to(length);
        String::from_utf8(bytes.to_vec())
            .map(Some)
            .map_err(|_| DecodeError::new("string is not UTF-8"))
    }

    pub fn string(&mut self, compact: bool) -> Result<String> {
        self.nullable_string(compact)?
            .ok_or_else(|| DecodeError::new("null in a non-nullable string"))
    }

    pub fn nullable_bytes(&mut self, compact: bool) -> Result<Option<Bytes>> {
        let Some(length) = self.length(compact, true, "bytes")? else {
            return Ok(None);
        };
        Ok(Some(self.buf.split_to(length)))
    }

    pub fn bytes(&mut self, compact: bool) -> Result<Bytes> {
        self.nullable_bytes(compact)?
            .ok_or_else(|| DecodeError::new("null in non-nullable bytes"))
    }

    pub fn records(&mut self, compact: bool) -> Result<Option<Records>> {
        Ok(self.nullable_bytes(compact)?.map(Records::from))
    }

    /// An array's element count; `None` is null. Like Kafka, a count larger than the bytes
    /// left is refused before anything is allocated (every element takes at least a byte).
    pub fn array_length(&mut self, compact: bool) -> Result<Option<usize>> {
        let length: i64 = if compact {
            i64::from(self.uvarint()?) - 1
        } else {
            i64::from(self.i32()?)
        };
        if length < 0 {
            return Ok(None);
        }
        if length as usize > self.buf.len() {
            return Err(DecodeError::new(format!(
                "array of {length} elements in {} bytes",
                self.buf.len()
            )));
        }
        Ok(Some(length as usize))
    }

    /// An array of elements each read by `item`; `None` is null.
    pub fn array<T>(
        &mut self,
        compact: bool,
        mut item: impl FnMut(&mut Decoder) -> Result<T>,
    ) -> Result<Option<Vec<T>>> {
        let Some(length) = self.array_length(compact)? else {
            return Ok(None);
        };
        let mut items = Vec::with_capacity(length);
        for _ in 0..length {
            items.push(item(self)?);
        }
        Ok(Some(items))
    }

    /// Reads a tagged-field section, handing each field's tag and bytes to `field`; tags
    /// `field` does not know are skipped, as the protocol asks.
    pub fn tagged_fields(
        &mut self,
        mut field: impl FnMut(u32, &mut Decoder) -> Result<()>,
    ) -> Result<()> {
        let count = self.uvarint()?;
        let mut previous = None;
        for _ in 0..count {
            let tag = self.uvarint()?;
            if previous.is_some_and(|previous| tag <= previous) {
                return Err(DecodeError::new("tagged fields out of order"));
            }
            previous = Some(tag);
            let length = self.uvarint()? as usize;
            let mut inner = Decoder::new(self.take(length, "tagged field")?);
            field(tag, &mut inner)?;
        }
        Ok(())
    }
}

/// Builds an encoded message. Large `records` are kept as separate chunks instead of being
/// copied, so a fetch response goes out as the stored bytes themselves.
#[derive(Debug, Default)]
pub struct Encoder {
    current: BytesMut,
    chunks: Vec<Bytes>,
    length: usize,
}

/// Records at least this big are sent as their own chunk rather than copied.
const RECORDS_COPY_BYTES_MAX: usize = 4096;

impl Encoder {
    pub fn new() -> Encoder {
        Encoder::default()
    }

    /// Bytes encoded so far.
    pub fn len(&self) -> usize {
        self.length
    }

    pub fn is_empty(&self) -> bool {
        self.length == 0
    }

    /// The encoded message as chunks in order.
    pub fn finish(mut self) -> Vec<Bytes> {
        if !self.current.is_empty() {
            self.chunks.push(self.current.freeze());
        }
        self.chunks
    }

    /// The encoded message as one buffer (copies when records were kept apart).
    pub fn finish_bytes(self) -> Bytes {
        Records::new(self.finish()).to_bytes()
    }

    fn put(&mut self, bytes: &[u8]) {
        self.current.extend_from_slice(bytes);
        self.length += bytes.len();
    }

    pub fn bool(&mut self, value: bool) {
        self.i8(i8::from(value));
    }

    pub fn i8(&mut self, value: i8) {
        self.put(&value.to_be_bytes());
    }

    pub fn i16(&mut self, value: i16) {
        self.put(&value.to_be_bytes());
    }

    pub fn u16(&mut self, value: u16) {
        self.put(&value.to_be_bytes());
    }

    pub fn i32(&mut self, value: i32) {
        self.put(&value.to_be_bytes());
    }

    pub fn u32(&mut self, value: u32) {
        self.put(&value.to_be_bytes());
    }

    pub fn i64(&mut self, value: i64) {
        self.put(&value.to_be_bytes());
    }

    pub fn f64(&mut self, value: f64) {
        self.put(&value.to_be_bytes());
    }

    pub fn uuid(&mut self, value: Uuid) {
        self.put(&value.0);
    }

    pub fn uvarint(&mut self, mut value: u32) {
        while value >= 0x80 {
            self.current.put_u8((value as u8 & 0x7f) | 0x80);
            self.length += 1;
            value >>= 7;
        }
        self.current.put_u8(value as u8);
        self.length += 1;
    }

    fn length(&mut self, length: Option<usize>, compact: bool, wide: bool) {
        match (length, compact) {
            (None, true) => self.uvarint(0),
            (Some(length), true) => self.uvarint(length as u32 + 1),
            (None, false) if wide => self.i32(-1),
            (None, false) => self.i16(-1),
            (Some(length), false) if wide => self.i32(length as i32),
            (Some(length), false) => {
                debug_assert!(length <= i16::MAX as usize, "string too long");
                self.i16(length as i16)
            }
        }
    }

    pub fn string(&mut self, value: &str, compact: bool) {
        self.length(Some(value.len()), compact, false);
        self.put(value.as_bytes());
    }

    pub fn nullable_string(&mut self, value: Option<&str>, compact: bool) {
        match value {
            Some(value) => self.string(value, compact),
            None => self.length(None, compact, false),
        }
    }

    pub fn bytes(&mut self, value: &[u8], compact: bool) {
        self.length(Some(value.len()), compact, true);
        self.put(value);
    }

    pub fn nullable_bytes(&mut self, value: Option<&[u8]>, compact: bool) {
        match value {
            Some(value) => self.bytes(value, compact),
            None => self.length(None, compact, true),
        }
    }

    pub fn records(&mut self, value: Option<&Records>, compact: bool) {
        let Some(records) = value else {
            self.length(None, compact, true);
            return;
        };
        self.length(Some(records.len()), compact, true);
        for chunk in records.chunks() {
            if chunk.len() < RECORDS_COPY_BYTES_MAX {
                self.put(chunk);
            } else {
                if !self.current.is_empty() {
                    self.chunks.push(self.current.split().freeze());
                }
                self.chunks.push(chunk.clone());
                self.length += chunk.len();
            }
        }
    }

    pub fn array_length(&mut self, length: Option<usize>, compact: bool) {
        match (length, compact) {
            (None, true) => self.uvarint(0),
            (Some(length), true) => self.uvarint(length as u32 + 1),
            (None, false) => self.i32(-1),
            (Some(length), false) => self.i32(length as i32),
        }
    }

    pub fn array<T>(
        &mut self,
        items: Option<&[T]>,
        compact: bool,
        mut item: impl FnMut(&mut Encoder, &T),
    ) {
        self.array_length(items.map(<[T]>::len), compact);
        for value in items.unwrap_or_default() {
            item(self, value);
        }
    }

    /// Writes one tagged field: its tag, size, and the bytes `encode` writes.
    pub fn tagged_field(&mut self, tag: u32, encode: impl FnOnce(&mut Encoder)) {
        let mut inner = Encoder::new();
        encode(&mut inner);
        self.uvarint(tag);
        self.uvarint(inner.len() as u32);
        for chunk in inner.finish() {
            self.put(&chunk);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_and_refuse_overlong() {
        for value in [0, 1, 127, 128, 300, 16_383, 16_384, u32::MAX] {
            let mut encoder = Encoder::new();
            encoder.uvarint(value);
            let mut decoder = Decoder::new(encoder.finish_bytes());
            assert_eq!(decoder.uvarint().unwrap(), value);
            assert_eq!(decoder.remaining(), 0);
        }
        let mut decoder = Decoder::new(Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x7f]));
        assert!(decoder.uvarint().is_err());
        let mut decoder = Decoder::new(Bytes::from_static(&[0x80, 0x80]));
        assert!(decoder.uvarint().is_err());
    }

    #[test]
    fn strings_and_bytes_in_both_encodings() {
        for compact in [false, true] {
            let mut encoder = Encoder::new();
            encoder.string("quotes", compact);
            encoder.nullable_string(None, compact);
            encoder.bytes(b"\x00\x01", compact);
            encoder.nullable_bytes(None, compact);
            let mut decoder = Decoder::new(encoder.finish_bytes());
            assert_eq!(decoder.string(compact).unwrap(), "quotes");
            assert_eq!(decoder.nullable_string(compact).unwrap(), None);
            assert_eq!(&decoder.bytes(compact).unwrap()[..], b"\x00\x01");
            assert_eq!(decoder.nullable_bytes(compact).unwrap(), None);
            assert_eq!(decoder.remaining(), 0);
        }
    }

    #[test]
    fn lengths_beyond_the_frame_are_refused_before_allocating() {
        let mut decoder = Decoder::new(Bytes::from_static(&[0x7f, 0xff, 0xff, 0xff, 0]));
        let error = decoder.array_length(false).unwrap_err();
        assert!(
            error.reason.contains("array of 2147483647 elements"),
            "{error}"
        );
        let mut decoder = Decoder::new(Bytes::from_static(&[0x00, 0x10, b'a']));
        assert!(decoder.string(false).is_err());
        let mut decoder = Decoder::new(Bytes::from_static(&[0xff, 0xff, 0xff, 0x0f]));
        assert!(decoder.bytes(true).is_err());
    }

    #[test]
    fn large_records_are_kept_as_their_own_chunk() {
        let big = Bytes::from(vec![7u8; 10_000]);
        let small = Bytes::from_static(b"abc");
        let mut encoder = Encoder::new();
        encoder.i32(5);
        encoder.records(Some(&Records::new(vec![small, big.clone()])), true);
        encoder.i8(1);
        assert_eq!(encoder.len(), 4 + 2 + 10_003 + 1);
        let chunks = encoder.finish();
        assert_eq!(chunks.len(), 3);
        assert_eq!(
            chunks[1].as_ptr(),
            big.as_ptr(),
            "the records are not copied"
        );
        let mut decoder = Decoder::new(Records::new(chunks).to_bytes());
        assert_eq!(decoder.i32().unwrap(), 5);
        let records = decoder.records(true).unwrap().unwrap();
        assert_eq!(records.len(), 10_003);
        assert_eq!(decoder.i8().unwrap(), 1);
    }

    #[test]
    fn unknown_tagged_fields_are_skipped_and_order_is_checked() {
        let mut encoder = Encoder::new();
        encoder.uvarint(2);
        encoder.tagged_field(0, |e| e.i32(42));
        encoder.tagged_field(9, |e| e.string("x", true));
        encoder.i8(3);
        let mut decoder = Decoder::new(encoder.finish_bytes());
        let mut seen = None;
        decoder
            .tagged_fields(|tag, field| {
                if tag == 0 {
                    seen = Some(field.i32()?);
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(seen, Some(42));
        assert_eq!(decoder.i8().unwrap(), 3);

        let mut encoder = Encoder::new();
        encoder.uvarint(2);
        encoder.tagged_field(3, |e| e.i8(0));
        encoder.tagged_field(1, |e| e.i8(0));
        let mut decoder = Decoder::new(encoder.finish_bytes());
        assert!(decoder.tagged_fields(|_, _| Ok(())).is_err());
    }
}
