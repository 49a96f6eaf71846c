//! Leases and keeping them alive.

use std::sync::Arc;
use std::time::Duration;

use conclave_proto::v1::{self, lease_client::LeaseClient};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{Client, Consistency, Error};

/// A granted lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    pub id: u64,
    pub ttl_ms: u64,
}

impl Client {
    /// Grants a lease of `ttl` (raised to 1 s if shorter). Attach keys with
    /// `SetRequest.lease` / `HSetRequest.lease`; keep it alive with [`Client::keep_alive`].
    pub async fn grant_lease(&self, ttl: Duration) -> Result<Lease, Error> {
        let request = v1::LeaseGrantRequest {
            ttl_ms: ttl.as_millis() as u64,
            write: self.next_write(),
        };
        let response = self
            .call(request, |channel, r| async move {
                LeaseClient::new(channel).grant(r).await
            })
            .await?;
        Ok(Lease {
            id: response.id,
            ttl_ms: response.ttl_ms,
        })
    }

    /// Ends a lease now, deleting what is attached; returns how many keys and fields went.
    pub async fn revoke_lease(&self, id: u64) -> Result<u64, Error> {
        let request = v1::LeaseRevokeRequest {
            id,
            write: self.next_write(),
        };
        let response = self
            .call(request, |channel, r| async move {
                LeaseClient::new(channel).revoke(r).await
            })
            .await?;
        Ok(response.deleted)
    }

    /// Restarts a lease's TTL once; [`Error::LeaseLost`] if it no longer exists.
    pub async fn keep_alive_once(&self, id: u64) -> Result<u64, Error> {
        let request = v1::LeaseKeepAliveRequest { id };
        let response = self
            .call(request, |channel, r| async move {
                LeaseClient::new(channel).keep_alive_once(r).await
            })
            .await?;
        match response.ttl_ms {
            0 => Err(Error::LeaseLost(id)),
            ttl => Ok(ttl),
        }
    }

    /// A lease's granted TTL, time left and attachments.
    pub async fn lease_time_to_live(&self, id: u64) -> Result<v1::LeaseTimeToLiveResponse, Error> {
        let request = v1::LeaseTimeToLiveRequest {
            id,
            read: self.read_options(Consistency::Session),
        };
        self.call(request, |channel, r| async move {
            LeaseClient::new(channel).time_to_live(r).await
        })
        .await
    }

    /// Keeps `lease` alive in the background (a keep-alive every third of its TTL, failing over
    /// between nodes) until the returned keeper is dropped or the lease is lost.
    pub fn keep_alive(&self, lease: Lease) -> LeaseKeeper {
        let (lost_tx, lost) = watch::channel(false);
        let client = self.clone();
        let period = Duration::from_millis((lease.ttl_ms / 3).max(100));
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match client.keep_alive_once(lease.id).await {
                    Ok(_) => {}
                    Err(Error::LeaseLost(_)) => {
                        let _ = lost_tx.send(true);
                        return;
                    }
                    // No node answered within the failover budget: keep trying while the TTL
                    // may still be saved.
                    Err(e) => tracing_free_warn(lease.id, &e),
                }
            }
        });
        LeaseKeeper {
            lease,
            task: Arc::new(task),
            lost,
        }
    }
}

/// Reports a keep-alive failure on stderr (the SDK has no logging dependency).
fn tracing_free_warn(id: u64, error: &Error) {
    eprintln!("conclave: keeping lease {id} alive failed: {error}");
}

/// Keeps a lease alive; dropping it stops the keep-alives (the lease then expires after its TTL).
pub struct LeaseKeeper {
    lease: Lease,
    task: Arc<JoinHandle<()>>,
    lost: watch::Receiver<bool>,
}

impl LeaseKeeper {
    pub fn lease(&self) -> Lease {
        self.lease
    }

    pub fn id(&self) -> u64 {
        self.lease.id
    }

    /// Resolves when the lease is found to have ended.
    pub async fn lost(&mut self) {
        let _ = self.lost.wait_for(|lost| *lost).await;
    }

    /// Stops the keep-alives without revoking the lease.
    pub fn stop(self) {}
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}
