//! Download bytes on their way to a `*.incomplete` file: network chunks are gathered in memory and written on
//! tokio's blocking pool a MiB at a time (or sooner, when `flush` is called), so a slow or full disk never stalls
//! the async workers. The caller learns which bytes reached the file only after they did, so what it counts and
//! hashes is always exactly what a resumed download will find there.

use std::fs::File;
use std::io::{self, Write};
use std::sync::Arc;

/// How much is gathered before a write.
pub const SPOOL_BYTES: usize = 1 << 20;

pub struct Spool {
    file: Arc<File>,
    buf: Vec<u8>,
}

impl Spool {
    pub fn new(file: File) -> Self {
        Spool {
            file: Arc::new(file),
            buf: Vec::with_capacity(SPOOL_BYTES),
        }
    }

    /// Bytes gathered and not yet written.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Gathers `chunk`; true when a write is due.
    pub fn queue(&mut self, chunk: &[u8]) -> bool {
        self.buf.extend_from_slice(chunk);
        self.buf.len() >= SPOOL_BYTES
    }

    /// Writes what is gathered on the blocking pool, then shows those bytes to `written` (to count and hash them).
    /// On an error nothing is shown: the file may hold part of them, and the caller discards or re-reads it.
    pub async fn flush(&mut self, written: impl FnOnce(&[u8])) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let buf = std::mem::take(&mut self.buf);
        let file = self.file.clone();
        let buf = tokio::task::spawn_blocking(move || (&*file).write_all(&buf).map(|()| buf))
            .await
            .map_err(io::Error::other)??;
        written(&buf);
        self.buf = buf;
        self.buf.clear();
        Ok(())
    }

    /// Flushes the file to disk (on the blocking pool); call after the last `flush`.
    pub async fn sync(self) -> io::Result<()> {
        let file = self.file;
        tokio::task::spawn_blocking(move || file.sync_all())
            .await
            .map_err(io::Error::other)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_are_shown_once_written_and_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.incomplete");
        let mut spool = Spool::new(File::create(&path).unwrap());
        let mut seen = Vec::new();
        assert!(!spool.queue(b"abc"));
        assert_eq!(spool.pending(), 3);
        assert_eq!(std::fs::read(&path).unwrap(), b"");
        spool.flush(|b| seen.extend_from_slice(b)).await.unwrap();
        assert_eq!((spool.pending(), &seen[..]), (0, &b"abc"[..]));
        let big = vec![7u8; SPOOL_BYTES];
        assert!(spool.queue(&big));
        spool.flush(|b| seen.extend_from_slice(b)).await.unwrap();
        spool.flush(|_| panic!("nothing pending")).await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), seen);
        assert_eq!(seen.len(), 3 + SPOOL_BYTES);
    }

    #[tokio::test]
    async fn a_failed_write_shows_nothing() {
        // /dev/full answers every write with ENOSPC.
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full");
        let mut spool = Spool::new(full);
        spool.queue(b"abc");
        let e = spool
            .flush(|_| panic!("not written"))
            .await
            .expect_err("ENOSPC");
        assert_eq!(e.raw_os_error(), Some(28), "{e}");
    }
}
