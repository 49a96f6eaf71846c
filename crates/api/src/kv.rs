//! The `Kv` service: strings, hashes and sets.

use std::time::Instant;

use conclave_consensus::{now_ms, Consistency, Node};
use conclave_proto::v1::kv_server::{Kv, KvServer};
use conclave_proto::v1::*;
use conclave_state::{
    Bytes, Command, Expiry, Machine, Outcome, ReadError, Revision, WriteReply, WriteRequest,
};
use tonic::{Request, Response, Status};

use crate::convert::{
    all, check_key, checked, consistency, deadline, field, header, node_error, request_id,
    wrong_type,
};

/// Serves `conclave.v1.Kv` from one node.
#[derive(Clone)]
pub struct KvService {
    node: Node,
}

impl KvService {
    pub fn new(node: Node) -> Self {
        KvService { node }
    }

    /// The tonic service to mount on the node's listener.
    pub fn into_server(self) -> KvServer<Self> {
        KvServer::new(self)
    }

    /// Proposes a write and returns its reply; a wrong type becomes `FAILED_PRECONDITION`.
    async fn write(
        &self,
        options: Option<WriteOptions>,
        command: Command,
        deadline: Instant,
    ) -> Result<WriteReply, Status> {
        let request = checked(WriteRequest {
            id: request_id(options),
            stamp: 0,
            command,
        })?;
        let reply = self
            .node
            .write(request, deadline)
            .await
            .map_err(node_error)?;
        if reply.outcome == Outcome::WrongType {
            return Err(wrong_type(conclave_state::ReadError));
        }
        Ok(reply)
    }

    /// Waits for the read barrier, then runs `read` on the replica at this node's clock.
    async fn read<R>(
        &self,
        key: &[u8],
        consistency: Consistency,
        deadline: Instant,
        read: impl FnOnce(&Machine, u64) -> Result<R, Status>,
    ) -> Result<(Revision, R), Status> {
        check_key(key)?;
        self.node
            .read_barrier(consistency, deadline)
            .await
            .map_err(node_error)?;
        let now = now_ms();
        self.node
            .view()
            .read(|m| read(m, now).map(|r| (m.revision(), r)))
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
        header(revision, self.node.id())
    }

    fn deadline<T>(&self, request: &Request<T>) -> Instant {
        deadline(request, self.node.request_timeout())
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
                        conclave_state::Value::String(v) => v.to_vec(),
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
        let condition = match SetCondition::try_from(r.condition) {
            Ok(SetCondition::SetAlways) => conclave_state::SetCondition::Always,
            Ok(SetCondition::SetIfAbsent) => conclave_state::SetCondition::IfAbsent,
            Ok(SetCondition::SetIfPresent) => conclave_state::SetCondition::IfPresent,
            Err(_) => return Err(Status::invalid_argument("unknown set condition")),
        };
        let expiry = match (r.ttl_ms, r.keep_ttl) {
            (0, true) => Expiry::Keep,
            (0, false) => Expiry::Never,
            (ms, _) => Expiry::AfterMillis(ms),
        };
        let command = Command::Set {
            key: r.key.into(),
            value: r.value.into(),
            condition,
            expiry,
            return_previous: r.return_previous,
        };
        let reply = self.write(r.write, command, deadline).await?;
        let Outcome::Set { applied, previous } = reply.outcome else {
            return Err(Status::internal(format!(
                "unexpected outcome {:?}",
                reply.outcome
            )));
        };
        Ok(Response::new(SetResponse {
            header: self.header(reply.revision),
            applied,
            previous: previous.map(Bytes::into_vec),
        }))
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Reply<DeleteResponse> {
        let deadline = self.deadline(&request);
        let r = request.into_inner();
        let reply = self
            .write(r.write, Command::Delete { keys: all(r.keys) }, deadline)
            .await?;
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
        let fields = r
            .fields
            .into_iter()
            .map(|f| (f.field.into(), f.value.into()))
            .collect();
        let reply = self
            .write(
                r.write,
                Command::HashSet {
                    key: r.key.into(),
                    fields,
                },
                deadline,
            )
            .await?;
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
        let command = Command::HashDelete {
            key: r.key.into(),
            fields: all(r.fields),
        };
        Ok(self.count(self.write(r.write, command, deadline).await?))
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
        let command = Command::SetAdd {
            key: r.key.into(),
            members: all(r.members),
        };
        Ok(self.count(self.write(r.write, command, deadline).await?))
    }

    async fn s_rem(&self, request: Request<SRemRequest>) -> Reply<CountResponse> {
        let deadline = self.deadline(&request);
        let r = request.into_inner();
        let command = Command::SetRemove {
            key: r.key.into(),
            members: all(r.members),
        };
        Ok(self.count(self.write(r.write, command, deadline).await?))
    }

    async fn s_members(&self, request: Request<KeyReadRequest>) -> Reply<ItemsResponse> {
        self.items(request, |m, key, now| {
            let set = m.set_members(key, now)?;
            Ok(set.into_iter().flatten().map(|m| m.to_vec()).collect())
        })
        .await
    }
}
