//! The counter workload: each client increments `counter:<client>` and retries an increment the
//! way go-redis does (up to three more attempts on an error it retries, with a growing pause).
//! One logical increment is one operation in the history, however many attempts it took.

use std::time::Duration;

use super::{retried_by_clients, write_outcome, ClientContext, RespClient};
use crate::history::{Call, Outcome};
use crate::resp::Reply;

/// go-redis's default `MaxRetries`.
const RETRIES: u32 = 3;

pub async fn resp(mut context: ClientContext) {
    let mut client = RespClient::new(&context.address);
    let key = format!("counter:{}", context.id);
    let (history, id, node) = (context.history.clone(), context.id, context.node);
    while context.running() {
        if !client.ready().await {
            continue;
        }
        let incr = history.invoke(id, node, "resp", &key);
        let mut attempt = 0;
        let outcome = loop {
            let reply = client.call(&[b"INCR", key.as_bytes()]).await;
            let retry = matches!(&reply, Ok(Reply::Error(m)) if retried_by_clients(m));
            if !retry || attempt == RETRIES {
                break write_outcome(&reply, |r| matches!(r, Reply::Integer(_)));
            }
            attempt += 1;
            // go-redis's backoff: 8 ms doubling up to 512 ms.
            tokio::time::sleep(Duration::from_millis((8u64 << attempt).min(512))).await;
            if !client.ready().await {
                break Outcome::Unknown("reconnect failed before a retry".into());
            }
        };
        history.complete(incr, Call::Incr, outcome);
        context.think().await;
    }
}
