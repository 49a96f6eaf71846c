//! Typed room state for media servers: rooms, participants and media nodes.

use std::time::Duration;

use conclave_proto::v1::{self, rooms_client::RoomsClient};

use crate::{Client, Consistency, Error, LeaseKeeper};

/// The keys the room state lives under (watch them for changes).
pub mod keys {
    /// The hash of rooms (room name -> `v1::Room`).
    pub const ROOMS: &[u8] = b"conclave:rooms";
    /// The hash of registered media nodes (node id -> `v1::MediaNode`).
    pub const MEDIA_NODES: &[u8] = b"conclave:media-nodes";

    /// The hash of `room`'s participants (identity -> `v1::Participant`).
    pub fn participants(room: &str) -> Vec<u8> {
        format!("conclave:participants:{room}").into_bytes()
    }
}

macro_rules! rooms_call {
    ($client:expr, $method:ident, $request:expr) => {
        $client
            .call($request, |channel, r| async move {
                RoomsClient::new(channel).$method(r).await
            })
            .await
    };
}

impl Client {
    /// Creates a room; an existing room is returned unchanged (`created` false).
    pub async fn create_room(
        &self,
        name: &str,
        metadata: impl AsRef<[u8]>,
    ) -> Result<(v1::Room, bool), Error> {
        let request = v1::CreateRoomRequest {
            name: name.to_string(),
            metadata: metadata.as_ref().to_vec(),
            write: self.next_write(),
        };
        let response = rooms_call!(self, create_room, request)?;
        Ok((response.room.unwrap_or_default(), response.created))
    }

    /// A room; None if it does not exist.
    pub async fn room(&self, name: &str) -> Result<Option<v1::Room>, Error> {
        let request = v1::RoomName {
            name: name.to_string(),
            read: self.read_options(Consistency::Session),
        };
        match rooms_call!(self, get_room, request) {
            Ok(response) => Ok(response.room),
            Err(Error::Rpc(status)) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn rooms(&self) -> Result<Vec<v1::Room>, Error> {
        let request = v1::ListRoomsRequest {
            read: self.read_options(Consistency::Session),
        };
        Ok(rooms_call!(self, list_rooms, request)?.rooms)
    }

    pub async fn update_room(
        &self,
        name: &str,
        metadata: impl AsRef<[u8]>,
    ) -> Result<v1::Room, Error> {
        let request = v1::UpdateRoomRequest {
            name: name.to_string(),
            metadata: metadata.as_ref().to_vec(),
            write: self.next_write(),
        };
        Ok(rooms_call!(self, update_room, request)?
            .room
            .unwrap_or_default())
    }

    /// Deletes a room and all its participants at one revision; false if it did not exist.
    pub async fn delete_room(&self, name: &str) -> Result<bool, Error> {
        let request = v1::DeleteRoomRequest {
            name: name.to_string(),
            write: self.next_write(),
        };
        Ok(rooms_call!(self, delete_room, request)?.deleted)
    }

    /// Places a room on a media node atomically: `node` if given, else the healthy non-draining
    /// node with the fewest rooms. A room already on a registered node stays where it is.
    pub async fn assign_room(&self, name: &str, node: Option<&str>) -> Result<v1::Room, Error> {
        let request = v1::AssignRoomRequest {
            name: name.to_string(),
            node_id: node.unwrap_or_default().to_string(),
            write: self.next_write(),
        };
        Ok(rooms_call!(self, assign_room, request)?
            .room
            .unwrap_or_default())
    }

    /// Adds a participant hosted by media node `node`; it lives on that node's lease.
    pub async fn join(
        &self,
        room: &str,
        identity: &str,
        node: &str,
        payload: impl AsRef<[u8]>,
    ) -> Result<v1::Participant, Error> {
        let request = v1::JoinRequest {
            room: room.to_string(),
            identity: identity.to_string(),
            node_id: node.to_string(),
            payload: payload.as_ref().to_vec(),
            write: self.next_write(),
        };
        Ok(rooms_call!(self, join, request)?
            .participant
            .unwrap_or_default())
    }

    pub async fn update_participant(
        &self,
        room: &str,
        identity: &str,
        payload: impl AsRef<[u8]>,
    ) -> Result<v1::Participant, Error> {
        let request = v1::UpdateParticipantRequest {
            room: room.to_string(),
            identity: identity.to_string(),
            payload: payload.as_ref().to_vec(),
            write: self.next_write(),
        };
        Ok(rooms_call!(self, update_participant, request)?
            .participant
            .unwrap_or_default())
    }

    /// Removes a participant; false if it was not there.
    pub async fn leave(&self, room: &str, identity: &str) -> Result<bool, Error> {
        let request = v1::LeaveRequest {
            room: room.to_string(),
            identity: identity.to_string(),
            write: self.next_write(),
        };
        Ok(rooms_call!(self, leave, request)?.left)
    }

    pub async fn participants(&self, room: &str) -> Result<Vec<v1::Participant>, Error> {
        let request = v1::ListParticipantsRequest {
            room: room.to_string(),
            read: self.read_options(Consistency::Session),
        };
        Ok(rooms_call!(self, list_participants, request)?.participants)
    }

    /// Registered media nodes (draining ones too if asked), with their room counts.
    pub async fn media_nodes(&self, include_draining: bool) -> Result<Vec<v1::MediaNode>, Error> {
        let request = v1::ListNodesRequest {
            include_draining,
            read: self.read_options(Consistency::Session),
        };
        Ok(rooms_call!(self, list_nodes, request)?.nodes)
    }

    /// Marks a media node as draining: it keeps its rooms but gets no new ones.
    pub async fn drain_media_node(&self, id: &str) -> Result<v1::MediaNode, Error> {
        let request = v1::DrainNodeRequest {
            id: id.to_string(),
            write: self.next_write(),
        };
        Ok(rooms_call!(self, drain_node, request)?
            .node
            .unwrap_or_default())
    }

    /// Registers a media node on a fresh lease of `ttl` and keeps the lease alive in the
    /// background. If this process dies, the registration and every participant joined on this
    /// node disappear once the lease expires.
    pub async fn register_media_node(
        &self,
        id: &str,
        address: &str,
        stats: impl AsRef<[u8]>,
        ttl: Duration,
    ) -> Result<MediaNodeRegistration, Error> {
        let lease = self.grant_lease(ttl).await?;
        let keeper = self.keep_alive(lease);
        let request = v1::RegisterNodeRequest {
            id: id.to_string(),
            address: address.to_string(),
            stats: stats.as_ref().to_vec(),
            lease: lease.id,
            write: self.next_write(),
        };
        let node = rooms_call!(self, register_node, request)?
            .node
            .unwrap_or_default();
        Ok(MediaNodeRegistration {
            client: self.clone(),
            node,
            keeper,
        })
    }
}

/// A registered media node whose lease is kept alive while this value lives.
pub struct MediaNodeRegistration {
    client: Client,
    node: v1::MediaNode,
    keeper: LeaseKeeper,
}

impl MediaNodeRegistration {
    pub fn node(&self) -> &v1::MediaNode {
        &self.node
    }

    /// The lease the node's registration and participants live on.
    pub fn lease(&self) -> u64 {
        self.keeper.id()
    }

    /// Publishes new load figures.
    pub async fn update_stats(&mut self, stats: impl AsRef<[u8]>) -> Result<(), Error> {
        let request = v1::UpdateNodeStatsRequest {
            id: self.node.id.clone(),
            stats: stats.as_ref().to_vec(),
            write: self.client.next_write(),
        };
        self.node = rooms_call!(self.client, update_node_stats, request)?
            .node
            .unwrap_or_default();
        Ok(())
    }

    /// Resolves once the registration's lease has ended (it expired while its keep-alives
    /// could not get through, or was revoked): the registration and the node's participants
    /// went with it. Register again to come back.
    pub async fn lost(&mut self) {
        self.keeper.lost().await
    }

    /// Unregisters: revokes the lease, removing the registration and the node's participants.
    pub async fn shutdown(self) -> Result<u64, Error> {
        let id = self.keeper.id();
        drop(self.keeper);
        self.client.revoke_lease(id).await
    }
}
