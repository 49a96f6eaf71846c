//! Refusing a gRPC connection past `--grpc-max-connections` in HTTP/2's own terms, so the
//! client reports why (tonic: `RESOURCE_EXHAUSTED` with the reason) instead of a dropped
//! connection. Counting connections and deciding to refuse stay in [`crate::tls::incoming`].

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};

/// How long a refused connection is waited on for its first request before the GOAWAY goes
/// anyway (a client that only connects still hears why).
const REFUSAL_WAIT_FOR_REQUEST: Duration = Duration::from_secs(2);

/// How long a refused connection is given to read the GOAWAY before it is closed.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Refuses an HTTP/2 connection: the server's SETTINGS at once, then, once the client has
/// opened its first stream (or after [`REFUSAL_WAIT_FOR_REQUEST`]), a GOAWAY that processed no
/// stream, with ENHANCE_YOUR_CALM and a reason the client can show. The GOAWAY waits for the
/// request because a client that hears it first closes the idle connection itself, and the
/// request it then sends fails with a bare "connection closed" (tonic's CANCELLED) instead of
/// the reason. What the client sends is read, never answered, so the close does not reset the
/// connection before it has read the GOAWAY.
pub async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(mut io: S, max_connections: usize) {
    use tokio::io::AsyncWriteExt;
    let reason = format!(
        "too many connections: this node serves at most {max_connections} gRPC connections at once"
    );
    if io.write_all(&h2_frame(h2::SETTINGS, &[])).await.is_err() || io.flush().await.is_err() {
        return;
    }
    let mut reader = h2::FrameReader::default();
    let _ =
        tokio::time::timeout(REFUSAL_WAIT_FOR_REQUEST, reader.until_stream_opens(&mut io)).await;
    let mut goaway = vec![0; 4]; // the last stream processed: none
    goaway.extend_from_slice(&h2::ENHANCE_YOUR_CALM.to_be_bytes());
    goaway.extend_from_slice(reason.as_bytes());
    if io.write_all(&h2_frame(h2::GOAWAY, &goaway)).await.is_err() || io.flush().await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(REFUSAL_LINGER, reader.drain(&mut io)).await;
    let _ = io.shutdown().await;
}

/// One HTTP/2 frame of `kind` on stream 0, without flags.
fn h2_frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(9 + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    frame.extend_from_slice(&[kind, 0, 0, 0, 0, 0]);
    frame.extend_from_slice(payload);
    frame
}

/// The little of HTTP/2 a refusal needs: frame kinds, and a reader that skips what the client
/// sends until it opens a stream.
mod h2 {
    use tokio::io::{AsyncRead, AsyncReadExt};

    pub const HEADERS: u8 = 0x1;
    pub const SETTINGS: u8 = 0x4;
    pub const GOAWAY: u8 = 0x7;
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;
    /// The client connection preface, before its first frame.
    const PREFACE: usize = 24;
    const FRAME_HEADER: usize = 9;

    /// What the client has sent, parsed as the preface and then frame headers. Payloads are
    /// counted off as they arrive, never kept: at most a frame header is buffered.
    #[derive(Default)]
    pub struct FrameReader {
        /// Bytes of the preface or of a frame header not yet complete.
        buffered: Vec<u8>,
        skipped_preface: bool,
        /// Bytes of the current frame's payload still to come.
        skipping: usize,
    }

    impl FrameReader {
        /// Reads until a HEADERS frame (a request) has arrived, or the client stops sending.
        pub async fn until_stream_opens<S: AsyncRead + Unpin>(&mut self, io: &mut S) {
            let mut chunk = [0u8; 4096];
            loop {
                let n = match io.read(&mut chunk).await {
                    Ok(n) if n > 0 => n,
                    _ => return,
                };
                if self.take(&chunk[..n]) {
                    return;
                }
            }
        }

        /// Reads and drops whatever comes, until the client closes.
        pub async fn drain<S: AsyncRead + Unpin>(&mut self, io: &mut S) {
            let mut chunk = [0u8; 4096];
            while matches!(io.read(&mut chunk).await, Ok(n) if n > 0) {}
        }

        /// Parses `bytes`; true once a HEADERS frame has begun.
        fn take(&mut self, mut bytes: &[u8]) -> bool {
            while !bytes.is_empty() {
                if self.skipping > 0 {
                    let skipped = self.skipping.min(bytes.len());
                    self.skipping -= skipped;
                    bytes = &bytes[skipped..];
                    continue;
                }
                let wanted = if self.skipped_preface {
                    FRAME_HEADER
                } else {
                    PREFACE
                };
                let taken = (wanted - self.buffered.len()).min(bytes.len());
                self.buffered.extend_from_slice(&bytes[..taken]);
                bytes = &bytes[taken..];
                if self.buffered.len() < wanted {
                    return false;
                }
                if !self.skipped_preface {
                    self.skipped_preface = true;
                } else {
                    if self.buffered[3] == HEADERS {
                        return true;
                    }
                    let header = &self.buffered;
                    self.skipping =
                        u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
                }
                self.buffered.clear();
            }
            false
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
            let mut bytes = (payload.len() as u32).to_be_bytes()[1..].to_vec();
            bytes.extend_from_slice(&[kind, 0, 0, 0, 0, 1]);
            bytes.extend_from_slice(payload);
            bytes
        }

        #[tokio::test]
        async fn the_reader_stops_at_the_first_request_split_across_reads() {
            let mut sent = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
            sent.extend(frame(SETTINGS, &[0; 12]));
            sent.extend(frame(0x8, &[0; 4])); // WINDOW_UPDATE
            sent.extend(frame(HEADERS, &[0; 30]));
            let (mut client, mut server) = tokio::io::duplex(7);
            let writer = tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                for piece in sent.chunks(5) {
                    client.write_all(piece).await.unwrap();
                }
                client // kept open: the reader must stop on HEADERS, not at the end
            });
            let mut reader = FrameReader::default();
            tokio::time::timeout(
                std::time::Duration::from_secs(5),
                reader.until_stream_opens(&mut server),
            )
            .await
            .expect("stopped at HEADERS");
            drop(writer);
        }

        #[tokio::test]
        async fn the_reader_gives_up_when_the_client_closes_without_a_request() {
            let mut sent = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
            sent.extend(frame(SETTINGS, &[]));
            let mut reader = FrameReader::default();
            reader.until_stream_opens(&mut sent.as_slice()).await;
            assert!(
                reader.buffered.is_empty(),
                "the SETTINGS frame was consumed"
            );
        }

        #[test]
        fn a_huge_frame_is_counted_off_not_buffered() {
            let mut reader = FrameReader::default();
            let mut sent = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
            sent.extend_from_slice(&[0xff, 0xff, 0xff, 0x0, 0, 0, 0, 0, 1]); // DATA, 16 MiB
            assert!(!reader.take(&sent));
            for _ in 0..(0xff_ffff / 4096) {
                assert!(!reader.take(&[0; 4096]));
                assert!(reader.buffered.is_empty(), "payload bytes are not kept");
            }
            assert!(!reader.take(&vec![0; 0xff_ffff % 4096]));
            assert!(
                reader.take(&frame(HEADERS, &[0; 8])),
                "the HEADERS after it is seen"
            );
        }
    }
}
