//! The `Rooms` service: typed room state built from hashes, leases and transactions.
//!
//! Layout (see `rooms.proto`): `conclave:rooms` (room name -> Room), `conclave:participants:<room>`
//! (identity -> Participant, each field on the lease of the media node hosting it) and
//! `conclave:media-nodes` (node id -> MediaNode, on the node's own lease). Values are the protobuf
//! messages. Every change is one transaction whose comparisons make it atomic against concurrent
//! changes (a room deleted while a participant joins, two nodes assigned one room); updates of a
//! stored message are compare-and-swap loops on its exact bytes.

use std::collections::BTreeMap;
use std::time::Instant;

use conclave_consensus::Consistency;
use conclave_proto::v1::rooms_server::{Rooms, RoomsServer};
use conclave_proto::v1::*;
use conclave_state::{
    Bytes, Check, CmpOp, Command, Compare, LeaseId, Machine, Outcome, Revision, Transaction,
    WriteReply,
};
use prost::Message as _;
use tonic::{Request, Response, Status};

use crate::convert::consistency;
use crate::gateway::{outcome_status, Gateway};

/// The hash of rooms.
pub const ROOMS_KEY: &[u8] = b"conclave:rooms";
/// The hash of registered media nodes.
pub const MEDIA_NODES_KEY: &[u8] = b"conclave:media-nodes";

/// The hash of `room`'s participants.
pub fn participants_key(room: &str) -> Vec<u8> {
    format!("conclave:participants:{room}").into_bytes()
}

/// How fresh the reads of a compare-and-swap loop are. They start at the writer's session
/// revision, move to the revision of a transaction whose compare failed (so the next attempt sees
/// what made it fail), and a "does not exist" is confirmed by a linearizable read before it is
/// reported: a replica that lags must not make a fresh room look missing.
#[derive(Clone, Copy)]
struct Freshness {
    min_revision: Revision,
    linearizable: bool,
}

impl Freshness {
    fn of(options: &Option<WriteOptions>) -> Self {
        Freshness {
            min_revision: options.as_ref().map_or(0, |o| o.min_revision),
            linearizable: false,
        }
    }

    fn after(revision: Revision) -> Self {
        Freshness {
            min_revision: revision,
            linearizable: false,
        }
    }

    /// Before reporting something missing: true (read again, linearizably) unless that was
    /// already a linearizable read.
    fn confirm_missing(&mut self) -> bool {
        !std::mem::replace(&mut self.linearizable, true)
    }
}

/// Attempts of a compare-and-swap before giving up (each failure means another writer won).
const CAS_ATTEMPTS: usize = 32;
/// Longest room name, identity or node id.
const MAX_NAME_BYTES: usize = 1024;

/// Serves `conclave.v1.Rooms` from one node.
#[derive(Clone)]
pub struct RoomsService {
    gw: Gateway,
}

type Reply<T> = Result<Response<T>, Status>;

fn name<'a>(what: &str, value: &'a str) -> Result<&'a str, Status> {
    if value.is_empty() || value.len() > MAX_NAME_BYTES {
        return Err(Status::invalid_argument(format!(
            "{what} must be 1 to {MAX_NAME_BYTES} bytes"
        )));
    }
    Ok(value)
}

fn bytes(b: &[u8]) -> Bytes {
    Bytes::from(b.to_vec())
}

fn decode<T: prost::Message + Default>(stored: &[u8]) -> Result<T, Status> {
    T::decode(stored).map_err(|e| Status::internal(format!("stored room state is unreadable: {e}")))
}

/// A hash field's stored bytes.
fn field_bytes(m: &Machine, key: &[u8], field: &str, now: u64) -> Result<Option<Vec<u8>>, Status> {
    let hash = m.hash(key, now).map_err(|_| {
        Status::failed_precondition(format!("{} is not a hash", String::from_utf8_lossy(key)))
    })?;
    Ok(hash
        .and_then(|h| h.get(serde_bytes::Bytes::new(field.as_bytes())))
        .map(|v| v.to_vec()))
}

/// Every value of a hash, decoded.
fn all_values<T: prost::Message + Default>(
    m: &Machine,
    key: &[u8],
    now: u64,
) -> Result<Vec<T>, Status> {
    let hash = m.hash(key, now).map_err(|_| {
        Status::failed_precondition(format!("{} is not a hash", String::from_utf8_lossy(key)))
    })?;
    hash.into_iter().flatten().map(|(_, v)| decode(v)).collect()
}

fn field_is(key: &[u8], field: &str, check: Check) -> Compare {
    Compare {
        key: bytes(key),
        field: Some(bytes(field.as_bytes())),
        check,
    }
}

fn hset(key: &[u8], field: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Command {
    Command::HashSet {
        key: bytes(key),
        fields: vec![(bytes(field.as_bytes()), Bytes::from(value))],
        lease,
    }
}

/// Whether a transaction's comparisons held; its commands' failures become statuses.
fn txn_succeeded(reply: &WriteReply) -> Result<bool, Status> {
    match &reply.outcome {
        Outcome::Txn {
            succeeded,
            outcomes,
        } => {
            outcomes.iter().try_for_each(outcome_status)?;
            Ok(*succeeded)
        }
        other => Err(Status::internal(format!("unexpected outcome {other:?}"))),
    }
}

impl RoomsService {
    pub fn new(node: conclave_consensus::Node) -> Self {
        RoomsService {
            gw: Gateway::new(node),
        }
    }

    pub fn into_server(self) -> RoomsServer<Self> {
        RoomsServer::new(self).max_decoding_message_size(crate::MAX_REQUEST_BYTES)
    }

    /// Reads at `fresh`.
    async fn read_at<R>(
        &self,
        fresh: Freshness,
        deadline: Instant,
        read: impl FnOnce(&Machine, u64) -> Result<R, Status>,
    ) -> Result<(Revision, R), Status> {
        let consistency = if fresh.linearizable {
            Consistency::Linearizable
        } else {
            Consistency::Session {
                min_revision: fresh.min_revision,
            }
        };
        self.gw.read(consistency, deadline, read).await
    }

    async fn txn(
        &self,
        options: &mut Option<WriteOptions>,
        compares: Vec<Compare>,
        success: Vec<Command>,
        failure: Vec<Command>,
        deadline: Instant,
    ) -> Result<WriteReply, Status> {
        let command = Command::Txn(Box::new(Transaction {
            compares,
            success,
            failure,
        }));
        // The client's write id covers the first attempt only; retries of a lost compare are
        // new writes.
        self.gw
            .write_unchecked_outcome(options.take(), command, deadline)
            .await
    }

    /// Replaces the message stored in `key`/`field` by `change(current)`, atomically against
    /// concurrent writers; `missing` is the error when there is none. Keeps the field's lease.
    async fn update<T, F>(
        &self,
        key: &[u8],
        field: &str,
        mut options: Option<WriteOptions>,
        deadline: Instant,
        missing: impl Fn() -> Status,
        change: F,
    ) -> Result<(Revision, T), Status>
    where
        T: prost::Message + Default,
        F: Fn(T) -> Result<T, Status>,
    {
        let mut fresh = Freshness::of(&options);
        for _ in 0..CAS_ATTEMPTS {
            let (_, current) = self
                .read_at(fresh, deadline, |m, now| {
                    let stored = field_bytes(m, key, field, now)?;
                    let lease = m.record(key, now).and_then(|r| {
                        r.field_leases
                            .get(serde_bytes::Bytes::new(field.as_bytes()))
                            .copied()
                    });
                    Ok(stored.map(|s| (s, lease)))
                })
                .await?;
            let Some((stored, lease)) = current else {
                if fresh.confirm_missing() {
                    continue;
                }
                return Err(missing());
            };
            let updated = change(decode(&stored)?)?;
            let compare = field_is(key, field, Check::Value(CmpOp::Equal, Bytes::from(stored)));
            let write = hset(key, field, updated.encode_to_vec(), lease);
            let reply = self
                .txn(&mut options, vec![compare], vec![write], vec![], deadline)
                .await?;
            if txn_succeeded(&reply)? {
                return Ok((reply.revision, updated));
            }
            fresh = Freshness::after(reply.revision);
        }
        Err(Status::aborted(format!(
            "{field} changed {CAS_ATTEMPTS} times while being updated; retry"
        )))
    }

    /// The stored room `name` (at least at `revision`).
    async fn room(
        &self,
        name: &str,
        revision: Revision,
        deadline: Instant,
    ) -> Result<(Revision, Option<Room>), Status> {
        let (revision, stored) = self
            .read_at(Freshness::after(revision), deadline, |m, now| {
                field_bytes(m, ROOMS_KEY, name, now)
            })
            .await?;
        Ok((revision, stored.map(|s| decode(&s)).transpose()?))
    }

    fn room_response(
        &self,
        revision: Revision,
        room: Room,
        created: bool,
    ) -> Response<RoomResponse> {
        Response::new(RoomResponse {
            header: self.gw.header(revision),
            room: Some(room),
            created,
        })
    }
}

fn room_not_found(name: &str) -> impl Fn() -> Status + '_ {
    move || Status::not_found(format!("room {name:?} does not exist"))
}

#[tonic::async_trait]
impl Rooms for RoomsService {
    async fn create_room(&self, request: Request<CreateRoomRequest>) -> Reply<RoomResponse> {
        let deadline = self.gw.deadline(&request);
        let mut r = request.into_inner();
        let room_name = name("room name", &r.name)?.to_string();
        let room = Room {
            name: room_name.clone(),
            metadata: r.metadata,
            node_id: String::new(),
        };
        let reply = self
            .txn(
                &mut r.write,
                vec![field_is(ROOMS_KEY, &room_name, Check::Exists(false))],
                vec![hset(ROOMS_KEY, &room_name, room.encode_to_vec(), None)],
                vec![],
                deadline,
            )
            .await?;
        if txn_succeeded(&reply)? {
            return Ok(self.room_response(reply.revision, room, true));
        }
        let (revision, existing) = self.room(&room_name, reply.revision, deadline).await?;
        let existing = existing
            .ok_or_else(|| Status::aborted("the room was deleted while being created; retry"))?;
        Ok(self.room_response(revision, existing, false))
    }

    async fn get_room(&self, request: Request<RoomName>) -> Reply<RoomResponse> {
        let deadline = self.gw.deadline(&request);
        let r = request.into_inner();
        let (revision, stored) = self
            .gw
            .read(consistency(r.read), deadline, |m, now| {
                field_bytes(m, ROOMS_KEY, &r.name, now)
            })
            .await?;
        let stored = stored.ok_or_else(room_not_found(&r.name))?;
        Ok(self.room_response(revision, decode(&stored)?, false))
    }

    async fn update_room(&self, request: Request<UpdateRoomRequest>) -> Reply<RoomResponse> {
        let deadline = self.gw.deadline(&request);
        let r = request.into_inner();
        let metadata = r.metadata;
        let (revision, room) = self
            .update(
                ROOMS_KEY,
                &r.name,
                r.write,
                deadline,
                room_not_found(&r.name),
                |room: Room| {
                    Ok(Room {
                        metadata: metadata.clone(),
                        ..room
                    })
                },
            )
            .await?;
        Ok(self.room_response(revision, room, false))
    }

    async fn delete_room(&self, request: Request<DeleteRoomRequest>) -> Reply<DeleteRoomResponse> {
        let deadline = self.gw.deadline(&request);
        let mut r = request.into_inner();
        let reply = self
            .txn(
                &mut r.write,
                vec![field_is(ROOMS_KEY, &r.name, Check::Exists(true))],
                vec![
                    Command::HashDelete {
                        key: bytes(ROOMS_KEY),
                        fields: vec![bytes(r.name.as_bytes())],
                    },
                    Command::Delete {
                        keys: vec![Bytes::from(participants_key(&r.name))],
                    },
                ],
                vec![],
                deadline,
            )
            .await?;
        Ok(Response::new(DeleteRoomResponse {
            header: self.gw.header(reply.revision),
            deleted: txn_succeeded(&reply)?,
        }))
    }

    async fn list_rooms(&self, request: Request<ListRoomsRequest>) -> Reply<ListRoomsResponse> {
        let deadline = self.gw.deadline(&request);
        let r = request.into_inner();
        let (revision, rooms) = self
            .gw
            .read(consistency(r.read), deadline, |m, now| {
                all_values(m, ROOMS_KEY, now)
            })
            .await?;
        Ok(Response::new(ListRoomsResponse {
            header: self.gw.header(revision),
            rooms,
        }))
    }

    async fn assign_room(&self, request: Request<AssignRoomRequest>) -> Reply<RoomResponse> {
        let deadline = self.gw.deadline(&request);
        let r = request.into_inner();
        let mut options = r.write;
        let mut fresh = Freshness::of(&options);
        for _ in 0..CAS_ATTEMPTS {
            let (revision, (stored, nodes, rooms)) = self
                .read_at(fresh, deadline, |m, now| {
                    Ok((
                        field_bytes(m, ROOMS_KEY, &r.name, now)?,
                        m.hash(MEDIA_NODES_KEY, now)
                            .ok()
                            .flatten()
                            .cloned()
                            .unwrap_or_default(),
                        all_values::<Room>(m, ROOMS_KEY, now)?,
                    ))
                })
                .await?;
            let Some(stored) = stored else {
                if fresh.confirm_missing() {
                    continue;
                }
                return Err(room_not_found(&r.name)());
            };
            let room: Room = decode(&stored)?;
            let registered = |id: &str| nodes.get(serde_bytes::Bytes::new(id.as_bytes()));
            // A room on a registered node stays there.
            if !room.node_id.is_empty() && registered(&room.node_id).is_some() {
                return Ok(self.room_response(revision, room, false));
            }
            let mut load: BTreeMap<&str, usize> = BTreeMap::new();
            for other in &rooms {
                *load.entry(other.node_id.as_str()).or_default() += 1;
            }
            let candidates = nodes
                .values()
                .map(|stored| decode::<MediaNode>(stored))
                .collect::<Result<Vec<_>, _>>()?;
            let chosen = if r.node_id.is_empty() {
                candidates
                    .iter()
                    .filter(|n| !n.draining)
                    .min_by_key(|n| (load.get(n.id.as_str()).copied().unwrap_or(0), n.id.clone()))
                    .ok_or_else(|| {
                        Status::failed_precondition(
                            "no media node is registered and accepting rooms",
                        )
                    })?
            } else {
                let wanted = candidates
                    .iter()
                    .find(|n| n.id == r.node_id)
                    .ok_or_else(|| {
                        Status::failed_precondition(format!(
                            "media node {:?} is not registered",
                            r.node_id
                        ))
                    })?;
                if wanted.draining {
                    return Err(Status::failed_precondition(format!(
                        "media node {:?} is draining",
                        r.node_id
                    )));
                }
                wanted
            };
            let chosen_stored = registered(&chosen.id)
                .expect("chosen among registered")
                .clone();
            let assigned = Room {
                node_id: chosen.id.clone(),
                ..room
            };
            let reply = self
                .txn(
                    &mut options,
                    vec![
                        field_is(
                            ROOMS_KEY,
                            &r.name,
                            Check::Value(CmpOp::Equal, Bytes::from(stored)),
                        ),
                        field_is(
                            MEDIA_NODES_KEY,
                            &chosen.id,
                            Check::Value(CmpOp::Equal, chosen_stored),
                        ),
                    ],
                    vec![hset(ROOMS_KEY, &r.name, assigned.encode_to_vec(), None)],
                    vec![],
                    deadline,
                )
                .await?;
            if txn_succeeded(&reply)? {
                return Ok(self.room_response(reply.revision, assigned, false));
            }
            fresh = Freshness::after(reply.revision);
        }
        Err(Status::aborted(
            "the room or the nodes kept changing during assignment; retry",
        ))
    }

    async fn join(&self, request: Request<JoinRequest>) -> Reply<ParticipantResponse> {
        let deadline = self.gw.deadline(&request);
        let mut r = request.into_inner();
        name("room name", &r.room)?;
        name("identity", &r.identity)?;
        name("node id", &r.node_id)?;
        let participant = Participant {
            room: r.room.clone(),
            identity: r.identity.clone(),
            node_id: r.node_id.clone(),
            payload: std::mem::take(&mut r.payload),
        };
        let key = participants_key(&r.room);
        let mut fresh = Freshness::of(&r.write);
        for _ in 0..CAS_ATTEMPTS {
            let (_, (room, node)) = self
                .read_at(fresh, deadline, |m, now| {
                    Ok((
                        field_bytes(m, ROOMS_KEY, &r.room, now)?,
                        field_bytes(m, MEDIA_NODES_KEY, &r.node_id, now)?,
                    ))
                })
                .await?;
            if room.is_none() {
                return Err(Status::failed_precondition(format!(
                    "room {:?} does not exist",
                    r.room
                )));
            }
            let node_stored = node.ok_or_else(|| {
                Status::failed_precondition(format!("media node {:?} is not registered", r.node_id))
            })?;
            let node: MediaNode = decode(&node_stored)?;
            let reply = self
                .txn(
                    &mut r.write,
                    vec![
                        field_is(ROOMS_KEY, &r.room, Check::Exists(true)),
                        field_is(
                            MEDIA_NODES_KEY,
                            &r.node_id,
                            Check::Value(CmpOp::Equal, Bytes::from(node_stored)),
                        ),
                    ],
                    vec![hset(
                        &key,
                        &r.identity,
                        participant.encode_to_vec(),
                        Some(node.lease),
                    )],
                    vec![],
                    deadline,
                )
                .await?;
            if txn_succeeded(&reply)? {
                return Ok(Response::new(ParticipantResponse {
                    header: self.gw.header(reply.revision),
                    participant: Some(participant),
                }));
            }
            fresh = Freshness::after(reply.revision);
        }
        Err(Status::aborted(
            "the room or the node kept changing during the join; retry",
        ))
    }

    async fn update_participant(
        &self,
        request: Request<UpdateParticipantRequest>,
    ) -> Reply<ParticipantResponse> {
        let deadline = self.gw.deadline(&request);
        let r = request.into_inner();
        let key = participants_key(&r.room);
        let payload = r.payload;
        let missing = || Status::not_found(format!("{:?} is not in room {:?}", r.identity, r.room));
        let (revision, participant) = self
            .update(
                &key,
                &r.identity,
                r.write,
                deadline,
                missing,
                |p: Participant| {
                    Ok(Participant {
                        payload: payload.clone(),
                        ..p
                    })
                },
            )
            .await?;
        Ok(Response::new(ParticipantResponse {
            header: self.gw.header(revision),
            participant: Some(participant),
        }))
    }

    async fn leave(&self, request: Request<LeaveRequest>) -> Reply<LeaveResponse> {
        let deadline = self.gw.deadline(&request);
        let r = request.into_inner();
        let command = Command::HashDelete {
            key: Bytes::from(participants_key(&r.room)),
            fields: vec![bytes(r.identity.as_bytes())],
        };
        let reply = self.gw.write(r.write, command, deadline).await?;
        Ok(Response::new(LeaveResponse {
            header: self.gw.header(reply.revision),
            left: reply.outcome == Outcome::Count(1),
        }))
    }

    async fn list_participants(
        &self,
        request: Request<ListParticipantsRequest>,
    ) -> Reply<ListParticipantsResponse> {
        let deadline = self.gw.deadline(&request);
        let r = request.into_inner();
        let key = participants_key(&r.room);
        let (revision, participants) = self
            .gw
            .read(consistency(r.read), deadline, |m, now| {
                all_values(m, &key, now)
            })
            .await?;
        Ok(Response::new(ListParticipantsResponse {
            header: self.gw.header(revision),
            participants,
        }))
    }

    async fn register_node(&self, request: Request<RegisterNodeRequest>) -> Reply<NodeResponse> {
        let deadline = self.gw.deadline(&request);
        let r = request.into_inner();
        name("node id", &r.id)?;
        if r.lease == 0 {
            return Err(Status::invalid_argument(
                "a media node registers with a lease it keeps alive (Lease.Grant)",
            ));
        }
        let node = MediaNode {
            id: r.id.clone(),
            address: r.address,
            stats: r.stats,
            draining: false,
            lease: r.lease,
            rooms: 0,
        };
        let command = hset(MEDIA_NODES_KEY, &r.id, node.encode_to_vec(), Some(r.lease));
        let reply = self.gw.write(r.write, command, deadline).await?;
        Ok(Response::new(NodeResponse {
            header: self.gw.header(reply.revision),
            node: Some(node),
        }))
    }

    async fn update_node_stats(
        &self,
        request: Request<UpdateNodeStatsRequest>,
    ) -> Reply<NodeResponse> {
        let deadline = self.gw.deadline(&request);
        let r = request.into_inner();
        let stats = r.stats;
        let missing = || Status::not_found(format!("media node {:?} is not registered", r.id));
        let (revision, node) = self
            .update(
                MEDIA_NODES_KEY,
                &r.id,
                r.write,
                deadline,
                missing,
                |n: MediaNode| {
                    Ok(MediaNode {
                        stats: stats.clone(),
                        ..n
                    })
                },
            )
            .await?;
        Ok(Response::new(NodeResponse {
            header: self.gw.header(revision),
            node: Some(node),
        }))
    }

    async fn drain_node(&self, request: Request<DrainNodeRequest>) -> Reply<NodeResponse> {
        let deadline = self.gw.deadline(&request);
        let r = request.into_inner();
        let missing = || Status::not_found(format!("media node {:?} is not registered", r.id));
        let (revision, node) = self
            .update(
                MEDIA_NODES_KEY,
                &r.id,
                r.write,
                deadline,
                missing,
                |n: MediaNode| {
                    Ok(MediaNode {
                        draining: true,
                        ..n
                    })
                },
            )
            .await?;
        Ok(Response::new(NodeResponse {
            header: self.gw.header(revision),
            node: Some(node),
        }))
    }

    async fn list_nodes(&self, request: Request<ListNodesRequest>) -> Reply<ListNodesResponse> {
        let deadline = self.gw.deadline(&request);
        let r = request.into_inner();
        let (revision, (mut nodes, rooms)) = self
            .gw
            .read(consistency(r.read), deadline, |m, now| {
                Ok((
                    all_values::<MediaNode>(m, MEDIA_NODES_KEY, now)?,
                    all_values::<Room>(m, ROOMS_KEY, now)?,
                ))
            })
            .await?;
        nodes.retain(|n| r.include_draining || !n.draining);
        for node in &mut nodes {
            node.rooms = rooms.iter().filter(|room| room.node_id == node.id).count() as u64;
        }
        Ok(Response::new(ListNodesResponse {
            header: self.gw.header(revision),
            nodes,
        }))
    }
}
