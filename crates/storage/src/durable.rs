//! Making sled's writes durable: sled's flush writes its log with `sync_file_range`, which leaves
//! the file's metadata and the disk's write cache unflushed; a `syncfs` of the filesystem
//! afterwards completes it (see [`sync_filesystem`] for why not `fdatasync` of the log alone).
//! Both run in one blocking task: one hand-off per flush, not one to sled's thread pool and
//! another to Tokio's blocking pool.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::Arc;

use sled::Db;

/// The sled database and its log file, flushed and synced together.
#[derive(Clone)]
pub(crate) struct Disk {
    db: Db,
    log_file: Arc<File>,
}

impl Disk {
    pub(crate) fn open(db: &Db, dir: &Path) -> io::Result<Self> {
        Ok(Disk {
            db: db.clone(),
            log_file: Arc::new(File::open(dir.join("db"))?),
        })
    }

    /// Returns once every write made before the call is on disk.
    pub(crate) async fn persist(&self) -> io::Result<()> {
        #[cfg(test)]
        PERSISTS.with(|n| n.set(n.get() + 1));
        let disk = self.clone();
        tokio::task::spawn_blocking(move || disk.persist_now())
            .await
            .map_err(io::Error::other)?
    }

    /// [`Disk::persist`], on the calling thread.
    pub(crate) fn persist_now(&self) -> io::Result<()> {
        self.db.flush().map_err(io::Error::other)?;
        sync_filesystem(&self.log_file)
    }
}

/// `syncfs(2)` on the filesystem holding `file`: sled writes values above its blob threshold
/// (about 128 KiB) to files of their own that it never syncs, so syncing the log file alone is
/// not enough.
fn sync_filesystem(file: &File) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: `file` is an open descriptor for the duration of the call.
    if unsafe { libc::syncfs(file.as_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
thread_local! {
    /// How many times [`Disk::persist`] was called on this thread (tests run one per thread and
    /// call it from their own runtime, so counts do not mix between tests).
    static PERSISTS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The number of [`Disk::persist`] calls made so far on this thread.
#[cfg(test)]
pub(crate) fn persists() -> u64 {
    PERSISTS.with(|n| n.get())
}
