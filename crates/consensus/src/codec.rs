//! Encoding of openraft messages and leader requests inside the Peer service's byte fields.

use tonic::Status;

/// Encodes a message for the wire.
pub(crate) fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    bincode::serialize(value).expect("in-memory serialization cannot fail")
}

/// Decodes a message from the wire; a malformed one is the caller's error.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Status> {
    bincode::deserialize(bytes)
        .map_err(|e| Status::invalid_argument(format!("malformed peer message: {e}")))
}
