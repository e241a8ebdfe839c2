//! Disk reads of a segment, in chunks kept in flight ahead of a sequential reader.
//!
//! O_DIRECT bypasses the kernel's page cache and with it the kernel's readahead: a reader
//! that waits for each read before asking for the next leaves the device idle between
//! calls. A `ReadStream` splits every read into `CHUNK_BYTES` requests issued together (so
//! one large read keeps several requests at the device) and, once a reader has come back
//! for the bytes right after its last read, keeps up to `AHEAD_BYTES_MAX` more in flight.
//! A first read, or one elsewhere in the file, reads only what it asked for.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use glommio::io::ReadResult;

use crate::error::Result;
use crate::file::SegmentFile;
use crate::types::Offset;

/// Size of one read request.
const CHUNK_BYTES: u64 = 256 << 10;
/// Most bytes read ahead of a sequential reader, beyond what it asked for.
const AHEAD_BYTES_MAX: u64 = 4 << 20;

/// `size` bytes at file position `at`, requested or read.
struct Chunk {
    at: u64,
    size: u64,
    state: ChunkState,
}

enum ChunkState {
    Pending(glommio::Task<Result<ReadResult>>),
    Ready(ReadResult),
}

/// One reader's position in one segment file and the chunks read for it.
pub struct ReadStream {
    file: SegmentFile,
    /// The offset the reader is expected to ask for next, and the file position of the
    /// batch that holds it.
    next: Option<(Offset, u64)>,
    /// File position of the first byte of `chunks.front()`.
    start: u64,
    /// File position just after the last chunk requested.
    requested: u64,
    chunks: VecDeque<Chunk>,
    pub(crate) used: Instant,
}

impl std::fmt::Debug for ReadStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadStream")
            .field("file", &self.file.path())
            .field("next", &self.next)
            .field("start", &self.start)
            .field("requested", &self.requested)
            .finish_non_exhaustive()
    }
}

impl ReadStream {
    pub fn new(file: SegmentFile) -> ReadStream {
        ReadStream {
            file,
            next: None,
            start: 0,
            requested: 0,
            chunks: VecDeque::new(),
            used: Instant::now(),
        }
    }

    /// Where the batch holding `offset` starts, if this stream's last read ended there.
    pub fn continues_at(&self, file: &SegmentFile, offset: Offset) -> Option<u64> {
        match self.next {
            Some((next, position)) if next == offset && self.file.same_file(file) => Some(position),
            _ => None,
        }
    }

    /// Records where the reader's last read ended.
    pub fn set_next(&mut self, offset: Offset, position: u64) {
        self.next = Some((offset, position));
    }

    /// Reads `length` bytes at `position`, fewer where the file (or `end`, the readable
    /// end) stops. Reading ahead happens when `position` continues the previous read. On an
    /// error the stream must be dropped.
    pub async fn read(&mut self, position: u64, length: u64, end: u64) -> Result<Bytes> {
        self.used = Instant::now();
        let sequential = self
            .chunks
            .front()
            .is_some_and(|chunk| chunk.at <= position)
            && position <= self.requested;
        if !sequential {
            self.chunks.clear();
            self.requested = position;
        }
        // Chunks wholly before `position` were read for a reader that has moved on.
        while self
            .chunks
            .front()
            .is_some_and(|chunk| chunk.at + chunk.size <= position)
        {
            self.chunks.pop_front();
        }
        let wanted = (position + length).min(end);
        let ahead = if sequential {
            (3 * length).min(AHEAD_BYTES_MAX)
        } else {
            0
        };
        let target = (wanted + ahead).min(end);
        while self.requested < target {
            let at = self.requested;
            let size = CHUNK_BYTES.min(target - at);
            let file = self.file.clone();
            let task =
                glommio::spawn_local(async move { file.read_chunk(at, size as usize).await });
            self.chunks.push_back(Chunk {
                at,
                size,
                state: ChunkState::Pending(task),
            });
            self.requested += size;
        }
        let mut out = BytesMut::with_capacity(wanted.saturating_sub(position) as usize);
        for chunk in self.chunks.iter_mut() {
            if chunk.at >= wanted {
                break;
            }
            if let ChunkState::Pending(task) = &mut chunk.state {
                chunk.state = ChunkState::Ready(task.await?);
            }
            let ChunkState::Ready(data) = &chunk.state else {
                unreachable!("a pending chunk was awaited above")
            };
            let from = position.saturating_sub(chunk.at) as usize;
            let to = ((wanted - chunk.at) as usize).min(data.len());
            if from < to {
                out.extend_from_slice(&data[from..to]);
            }
            if (data.len() as u64) < chunk.size {
                // The file is shorter than its readable end claimed: stop at what is there.
                break;
            }
        }
        Ok(out.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Storage;
    use rand::{Rng, SeedableRng};

    fn run(test: impl AsyncFnOnce() + Send + 'static) {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(1 << 20)
            .spawn(move || test())
            .expect("executor starts")
            .join()
            .expect("test body completes");
    }

    fn pattern(length: usize) -> Vec<u8> {
        (0..length)
            .map(|n| (n as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3])
            .collect()
    }

    #[test]
    fn sequential_and_random_reads_return_the_file_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment.log");
        let content = pattern(3 * CHUNK_BYTES as usize + 12_345);
        std::fs::write(&path, &content).unwrap();
        run(async move || {
            let file = SegmentFile::open(&path, false, Storage::default())
                .await
                .unwrap();
            let size = content.len() as u64;
            let mut stream = ReadStream::new(file);
            let mut random = rand::rngs::StdRng::seed_from_u64(7);
            let mut position = 0;
            for _ in 0..200 {
                if random.random_ratio(1, 5) {
                    position = random.random_range(0..size);
                }
                let length = random.random_range(1..CHUNK_BYTES + 5000);
                let read = stream.read(position, length, size).await.unwrap();
                let end = (position + length).min(size);
                assert_eq!(&read[..], &content[position as usize..end as usize]);
                position = if end == size {
                    0
                } else {
                    end - random.random_range(0..(end - position).min(100))
                };
            }
        });
    }

    #[test]
    fn reads_ahead_only_for_a_reader_that_continues() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segment.log");
        let content = pattern(8 * CHUNK_BYTES as usize);
        std::fs::write(&path, &content).unwrap();
        run(async move || {
            let file = SegmentFile::open(&path, false, Storage::default())
                .await
                .unwrap();
            let size = content.len() as u64;
            let mut stream = ReadStream::new(file);
            stream.read(1000, 100_000, size).await.unwrap();
            assert_eq!(
                stream.requested, 101_000,
                "a first read reads only its bytes"
            );
            stream.read(101_000, 100_000, size).await.unwrap();
            assert_eq!(
                stream.requested, 501_000,
                "a continuing read asks for three times as much again"
            );
            stream.read(5 * CHUNK_BYTES, 100, size).await.unwrap();
            assert_eq!(
                stream.requested,
                5 * CHUNK_BYTES + 100,
                "a jump starts over"
            );
            assert_eq!(stream.chunks.len(), 1);
            // A readable end short of the file bounds both the answer and the readahead.
            let end = 5 * CHUNK_BYTES + 150;
            let read = stream.read(5 * CHUNK_BYTES + 100, 1000, end).await.unwrap();
            assert_eq!(read.len(), 50);
            assert_eq!(stream.requested, end);
        });
    }
}
