//! Locks with fencing tokens.

use std::time::Duration;

use conclave_proto::v1::{self, lock_client::LockClient};

use crate::{Client, Error};

/// How a lock is held and acquired.
#[derive(Clone, Copy, Debug, Default)]
pub struct LockOptions {
    /// Released by itself after this long (unless a lease is given).
    pub ttl: Option<Duration>,
    /// Released when this lease ends.
    pub lease: Option<u64>,
    /// Wait up to this long while another owner holds it.
    pub wait: Duration,
}

/// A held lock. Its token grows with every acquisition of the lock: pass it to whatever the lock
/// protects, and refuse tokens older than the newest seen (or guard a write with
/// [`crate::cmp::create_revision_eq`] on [`LockGuard::key`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockGuard {
    pub name: String,
    pub owner: Vec<u8>,
    pub token: u64,
}

impl LockGuard {
    /// The key holding the lock.
    pub fn key(&self) -> Vec<u8> {
        format!("conclave:lock:{}", self.name).into_bytes()
    }
}

impl Client {
    /// Acquires lock `name` for `owner`; None if another owner still holds it after
    /// `options.wait`. Acquiring a lock the owner already holds returns its current token.
    pub async fn lock(
        &self,
        name: &str,
        owner: impl AsRef<[u8]>,
        options: LockOptions,
    ) -> Result<Option<LockGuard>, Error> {
        let request = v1::LockAcquireRequest {
            name: name.to_string(),
            owner: owner.as_ref().to_vec(),
            ttl_ms: options.ttl.map_or(0, |t| t.as_millis() as u64),
            lease: options.lease.unwrap_or(0),
            wait_ms: options.wait.as_millis() as u64,
            write: self.next_write(),
        };
        let response = self
            .call(request, |channel, r| async move {
                let mut client = LockClient::new(channel);
                client.acquire(r).await
            })
            .await?;
        Ok(response.acquired.then(|| LockGuard {
            name: name.to_string(),
            owner: owner.as_ref().to_vec(),
            token: response.token,
        }))
    }

    /// Releases a held lock; FAILED_PRECONDITION if the owner no longer holds it (its TTL ran
    /// out and someone else took it).
    pub async fn unlock(&self, guard: &LockGuard) -> Result<(), Error> {
        let request = v1::LockReleaseRequest {
            name: guard.name.clone(),
            owner: guard.owner.clone(),
            write: self.next_write(),
        };
        self.call(request, |channel, r| async move {
            LockClient::new(channel).release(r).await
        })
        .await?;
        Ok(())
    }
}
