//! Channel names and message payloads as psrpc lays them out, and the claim key.
//!
//! psrpc names channels `Service|Method|topic|REQ` (requests), `...|RCLAIM` (the caller's choice
//! of server), `Service|<clientID>|RES` (responses and claims to one caller) and
//! `Signal|RelaySignal|<node>|STR` (every relay stream of a node). A room holds 16 subscriptions
//! on its media node (5 RoomService and 3 AgentDispatch methods, REQ and RCLAIM each), a
//! participant 14 (7 participant methods), an agent job 2 (JobTerminate).

/// The room-topic methods a room's media node subscribes to.
pub const ROOM_METHODS: [&str; 8] = [
    "RoomService|DeleteRoom",
    "RoomService|SendData",
    "RoomService|UpdateRoomMetadata",
    "RoomService|RemoveParticipant",
    "RoomService|MutePublishedTrack",
    "AgentDispatch|CreateDispatch",
    "AgentDispatch|DeleteDispatch",
    "AgentDispatch|ListDispatch",
];

/// The participant-topic methods a participant's media node subscribes to.
pub const PARTICIPANT_METHODS: [&str; 7] = [
    "Participant|UpdateParticipant",
    "Participant|UpdateSubscriptions",
    "Participant|SendData",
    "Participant|UpdateMetadata",
    "Participant|Mute",
    "Participant|Move",
    "Participant|Forward",
];

/// The queue RPC every media node serves (and races to claim).
pub const QUEUE_METHOD: &str = "RoomService|CreateRoom";

pub fn request(method: &str, topic: &str) -> String {
    format!("{method}|{topic}|REQ")
}

pub fn rclaim(method: &str, topic: &str) -> String {
    format!("{method}|{topic}|RCLAIM")
}

/// Where a media node hears claims and responses to its own requests.
pub fn responses(node: &str) -> String {
    format!("RoomService|{node}|RES")
}

/// Every relay stream into a media node.
pub fn signal(node: &str) -> String {
    format!("Signal|RelaySignal|{node}|STR")
}

pub fn keepalive(node: &str) -> String {
    format!("Node|Keepalive|{node}|STR")
}

/// The channels a room's media node subscribes to while it hosts the room.
pub fn room_channels(room: &str) -> Vec<String> {
    ROOM_METHODS
        .iter()
        .flat_map(|m| [request(m, room), rclaim(m, room)])
        .collect()
}

/// A participant's channels (14), or an agent job's (2).
pub fn participant_channels(room: &str, identity: &str, agent: bool) -> Vec<String> {
    let topic = format!("{room}|{identity}");
    if agent {
        let method = "AgentJob|JobTerminate";
        return vec![request(method, &topic), rclaim(method, &topic)];
    }
    PARTICIPANT_METHODS
        .iter()
        .flat_map(|m| [request(m, &topic), rclaim(m, &topic)])
        .collect()
}

/// What a message is, first field of its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    /// A psrpc request: every subscriber claims it.
    Request,
    /// A server's claim, to the caller.
    Claim,
    /// The caller's choice of server.
    Rclaim,
    /// The response, to the caller.
    Response,
    /// A signal relay message (acked).
    Signal,
    Ack,
    Keepalive,
}

impl Tag {
    fn code(self) -> &'static str {
        match self {
            Tag::Request => "req",
            Tag::Claim => "claim",
            Tag::Rclaim => "rclaim",
            Tag::Response => "res",
            Tag::Signal => "sig",
            Tag::Ack => "ack",
            Tag::Keepalive => "ka",
        }
    }

    fn from_code(code: &str) -> Option<Tag> {
        Some(match code {
            "req" => Tag::Request,
            "claim" => Tag::Claim,
            "rclaim" => Tag::Rclaim,
            "res" => Tag::Response,
            "sig" => Tag::Signal,
            "ack" => Tag::Ack,
            "ka" => Tag::Keepalive,
            _ => return None,
        })
    }
}

/// A message's fields: what it is, the exchange it belongs to, who sent it, when (microseconds
/// since the run began), and one more field whose meaning depends on the tag (the method for a
/// request, the chosen server for an rclaim).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub tag: Tag,
    pub id: u64,
    pub from: usize,
    pub sent_us: u64,
    pub extra: String,
}

impl Message {
    /// The payload, padded with `x` to `size` bytes (never cut).
    pub fn encode(&self, size: usize) -> Vec<u8> {
        let mut payload = format!(
            "{}|{}|{}|{}|{}|",
            self.tag.code(),
            self.id,
            self.from,
            self.sent_us,
            self.extra.replace('|', "/")
        )
        .into_bytes();
        if payload.len() < size {
            payload.resize(size, b'x');
        }
        payload
    }

    pub fn decode(payload: &[u8]) -> Option<Message> {
        let text = std::str::from_utf8(payload).ok()?;
        let mut fields = text.splitn(6, '|');
        Some(Message {
            tag: Tag::from_code(fields.next()?)?,
            id: fields.next()?.parse().ok()?,
            from: fields.next()?.parse().ok()?,
            sent_us: fields.next()?.parse().ok()?,
            extra: fields.next()?.to_string(),
        })
    }
}

/// psrpc's de-dup key for a request: base64 of a 32-byte digest of the payload, 44 characters
/// of the standard alphabet with padding. (psrpc takes SHA-256; two SHA-1s give the same shape,
/// which is what the store sees, without another dependency.)
pub fn claim_key(payload: &[u8]) -> String {
    let first = sha1_smol::Sha1::from(payload).digest().bytes();
    let mut salted = payload.to_vec();
    salted.push(b'#');
    let second = sha1_smol::Sha1::from(&salted).digest().bytes();
    let mut digest = first.to_vec();
    digest.extend_from_slice(&second[..12]);
    base64(&digest)
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_survives_its_payload_and_is_padded_to_size() {
        let message = Message {
            tag: Tag::Rclaim,
            id: 42,
            from: 2,
            sent_us: 123_456,
            extra: "RoomService|SendData".into(),
        };
        let payload = message.encode(300);
        assert_eq!(payload.len(), 300);
        let back = Message::decode(&payload).unwrap();
        assert_eq!(back.tag, Tag::Rclaim);
        assert_eq!((back.id, back.from, back.sent_us), (42, 2, 123_456));
        assert_eq!(back.extra, "RoomService/SendData");
    }

    #[test]
    fn claim_keys_have_psrpcs_shape() {
        let key = claim_key(b"request payload");
        assert_eq!(key.len(), 44);
        assert!(key.ends_with('='));
        assert_ne!(key, claim_key(b"another payload"));
        assert_eq!(base64(b"Man"), "TWFu");
        assert_eq!(base64(b"Ma"), "TWE=");
    }

    #[test]
    fn a_room_has_16_channels_a_participant_14_an_agent_job_2() {
        assert_eq!(room_channels("R1").len(), 16);
        assert_eq!(participant_channels("R1", "p1", false).len(), 14);
        assert_eq!(participant_channels("R1", "a1", true).len(), 2);
    }
}
