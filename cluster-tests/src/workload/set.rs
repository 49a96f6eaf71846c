//! The set workload: every add is of an element no one added before (`<client>-<n>`), to a set
//! (`SADD set:members`, SDK `SAdd set:sdk`) or as a hash field (`HSET hash:fields`).

use conclave_client::Client;

use super::{sdk_write_outcome, write_outcome, ClientContext, RespClient, SDK_TIMEOUT};
use crate::history::Call;
use crate::resp::Reply;

pub async fn resp(mut context: ClientContext) {
    let mut client = RespClient::new(&context.address);
    let mut n = 0u64;
    let (history, id, node) = (context.history.clone(), context.id, context.node);
    while context.running() {
        if !client.ready().await {
            continue;
        }
        n += 1;
        let element = format!("{id}-{n}");
        let (key, reply) = if n.is_multiple_of(2) {
            let add = history.invoke(id, node, "resp", "set:members");
            (
                add,
                client
                    .call(&[b"SADD", b"set:members", element.as_bytes()])
                    .await,
            )
        } else {
            let add = history.invoke(id, node, "resp", "hash:fields");
            (
                add,
                client
                    .call(&[b"HSET", b"hash:fields", element.as_bytes(), b"1"])
                    .await,
            )
        };
        let outcome = write_outcome(&reply, |r| r == &Reply::Integer(1));
        history.complete(key, Call::Add { element }, outcome);
        context.think().await;
    }
}

pub async fn sdk(mut context: ClientContext) {
    let Ok(client) = Client::connect(&context.grpc).await else {
        return;
    };
    let mut n = 0u64;
    let (history, id, node) = (context.history.clone(), context.id, context.node);
    while context.running() {
        n += 1;
        let element = format!("{id}-{n}");
        let add = history.invoke(id, node, "grpc", "set:sdk");
        let result = tokio::time::timeout(SDK_TIMEOUT, client.sadd("set:sdk", &[&element])).await;
        history.complete(add, Call::Add { element }, sdk_write_outcome(&result));
        context.think().await;
    }
}
