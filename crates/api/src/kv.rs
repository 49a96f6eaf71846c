//! The `Kv` service: strings, hashes, sets, transactions and scans.

use std::time::Instant;

use conclave_consensus::{Consistency, Node};
use conclave_proto::v1::kv_server::{Kv, KvServer};
use conclave_proto::v1::*;
use conclave_state::{Bytes, Command, Machine, Outcome, ReadError, Revision, Value, WriteReply};
use tonic::{Request, Response, Status};

use crate::convert::{
    check_key, compare, consistency, delete_command, field, hdel_command, hset_command,
    sadd_command, set_command, srem_command, txn_op, wrong_type,
};
use crate::gateway::{outcome_status, Gateway};

/// Most keys one scan returns.
const SCAN_LIMIT: usize = 10_000;

/// Serves `conclave.v1.Kv` from one node.
#[derive(Clone)]
pub struct KvService {
    gw: Gateway,
}

impl KvService {
    pub fn new(node: Node) -> Self {
        KvService {
            gw: Gateway::new(node),
        }
    }

    /// The tonic service to mount on the node's listener.
    pub fn into_server(self) -> KvServer<Self> {
        KvServer::new(self).max_decoding_message_size(crate::MAX_REQUEST_BYTES)
    }

    async fn write(
        &self,
        options: Option<WriteOptions>,
        command: Command,
        deadline: Instant,
    ) -> Result<WriteReply, Status> {
        self.gw.write(options, command, deadline).await
    }

    /// Reads under one key: checks the key, waits for the read barrier, then runs `read`.
    async fn read<R>(
        &self,
        key: &[u8],
        consistency: Consistency,
        deadline: Instant,
        read: impl FnOnce(&Machine, u64) -> Result<R, Status>,
    ) -> Result<(Revision, R), Status> {
        check_key(key)?;
        self.gw.read(consistency, deadline, read).await
    }

    /// Reads a list of byte strings (hash fields or values, set members) under the request's key.
    async fn items(
        &self,
        request: Request<KeyReadRequest>,
        pick: impl FnOnce(&Machine, &[u8], u64) -> Result<Vec<Vec<u8>>, ReadError>,
    ) -> Reply<ItemsResponse> {
        let deadline = self.deadline(&request);
        let r = request.into_inner();
        let (revision, items) = self
            .read(&r.key, consistency(r.read), deadline, |m, now| {
                pick(m, &r.key, now).map_err(wrong_type)
            })
            .await?;
        Ok(Response::new(ItemsResponse {
            header: self.header(revision),
            items,
        }))
    }

    fn header(&self, revision: Revision) -> Option<ResponseHeader> {
        self.gw.header(revision)
    }

    fn deadline<T>(&self, request: &Request<T>) -> Instant {
        self.gw.deadline(request)
    }

    fn count(&self, reply: WriteReply) -> Response<CountResponse> {
        let count = match reply.outcome {
            Outcome::Count(n) => n,
            _ => 0,
        };
        Response::new(CountResponse {
            header: self.header(reply.revision),
            count,
        })
    }
}

/// A SET's outcome on the wire.
fn set_response(outcome: Outcome, header: Option<ResponseHeader>) -> Result<SetResponse, Status> {
    match outcome {
        Outcome::Set { applied, previous } => Ok(SetResponse {
            header,
            applied,
            previous: previous.map(Bytes::into_vec),
        }),
        other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl Kv for KvService {
    async fn get(&self, request: Request<GetRequest>) -> Reply<GetResponse> {
        let deadline = self.deadline(&request);
        let r = request.into_inner();
        let (revision, kv) = self
            .read(&r.key, consistency(r.read), deadline, |m, now| {
                let record = m.get(&r.key, now).map_err(wrong_type)?;
                Ok(record.map(|rec| KeyValue {
                    key: r.key.clone(),
                    value: match &rec.value {
                        Value::String(v) => v.to_vec(),
                        _ => unreachable!("get() returns strings only"),
                    },
                    create_revision: rec.created,
                    mod_revision: rec.modified,
                    ttl_ms: rec.expires_at.map_or(0, |d| d.saturating_sub(now).max(1)),
                }))
            })
            .await?;
        Ok(Response::new(GetResponse {
            header: self.header(revision),
            kv,
        }))
    }

    async fn set(&self, request: Request<SetRequest>) -> Reply<SetResponse> {
        let deadline = self.deadline(&request);
        let r = request.into_inner();
        let options = r.write;
        let reply = self.write(options, set_command(r)?, deadline).await?;
        Ok(Response::new(set_response(
            reply.outcome,
            self.header(reply.revision),
        )?))
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Reply<DeleteResponse> {
        let deadline = self.deadline(&request);
        let r = request.into_inner();
        let options = r.write;
        let reply = self.write(options, delete_command(r), deadline).await?;
        let deleted = match reply.outcome {
            Outcome::Count(n) => n,
            _ => 0,
        };
        Ok(Response::new(DeleteResponse {
            header: self.header(reply.revision),
            deleted,
        }))
    }

    async fn h_set(&self, request: Request<HSetRequest>) -> Reply<HSetResponse> {
        let deadline = self.deadline(&request);
        let r = request.into_inner();
        let options = r.write;
        let reply = self.write(options, hset_command(r), deadline).await?;
        let added = match reply.outcome {
            Outcome::Count(n) => n,
            _ => 0,
        };
        Ok(Response::new(HSetResponse {
            header: self.header(reply.revision),
            added,
        }))
    }

    async fn h_get(&self, request: Request<HGetRequest>) -> Reply<HGetResponse> {
        let deadline = self.deadline(&request);
        let r = request.into_inner();
        let (revision, value) = self
            .read(&r.key, consistency(r.read), deadline, |m, now| {
                let hash = m.hash(&r.key, now).map_err(wrong_type)?;
                Ok(hash.and_then(|h| h.get(field(&r.field)).map(|v| v.to_vec())))
            })
            .await?;
        Ok(Response::new(HGetResponse {
            header: self.header(revision),
            value,
        }))
    }

    async fn hm_get(&self, request: Request<HmGetRequest>) -> Reply<HmGetResponse> {
        let deadline = self.deadline(&request);
        let r = request.into_inner();
        let (revision, values) = self
            .read(&r.key, consistency(r.read), deadline, |m, now| {
                let hash = m.hash(&r.key, now).map_err(wrong_type)?;
                Ok(r.fields
                    .iter()
                    .map(|f| OptionalValue {
                        value: hash.and_then(|h| h.get(field(f)).map(|v| v.to_vec())),
                    })
                    .collect())
            })
            .await?;
        Ok(Response::new(HmGetResponse {
            header: self.header(revision),
            values,
        }))
    }

    async fn h_del(&self, request: Request<HDelRequest>) -> Reply<CountResponse> {
        let deadline = self.deadline(&request);
        let r = request.into_inner();
        let options = r.write;
        Ok(self.count(self.write(options, hdel_command(r), deadline).await?))
    }

    async fn h_get_all(&self, request: Request<KeyReadRequest>) -> Reply<HGetAllResponse> {
        let deadline = self.deadline(&request);
        let r = request.into_inner();
        let (revision, fields) = self
            .read(&r.key, consistency(r.read), deadline, |m, now| {
                let hash = m.hash(&r.key, now).map_err(wrong_type)?;
                Ok(hash
                    .into_iter()
                    .flatten()
                    .map(|(field, value)| HashField {
                        field: field.to_vec(),
                        value: value.to_vec(),
                    })
                    .collect())
            })
            .await?;
        Ok(Response::new(HGetAllResponse {
            header: self.header(revision),
            fields,
        }))
    }

    async fn h_keys(&self, request: Request<KeyReadRequest>) -> Reply<ItemsResponse> {
        self.items(request, |m, key, now| {
            let hash = m.hash(key, now)?;
            Ok(hash
                .into_iter()
                .flat_map(|h| h.keys().map(|k| k.to_vec()))
                .collect())
        })
        .await
    }

    async fn h_vals(&self, request: Request<KeyReadRequest>) -> Reply<ItemsResponse> {
        self.items(request, |m, key, now| {
            let hash = m.hash(key, now)?;
            Ok(hash
                .into_iter()
                .flat_map(|h| h.values().map(|v| v.to_vec()))
                .collect())
        })
        .await
    }

    async fn s_add(&self, request: Request<SAddRequest>) -> Reply<CountResponse> {
        let deadline = self.deadline(&request);
        let r = request.into_inner();
        let options = r.write;
        Ok(self.count(self.write(options, sadd_command(r), deadline).await?))
    }

    async fn s_rem(&self, request: Request<SRemRequest>) -> Reply<CountResponse> {
        let deadline = self.deadline(&request);
        let r = request.into_inner();
        let options = r.write;
        Ok(self.count(self.write(options, srem_command(r), deadline).await?))
    }

    async fn s_members(&self, request: Request<KeyReadRequest>) -> Reply<ItemsResponse> {
        self.items(request, |m, key, now| {
            let set = m.set_members(key, now)?;
            Ok(set.into_iter().flatten().map(|m| m.to_vec()).collect())
        })
        .await
    }

    async fn txn(&self, request: Request<TxnRequest>) -> Reply<TxnResponse> {
        let deadline = self.deadline(&request);
        let r = request.into_inner();
        let txn = conclave_state::Transaction {
            compares: r
                .compares
                .into_iter()
                .map(compare)
                .collect::<Result<_, _>>()?,
            success: r
                .success
                .into_iter()
                .map(txn_op)
                .collect::<Result<_, _>>()?,
            failure: r
                .failure
                .into_iter()
                .map(txn_op)
                .collect::<Result<_, _>>()?,
        };
        let reply = self
            .gw
            .write_unchecked_outcome(r.write, Command::Txn(Box::new(txn)), deadline)
            .await?;
        let Outcome::Txn {
            succeeded,
            outcomes,
        } = reply.outcome
        else {
            return Err(Status::internal(format!(
                "unexpected outcome {:?}",
                reply.outcome
            )));
        };
        let results = outcomes
            .into_iter()
            .map(|outcome| {
                use txn_op_result::Result as R;
                let result = match outcome_status(&outcome) {
                    Err(status) => R::Error(status.message().to_string()),
                    Ok(()) => match outcome {
                        Outcome::Count(n) => R::Count(n),
                        set @ Outcome::Set { .. } => R::Set(set_response(set, None)?),
                        other => {
                            return Err(Status::internal(format!("unexpected outcome {other:?}")))
                        }
                    },
                };
                Ok(TxnOpResult {
                    result: Some(result),
                })
            })
            .collect::<Result<_, Status>>()?;
        Ok(Response::new(TxnResponse {
            header: self.header(reply.revision),
            succeeded,
            results,
        }))
    }

    async fn scan(&self, request: Request<ScanRequest>) -> Reply<ScanResponse> {
        let deadline = self.deadline(&request);
        let r = request.into_inner();
        let limit = match r.limit as usize {
            0 => SCAN_LIMIT,
            n => n.min(SCAN_LIMIT),
        };
        let (revision, (entries, more)) = self
            .gw
            .read(consistency(r.read), deadline, |m, now| {
                let mut entries = Vec::new();
                let mut more = false;
                for (key, record) in m.keys_with_prefix(&r.prefix, now) {
                    if !r.after.is_empty() && key.as_slice() <= r.after.as_slice() {
                        continue;
                    }
                    if entries.len() == limit {
                        more = true;
                        break;
                    }
                    entries.push(ScanEntry {
                        key: key.to_vec(),
                        r#type: record.value.type_name().to_string(),
                        create_revision: record.created,
                        mod_revision: record.modified,
                        value: match &record.value {
                            Value::String(v) => v.to_vec(),
                            _ => Vec::new(),
                        },
                        ttl_ms: record
                            .expires_at
                            .map_or(0, |d| d.saturating_sub(now).max(1)),
                        lease: record.lease.unwrap_or(0),
                    });
                }
                Ok((entries, more))
            })
            .await?;
        Ok(Response::new(ScanResponse {
            header: self.header(revision),
            entries,
            more,
        }))
    }
}
