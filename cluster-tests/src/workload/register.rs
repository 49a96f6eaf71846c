//! The register workload: reads, writes of unique values and compare-and-sets on a few keys.
//! Over RESP a compare-and-set is `WATCH k; GET k; MULTI; SET k new; EXEC` (a `GET` that finds
//! another value is recorded as a read, and the attempt ends there); over the SDK it is a
//! transaction comparing the value.

use conclave_client::{cmp, op, Client};

use super::{sdk_write_outcome, write_outcome, ClientContext, RespClient, REGISTERS, SDK_TIMEOUT};
use crate::history::{Call, Outcome};
use crate::resp::Reply;

/// What to do next, drawn by the client's generator.
enum Next {
    Read,
    Write,
    Cas,
}

fn next(context: &mut ClientContext) -> (String, Next) {
    let key = format!("register:{}", context.rng.below(REGISTERS as u64));
    let next = match context.rng.below(10) {
        0..=3 => Next::Read,
        4..=7 => Next::Write,
        _ => Next::Cas,
    };
    (key, next)
}

pub async fn resp(mut context: ClientContext) {
    let mut client = RespClient::new(&context.address);
    let mut written = 0u64;
    // The last value this client saw in each register: what a compare-and-set expects.
    let mut seen: std::collections::HashMap<String, String> = Default::default();
    let (history, id, node) = (context.history.clone(), context.id, context.node);
    while context.running() {
        if !client.ready().await {
            continue;
        }
        let (key, next) = next(&mut context);
        match next {
            Next::Cas if seen.contains_key(&key) => {
                written += 1;
                let old = seen[&key].clone();
                let new = format!("{id}-{written}");
                let cas = history.invoke(id, node, "resp", &key);
                if !matches!(
                    client.call(&[b"WATCH", key.as_bytes()]).await,
                    Ok(Reply::Simple(_))
                ) {
                    history.complete(
                        cas,
                        Call::Cas { old, new },
                        Outcome::Fail("WATCH refused".into()),
                    );
                    continue;
                }
                let get = history.invoke(id, node, "resp", &key);
                let current = match client.call(&[b"GET", key.as_bytes()]).await {
                    Ok(Reply::Bulk(value)) => value.map(super::lossy),
                    _ => {
                        history.complete(
                            cas,
                            Call::Cas { old, new },
                            Outcome::Fail("GET failed".into()),
                        );
                        client.call(&[b"UNWATCH"]).await.ok();
                        continue;
                    }
                };
                history.complete(
                    get,
                    Call::Read {
                        value: current.clone(),
                    },
                    Outcome::Ok,
                );
                if current.as_deref() != Some(old.as_str()) {
                    history.complete(
                        cas,
                        Call::Cas { old, new },
                        Outcome::Fail("value differs".into()),
                    );
                    if let Some(current) = current {
                        seen.insert(key.clone(), current);
                    }
                    client.call(&[b"UNWATCH"]).await.ok();
                    continue;
                }
                let queued = client.call(&[b"MULTI"]).await.is_ok()
                    && matches!(
                        client.call(&[b"SET", key.as_bytes(), new.as_bytes()]).await,
                        Ok(Reply::Simple(_))
                    );
                if !queued {
                    history.complete(
                        cas,
                        Call::Cas { old, new },
                        Outcome::Fail("MULTI refused".into()),
                    );
                    client.call(&[b"DISCARD"]).await.ok();
                    continue;
                }
                let exec = client.call(&[b"EXEC"]).await;
                let outcome = match &exec {
                    Ok(Reply::Array(None)) => Outcome::Fail("EXEC aborted: the key changed".into()),
                    _ => write_outcome(
                        &exec,
                        |r| matches!(r, Reply::Array(Some(items)) if items == &[Reply::Simple("OK".into())]),
                    ),
                };
                if outcome == Outcome::Ok {
                    seen.insert(key.clone(), new.clone());
                }
                history.complete(cas, Call::Cas { old, new }, outcome);
            }
            Next::Read => {
                let read = history.invoke(id, node, "resp", &key);
                match client.call(&[b"GET", key.as_bytes()]).await {
                    Ok(Reply::Bulk(value)) => {
                        let value = value.map(super::lossy);
                        if let Some(v) = &value {
                            seen.insert(key.clone(), v.clone());
                        }
                        history.complete(read, Call::Read { value }, Outcome::Ok);
                    }
                    Ok(other) => history.complete(
                        read,
                        Call::Read { value: None },
                        Outcome::Fail(format!("{other:?}")),
                    ),
                    Err(e) => history.complete(
                        read,
                        Call::Read { value: None },
                        Outcome::Unknown(e.to_string()),
                    ),
                }
            }
            Next::Write | Next::Cas => {
                written += 1;
                let value = format!("{id}-{written}");
                let write = history.invoke(id, node, "resp", &key);
                let reply = client
                    .call(&[b"SET", key.as_bytes(), value.as_bytes()])
                    .await;
                let outcome = write_outcome(&reply, |r| r == &Reply::Simple("OK".into()));
                if outcome == Outcome::Ok {
                    seen.insert(key.clone(), value.clone());
                }
                history.complete(write, Call::Write { value }, outcome);
            }
        }
        context.think().await;
    }
}

pub async fn sdk(mut context: ClientContext) {
    let Ok(client) = Client::connect(&context.grpc).await else {
        return;
    };
    let mut written = 0u64;
    let mut seen: std::collections::HashMap<String, String> = Default::default();
    let (history, id, node) = (context.history.clone(), context.id, context.node);
    while context.running() {
        let (key, next) = next(&mut context);
        match next {
            Next::Read => {
                let read = history.invoke(id, node, "grpc", &key);
                let got =
                    tokio::time::timeout(SDK_TIMEOUT, client.get_with(&key, context.reads.sdk()))
                        .await;
                match got {
                    Ok(Ok(kv)) => {
                        let value = kv.map(|kv| super::lossy(kv.value));
                        if let Some(v) = &value {
                            seen.insert(key.clone(), v.clone());
                        }
                        history.complete(read, Call::Read { value }, Outcome::Ok);
                    }
                    Ok(Err(e)) => history.complete(
                        read,
                        Call::Read { value: None },
                        Outcome::Fail(e.to_string()),
                    ),
                    Err(_) => history.complete(
                        read,
                        Call::Read { value: None },
                        Outcome::Unknown("no answer".into()),
                    ),
                }
            }
            Next::Cas if seen.contains_key(&key) => {
                written += 1;
                let old = seen[&key].clone();
                let new = format!("{id}-{written}");
                let cas = history.invoke(id, node, "grpc", &key);
                let txn = client
                    .txn()
                    .when(cmp::value_eq(&key, &old))
                    .then(op::set(&key, &new))
                    .commit();
                let result = tokio::time::timeout(SDK_TIMEOUT, txn).await;
                let outcome = match &result {
                    Ok(Ok(response)) if !response.succeeded => {
                        Outcome::Fail("the value differed".into())
                    }
                    _ => sdk_write_outcome(&result),
                };
                if outcome == Outcome::Ok {
                    seen.insert(key.clone(), new.clone());
                }
                history.complete(cas, Call::Cas { old, new }, outcome);
            }
            Next::Write | Next::Cas => {
                written += 1;
                let value = format!("{id}-{written}");
                let write = history.invoke(id, node, "grpc", &key);
                let result = tokio::time::timeout(SDK_TIMEOUT, client.set(&key, &value)).await;
                let outcome = sdk_write_outcome(&result);
                if outcome == Outcome::Ok {
                    seen.insert(key.clone(), value.clone());
                }
                history.complete(write, Call::Write { value }, outcome);
            }
        }
        context.think().await;
    }
}
