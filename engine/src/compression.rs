//! Kafka's record-batch compression codecs: none, gzip, snappy, lz4 and zstd.
//!
//! Decoding is bounded: a batch that inflates past `decompressed_bytes_max` is an error,
//! never an unbounded allocation.

use std::io::{Read, Write};

use crate::error::{Error, Result};

/// The codec in bits 0-2 of a batch's attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    None = 0,
    Gzip = 1,
    Snappy = 2,
    Lz4 = 3,
    Zstd = 4,
}

/// zstd level used when the engine builds batches (Kafka's default level).
pub const ZSTD_LEVEL_DEFAULT: i32 = 3;

/// The framing snappy-java (and so the Java Kafka client) writes around snappy blocks.
const XERIAL_MAGIC: [u8; 8] = [0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0];
const XERIAL_HEADER_BYTES: usize = 16;
const XERIAL_BLOCK_BYTES: usize = 32 * 1024;

impl Compression {
    pub fn from_id(id: u8) -> Result<Compression> {
        match id {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Gzip),
            2 => Ok(Compression::Snappy),
            3 => Ok(Compression::Lz4),
            4 => Ok(Compression::Zstd),
            _ => Err(Error::UnknownCompression { id }),
        }
    }

    pub fn id(self) -> u8 {
        self as u8
    }

    /// The name Kafka's `compression.type` uses.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }

    pub fn from_name(name: &str) -> Option<Compression> {
        [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ]
        .into_iter()
        .find(|codec| codec.name() == name)
    }
}

/// Compresses `input` into a new buffer with `codec`.
pub fn compress(codec: Compression, input: &[u8]) -> Vec<u8> {
    let mut output = Vec::new();
    compress_into(codec, input, &mut output);
    output
}

/// Compresses `input` with `codec`, appending to `output`.
pub fn compress_into(codec: Compression, input: &[u8], output: &mut Vec<u8>) {
    match codec {
        Compression::None => output.extend_from_slice(input),
        Compression::Gzip => {
            let mut encoder = flate2::write::GzEncoder::new(output, flate2::Compression::fast());
            encoder
                .write_all(input)
                .expect("writing to a Vec cannot fail");
            encoder.finish().expect("writing to a Vec cannot fail");
        }
        Compression::Snappy => {
            output.reserve(XERIAL_HEADER_BYTES + input.len() / 2);
            output.extend_from_slice(&XERIAL_MAGIC);
            output.extend_from_slice(&1i32.to_be_bytes());
            output.extend_from_slice(&1i32.to_be_bytes());
            let mut encoder = snap::raw::Encoder::new();
            for block in input.chunks(XERIAL_BLOCK_BYTES) {
                let compressed = encoder
                    .compress_vec(block)
                    .expect("a 32 KiB block is within snappy's limit");
                output.extend_from_slice(&(compressed.len() as i32).to_be_bytes());
                output.extend_from_slice(&compressed);
            }
        }
        Compression::Lz4 => {
            let mut encoder = lz4_flex::frame::FrameEncoder::new(output);
            encoder
                .write_all(input)
                .expect("writing to a Vec cannot fail");
            encoder.finish().expect("writing to a Vec cannot fail");
        }
        // The bulk API writes the content size into the frame header, which decoders
        // (librdkafka) use to size their output.
        Compression::Zstd => output.extend_from_slice(&compress_zstd(input)),
    }
}

thread_local! {
    /// One zstd compression context per thread, reused: making one per batch (about 1% of
    /// a broker's CPU under many small MQTT batches) cost as much as compressing one.
    static ZSTD_COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// One zstd frame of `input`, with its content size in the header.
fn compress_zstd(input: &[u8]) -> Vec<u8> {
    let reused = ZSTD_COMPRESSOR.with(|slot| {
        let mut slot = slot.borrow_mut();
        if slot.is_none() {
            *slot = zstd::bulk::Compressor::new(ZSTD_LEVEL_DEFAULT).ok();
        }
        slot.as_mut()?.compress(input).ok()
    });
    reused.unwrap_or_else(|| {
        zstd::bulk::compress(input, ZSTD_LEVEL_DEFAULT)
            .expect("zstd compression into a Vec cannot fail")
    })
}

/// Decompresses `input`, refusing output larger than `decompressed_bytes_max`.
pub fn decompress(
    codec: Compression,
    input: &[u8],
    decompressed_bytes_max: usize,
) -> Result<Vec<u8>> {
    match codec {
        Compression::None => {
            if input.len() > decompressed_bytes_max {
                return Err(Error::DecompressedTooLarge {
                    max: decompressed_bytes_max,
                });
            }
            Ok(input.to_vec())
        }
        Compression::Gzip => read_bounded(
            flate2::read::MultiGzDecoder::new(input),
            decompressed_bytes_max,
            "gzip",
        ),
        Compression::Snappy => decompress_snappy(input, decompressed_bytes_max),
        Compression::Lz4 => read_bounded(
            lz4_flex::frame::FrameDecoder::new(input),
            decompressed_bytes_max,
            "lz4",
        ),
        Compression::Zstd => decompress_zstd(input, decompressed_bytes_max),
    }
}

thread_local! {
    /// One zstd decompression context per thread, reused: making one per batch cost more
    /// than inflating a small batch.
    static ZSTD: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// zstd as Kafka clients send it: one frame, usually with its content size, which is
/// checked against the bound before anything is allocated. Frames without a size, or more
/// than one, go through the streaming decoder.
fn decompress_zstd(input: &[u8], max: usize) -> Result<Vec<u8>> {
    if let Ok(Some(size)) = zstd::zstd_safe::get_frame_content_size(input) {
        if size > max as u64 {
            return Err(Error::DecompressedTooLarge { max });
        }
        let inflated = ZSTD.with(|slot| {
            let mut slot = slot.borrow_mut();
            if slot.is_none() {
                *slot = zstd::bulk::Decompressor::new().ok();
            }
            slot.as_mut()?.decompress(input, size as usize).ok()
        });
        if let Some(inflated) = inflated.filter(|inflated| inflated.len() as u64 == size) {
            return Ok(inflated);
        }
    }
    let decoder = zstd::stream::read::Decoder::with_buffer(input)
        .map_err(|e| Error::invalid_batch(format!("zstd: {e}")))?;
    read_bounded(decoder, max, "zstd")
}

fn read_bounded(reader: impl Read, max: usize, codec: &str) -> Result<Vec<u8>> {
    let mut output = Vec::new();
    reader
        .take(max as u64 + 1)
        .read_to_end(&mut output)
        .map_err(|e| Error::invalid_batch(format!("{codec}: {e}")))?;
    if output.len() > max {
        return Err(Error::DecompressedTooLarge { max });
    }
    Ok(output)
}

/// Snappy as Kafka clients send it: xerial-framed (Java) or one raw block (librdkafka).
fn decompress_snappy(input: &[u8], max: usize) -> Result<Vec<u8>> {
    if !input.starts_with(&XERIAL_MAGIC) {
        return decompress_snappy_block(input, max, Vec::new());
    }
    if input.len() < XERIAL_HEADER_BYTES {
        return Err(Error::invalid_batch("snappy: truncated xerial header"));
    }
    let mut rest = &input[XERIAL_HEADER_BYTES..];
    let mut output = Vec::new();
    while !rest.is_empty() {
        let Some((length, tail)) = rest.split_first_chunk::<4>() else {
            return Err(Error::invalid_batch(
                "snappy: truncated xerial block length",
            ));
        };
        let length = i32::from_be_bytes(*length);
        let length = usize::try_from(length)
            .ok()
            .filter(|&length| length <= tail.len())
            .ok_or_else(|| Error::invalid_batch("snappy: xerial block length out of range"))?;
        output = decompress_snappy_block(&tail[..length], max, output)?;
        rest = &tail[length..];
    }
    Ok(output)
}

fn decompress_snappy_block(block: &[u8], max: usize, mut output: Vec<u8>) -> Result<Vec<u8>> {
    let length = snap::raw::decompress_len(block)
        .map_err(|e| Error::invalid_batch(format!("snappy: {e}")))?;
    if output.len() + length > max {
        return Err(Error::DecompressedTooLarge { max });
    }
    let start = output.len();
    output.resize(start + length, 0);
    snap::raw::Decoder::new()
        .decompress(block, &mut output[start..])
        .map_err(|e| Error::invalid_batch(format!("snappy: {e}")))?;
    Ok(output)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    fn sample() -> Vec<u8> {
        (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect()
    }

    #[test]
    fn every_codec_round_trips() {
        let input = sample();
        for codec in ALL {
            let compressed = compress(codec, &input);
            let output = decompress(codec, &compressed, input.len()).unwrap();
            assert_eq!(output, input, "{codec:?}");
            assert_eq!(Compression::from_id(codec.id()).unwrap(), codec);
            assert_eq!(Compression::from_name(codec.name()), Some(codec));
        }
    }

    #[test]
    fn every_codec_refuses_to_inflate_past_the_bound() {
        let input = vec![0u8; 1 << 20];
        for codec in ALL {
            let compressed = compress(codec, &input);
            let error = decompress(codec, &compressed, 1000).unwrap_err();
            assert!(
                matches!(error, Error::DecompressedTooLarge { max: 1000 }),
                "{codec:?}"
            );
        }
    }

    #[test]
    fn raw_snappy_from_librdkafka_is_accepted() {
        let input = sample();
        let raw = snap::raw::Encoder::new().compress_vec(&input).unwrap();
        assert_eq!(
            decompress(Compression::Snappy, &raw, input.len()).unwrap(),
            input
        );
    }

    #[test]
    fn garbage_is_an_error_for_every_codec() {
        let garbage = [
            0x82, b'S', b'N', b'A', b'P', b'P', b'Y', 0, 0, 0, 0, 1, 0, 0, 0, 1, 9,
        ];
        for codec in ALL.into_iter().skip(1) {
            assert!(decompress(codec, &garbage, 1 << 20).is_err(), "{codec:?}");
        }
        assert!(Compression::from_id(5).is_err());
    }
}
