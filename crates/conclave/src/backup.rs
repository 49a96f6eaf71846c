//! Backups from the command line: `ctl snapshot save FILE` and `ctl snapshot status FILE`, and
//! `server --restore FILE`, which seeds a new node's data directory from one.
//!
//! Does not own: the backup's format (the storage crate), how a node starts from it (the
//! consensus crate's `seed_from_backup`).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use conclave_consensus::ClusterSpec;
use conclave_storage::Backup;

/// The file in a data directory that records which backup seeded it (its checksum).
const RESTORED_FROM: &str = "restored-from";

/// One line describing a backup.
fn describe(backup: &Backup, bytes: usize) -> String {
    let header = &backup.header;
    format!(
        "revision {}, {} keys, {bytes} bytes, from node {} of cluster {:016x}, sha256 {}",
        header.revision,
        header.keys,
        header.node,
        header.cluster_id,
        backup.checksum_hex()
    )
}

/// Reads and checks the backup at `path`.
fn read(path: &Path) -> anyhow::Result<(Backup, usize)> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let backup = conclave_storage::read_backup(&bytes)
        .with_context(|| format!("{} is not a backup this build can restore", path.display()))?;
    Ok((backup, bytes.len()))
}

/// `ctl snapshot save FILE`: takes a backup from the node in use, checks it, and writes it to
/// `path` durably (a whole file or none: written beside it, synced, then renamed).
pub async fn save(client: &conclave_client::Client, path: &Path) -> anyhow::Result<()> {
    let (_, bytes) = client.snapshot().await?;
    let backup = conclave_storage::read_backup(&bytes).context("the node sent a damaged backup")?;
    let partial = PathBuf::from(format!("{}.part", path.display()));
    // Readable by its owner only: it holds every key.
    let mut file = {
        use std::os::unix::fs::OpenOptionsExt;
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&partial)
            .with_context(|| format!("cannot create {}", partial.display()))?
    };
    file.write_all(&bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&partial, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        File::open(dir)?.sync_all()?;
    }
    println!(
        "saved {}: {}",
        path.display(),
        describe(&backup, bytes.len())
    );
    Ok(())
}

/// `ctl snapshot status FILE`: checks a backup and describes it.
pub fn status(path: &Path) -> anyhow::Result<()> {
    let (backup, bytes) = read(path)?;
    println!("{}: {}", path.display(), describe(&backup, bytes));
    Ok(())
}

/// The checksum of the backup `data_dir` was restored from, if it was.
pub fn restored_from(data_dir: &Path) -> Option<String> {
    fs::read_to_string(data_dir.join(RESTORED_FROM))
        .ok()
        .map(|text| text.trim().to_string())
        .filter(|checksum| !checksum.is_empty())
}

/// `server --restore FILE`: seeds the empty `data_dir` of node `id` from the backup, with
/// `cluster`'s members as the voters, and records which backup did (the restored cluster's id
/// derives from it). Once only: a data directory holding anything is refused, this backup's
/// seeding included, so that a node whose disk is lost later is never seeded again by a flag
/// left in place (it would vote as a member holding the backup's state, not what it had).
pub fn restore(path: &Path, data_dir: &Path, id: u64, cluster: &ClusterSpec) -> anyhow::Result<()> {
    anyhow::ensure!(
        cluster.address(id).is_some(),
        "--restore seeds a member of --initial-cluster, which does not list node {id}"
    );
    let (backup, bytes) = read(path)?;
    if let Some(checksum) = restored_from(data_dir) {
        anyhow::bail!(
            "{} was restored from a backup (sha256 {checksum}) before: start it without --restore",
            data_dir.display()
        );
    }
    let empty = match fs::read_dir(data_dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", data_dir.display())),
    };
    anyhow::ensure!(
        empty,
        "{} already holds a node's data; --restore seeds an empty data directory only",
        data_dir.display()
    );
    conclave_consensus::seed_from_backup(data_dir, cluster, &backup.machine)
        .with_context(|| format!("cannot seed {}", data_dir.display()))?;
    // Last: a directory with the snapshot but not this record is refused by the next attempt
    // (as holding data), never started as a fresh node.
    let marker = data_dir.join(RESTORED_FROM);
    let mut file = File::create(&marker)?;
    writeln!(file, "{}", backup.checksum_hex())?;
    file.sync_all()?;
    File::open(data_dir)?.sync_all()?;
    tracing::info!(backup = %path.display(), "restored the data directory from a backup: {}", describe(&backup, bytes));
    Ok(())
}
