//! The lock and lease workload.
//!
//! - Locks: a client on every node takes the lock `chaos` (TTL 2 s), makes a write fenced by its
//!   token (a transaction that succeeds only while the lock key was created at the token's
//!   revision), and releases it. A holder paused or cut off past its TTL loses the lock to the
//!   next one; its fenced write must then be refused. One hold in ten stalls past the TTL on
//!   purpose.
//! - Leases: a client on every node keeps a 10 s lease alive for the whole run with a key
//!   attached; after the faults the lease and its key must still exist.

use std::time::Duration;

use conclave_client::{cmp, op, Client, LockOptions};

use super::{ClientContext, SDK_TIMEOUT};
use crate::history::{Call, Outcome};

const LOCK: &str = "chaos";
const LOCK_TTL: Duration = Duration::from_secs(2);
const LEASE_TTL: Duration = Duration::from_secs(10);
/// Where fenced writes go.
pub const FENCED: &str = "locks:fenced";

pub async fn lock(mut context: ClientContext) {
    let Ok(client) = Client::connect(&context.grpc).await else {
        return;
    };
    let (history, id, node) = (context.history.clone(), context.id, context.node);
    let owner = format!("client-{id}");
    let mut n = 0u64;
    while context.running() {
        let acquire = history.invoke(id, node, "grpc", LOCK);
        let options = LockOptions {
            ttl: Some(LOCK_TTL),
            lease: None,
            wait: Duration::from_millis(500),
        };
        let guard =
            match tokio::time::timeout(SDK_TIMEOUT, client.lock(LOCK, &owner, options)).await {
                Ok(Ok(Some(guard))) => {
                    history.complete(acquire, Call::Acquire { token: guard.token }, Outcome::Ok);
                    guard
                }
                Ok(Ok(None)) => {
                    history.complete(
                        acquire,
                        Call::Acquire { token: 0 },
                        Outcome::Fail("held by another".into()),
                    );
                    continue;
                }
                Ok(Err(e)) => {
                    history.complete(
                        acquire,
                        Call::Acquire { token: 0 },
                        Outcome::Unknown(e.to_string()),
                    );
                    continue;
                }
                Err(_) => {
                    history.complete(
                        acquire,
                        Call::Acquire { token: 0 },
                        Outcome::Unknown("no answer".into()),
                    );
                    continue;
                }
            };
        // Hold it a while (a nemesis may pause this node or cut it off meanwhile). One time in
        // ten the holder stalls past its TTL, as a paused process does: the lock may move on,
        // and its fenced write must then be refused.
        let hold = if context.rng.below(10) == 0 {
            LOCK_TTL + Duration::from_millis(500)
        } else {
            Duration::from_millis(20 + context.rng.below(200))
        };
        tokio::time::sleep(hold).await;
        n += 1;
        let fenced = history.invoke(id, node, "grpc", FENCED);
        let field = format!("{}-{id}-{n}", guard.token);
        let txn = client
            .txn()
            .when(cmp::create_revision_eq(guard.key(), guard.token))
            .then(op::hset(FENCED, &field, "1"))
            .commit();
        let (call, outcome) = match tokio::time::timeout(SDK_TIMEOUT, txn).await {
            Ok(Ok(response)) => {
                let revision = response.header.map_or(0, |h| h.revision);
                let call = Call::Fenced {
                    token: guard.token,
                    revision,
                };
                if response.succeeded {
                    (call, Outcome::Ok)
                } else {
                    (call, Outcome::Fail("refused: the lock moved on".into()))
                }
            }
            Ok(Err(e)) => (
                Call::Fenced {
                    token: guard.token,
                    revision: 0,
                },
                Outcome::Unknown(e.to_string()),
            ),
            Err(_) => (
                Call::Fenced {
                    token: guard.token,
                    revision: 0,
                },
                Outcome::Unknown("no answer".into()),
            ),
        };
        history.complete(fenced, call, outcome);
        // Released (refused if the TTL ran out first: then someone else may hold it).
        let _ = tokio::time::timeout(SDK_TIMEOUT, client.unlock(&guard)).await;
        context.think().await;
    }
}

pub async fn lease(context: ClientContext) {
    let Ok(client) = Client::connect(&context.grpc).await else {
        return;
    };
    let (history, id, node) = (context.history.clone(), context.id, context.node);
    let key = format!("lease:{id}");
    // Granted and attached before the faults begin (they start 2 s into the run).
    let lease = match client.grant_lease(LEASE_TTL).await {
        Ok(lease) => lease,
        Err(e) => {
            let check = history.invoke(id, node, "grpc", &key);
            history.complete(
                check,
                Call::LeaseKept { alive: false },
                Outcome::Fail(format!("grant: {e}")),
            );
            return;
        }
    };
    let attach = conclave_client::v1::SetRequest {
        key: key.clone().into_bytes(),
        value: b"kept".to_vec(),
        lease: lease.id,
        ..Default::default()
    };
    if client.set_with(attach).await.is_err() {
        return;
    }
    let mut keeper = client.keep_alive(lease);
    let lost_during_run = tokio::select! {
        () = keeper.lost() => true,
        () = async { while context.running() { tokio::time::sleep(Duration::from_millis(100)).await } } => false,
    };
    // The faults are healed by now: the lease and its key must still be there.
    let check = history.invoke(id, node, "grpc", &key);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let alive = loop {
        let ttl = client.lease_time_to_live(lease.id).await;
        let value = client
            .get_with(&key, conclave_client::Consistency::Linearizable)
            .await;
        match (ttl, value) {
            (Ok(ttl), Ok(value)) => break !lost_during_run && ttl.found && value.is_some(),
            _ if std::time::Instant::now() > deadline => break false,
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    history.complete(check, Call::LeaseKept { alive }, Outcome::Ok);
    drop(keeper);
    let _ = client.revoke_lease(lease.id).await;
}
