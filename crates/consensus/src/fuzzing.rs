//! Entry point for the `peer_messages` fuzz target in `fuzz/` and its regression test
//! (`tests/fuzz_regressions.rs`, which replays the inputs kept in `fuzz/regressions/`).
//!
//! [`peer_messages`] decodes arbitrary bytes as every message a peer can send this node or
//! answer it with, the way the Peer service and the network decode them, and checks that no
//! decode panics and that whatever decodes encodes back to bytes that decode to the same.

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::codec::{decode, encode};
use crate::leader::{LeaderRequest, LeaderResult};
use crate::{NodeId, TypeConfig};

/// Decodes `data` as each peer message; panics if a decode panics or a round trip changes it.
pub fn peer_messages(data: &[u8]) {
    // What a peer sends (service.rs).
    round_trip::<AppendEntriesRequest<TypeConfig>>(data);
    round_trip::<InstallSnapshotRequest<TypeConfig>>(data);
    round_trip::<VoteRequest<NodeId>>(data);
    round_trip::<LeaderRequest>(data);
    // What a peer answers (network.rs).
    round_trip::<LeaderResult>(data);
    round_trip::<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>>(data);
    round_trip::<Result<VoteResponse<NodeId>, RaftError<NodeId>>>(data);
    round_trip::<Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>>(
        data,
    );
}

/// If `data` decodes as `T`, its encoding decodes again and encodes to the same bytes.
fn round_trip<T: Serialize + DeserializeOwned>(data: &[u8]) {
    let Ok(message) = decode::<T>(data) else {
        return;
    };
    let encoded = encode(&message);
    let again: T = decode(&encoded).unwrap_or_else(|e| {
        panic!(
            "{} decoded from the input, but not from its own encoding: {e}",
            std::any::type_name::<T>()
        )
    });
    assert_eq!(
        encode(&again),
        encoded,
        "{} changed across a round trip",
        std::any::type_name::<T>()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_messages_and_damaged_ones_decode_or_fail_cleanly() {
        let vote = encode(&VoteRequest::<NodeId>::new(
            openraft::Vote::new(3, 1),
            Some(openraft::LogId::new(
                openraft::CommittedLeaderId::new(2, 1),
                7,
            )),
        ));
        peer_messages(&vote);
        for cut in 0..vote.len() {
            peer_messages(&vote[..cut]);
        }
        peer_messages(&[0xff; 64]);
    }
}
