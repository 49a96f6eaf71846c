//! A minimal Redis-protocol (RESP2) client: one connection, one command at a time, every call
//! bounded by a timeout. The workloads need to tell a reply from a lost connection exactly, so
//! this client never reconnects or retries by itself.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A reply, as RESP2 types it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// Why a call got no reply. After any of these the connection is unusable, and a write's
/// outcome is unknown.
#[derive(Debug)]
pub enum CallError {
    Io(std::io::Error),
    Timeout,
    Protocol(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Io(e) => write!(f, "connection: {e}"),
            CallError::Timeout => write!(f, "no reply in time"),
            CallError::Protocol(e) => write!(f, "protocol: {e}"),
        }
    }
}

pub struct Connection {
    stream: BufReader<TcpStream>,
    timeout: Duration,
}

impl Connection {
    pub async fn connect(address: &str, timeout: Duration) -> Result<Connection, CallError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(address))
            .await
            .map_err(|_| CallError::Timeout)?
            .map_err(CallError::Io)?;
        stream.set_nodelay(true).map_err(CallError::Io)?;
        Ok(Connection {
            stream: BufReader::new(stream),
            timeout,
        })
    }

    /// Sends one command and reads its reply.
    pub async fn call(&mut self, args: &[&[u8]]) -> Result<Reply, CallError> {
        let mut frame = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            frame.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            frame.extend_from_slice(arg);
            frame.extend_from_slice(b"\r\n");
        }
        let exchange = async {
            self.stream
                .get_mut()
                .write_all(&frame)
                .await
                .map_err(CallError::Io)?;
            read_reply(&mut self.stream).await
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| CallError::Timeout)?
    }

    /// Reads the next frame the server pushes (a subscriber's message), waiting at most
    /// `within`. A timeout leaves the connection usable: nothing was sent.
    pub async fn receive(&mut self, within: Duration) -> Result<Option<Reply>, CallError> {
        // Waiting for the first byte can be cut short; a frame begun is read to its end.
        if self.stream.buffer().is_empty() {
            match tokio::time::timeout(within, self.stream.fill_buf()).await {
                Err(_) => return Ok(None),
                Ok(Err(e)) => return Err(CallError::Io(e)),
                Ok(Ok([])) => return Err(CallError::Io(std::io::ErrorKind::UnexpectedEof.into())),
                Ok(Ok(_)) => {}
            }
        }
        tokio::time::timeout(self.timeout, read_reply(&mut self.stream))
            .await
            .map_err(|_| CallError::Timeout)?
            .map(Some)
    }
}

async fn read_line(stream: &mut BufReader<TcpStream>) -> Result<String, CallError> {
    let mut line = Vec::new();
    let n = stream
        .read_until(b'\n', &mut line)
        .await
        .map_err(CallError::Io)?;
    if n == 0 {
        return Err(CallError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    if !line.ends_with(b"\r\n") {
        return Err(CallError::Protocol("line without CRLF".into()));
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).map_err(|_| CallError::Protocol("line is not UTF-8".into()))
}

fn length(text: &str) -> Result<i64, CallError> {
    text.parse()
        .map_err(|_| CallError::Protocol(format!("bad length {text:?}")))
}

fn read_reply(
    stream: &mut BufReader<TcpStream>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Reply, CallError>> + Send + '_>> {
    Box::pin(async move {
        let line = read_line(stream).await?;
        let (kind, rest) = line.split_at(line.len().min(1));
        match kind {
            "+" => Ok(Reply::Simple(rest.to_string())),
            "-" => Ok(Reply::Error(rest.to_string())),
            ":" => Ok(Reply::Integer(length(rest)?)),
            "$" => {
                let len = length(rest)?;
                if len < 0 {
                    return Ok(Reply::Bulk(None));
                }
                let mut data = vec![0; len as usize + 2];
                stream.read_exact(&mut data).await.map_err(CallError::Io)?;
                data.truncate(len as usize);
                Ok(Reply::Bulk(Some(data)))
            }
            "*" => {
                let len = length(rest)?;
                if len < 0 {
                    return Ok(Reply::Array(None));
                }
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(read_reply(stream).await?);
                }
                Ok(Reply::Array(Some(items)))
            }
            other => Err(CallError::Protocol(format!("unknown reply type {other:?}"))),
        }
    })
}
