//! A pipelining RESP3 client, as go-redis v9 speaks to a server: `HELLO 3` on connect, every
//! command written as an array of bulk strings, replies matched to commands in order, push
//! frames (pub/sub messages and subscription confirmations) handed to a channel of their own.
//!
//! One writer task sends whatever callers queued since its last write in one `write_all` (so
//! concurrent callers share round trips, as a connection pool's pipelines do); one reader task
//! parses replies. The client never reconnects or retries: a broken connection fails every
//! command in flight, and the benchmark counts them as errors.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

/// A RESP3 value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Vec<u8>),
    Null,
    Array(Vec<Value>),
    Map(Vec<(Value, Value)>),
    Set(Vec<Value>),
    Double(f64),
    Boolean(bool),
    BigNumber(String),
    /// A push frame (`>`): never the reply to a command.
    Push(Vec<Value>),
}

impl Value {
    /// The value as bytes, for bulk, simple and verbatim strings.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bulk(b) => Some(b),
            Value::Simple(s) => Some(s.as_bytes()),
            _ => None,
        }
    }
}

/// Why a command got no reply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("connection: {0}")]
    Io(String),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("the connection is closed")]
    Closed,
}

/// Commands queued for the writer: their encoded bytes, how many replies they take, and where
/// the replies go.
struct Queued {
    bytes: Vec<u8>,
    replies: usize,
    done: oneshot::Sender<Result<Vec<Value>, Error>>,
}

/// What the reader owes callers, in the order the commands were written; None once the
/// connection has failed (commands queued after that fail at once).
type Pending = Arc<Mutex<Option<VecDeque<(usize, Reply)>>>>;
type Reply = oneshot::Sender<Result<Vec<Value>, Error>>;

/// One connection.
#[derive(Clone)]
pub struct Connection {
    queue: mpsc::UnboundedSender<Queued>,
}

/// Encodes one command as an array of bulk strings.
pub fn encode(args: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

impl Connection {
    /// Connects, says `HELLO 3`, and starts the writer and reader. Push frames go to `pushes`
    /// (dropped when None).
    pub async fn connect(
        address: &str,
        pushes: Option<mpsc::UnboundedSender<Vec<Value>>>,
    ) -> Result<Connection, Error> {
        let stream = TcpStream::connect(address)
            .await
            .map_err(|e| Error::Io(format!("{address}: {e}")))?;
        stream.set_nodelay(true).ok();
        let (reader, writer) = stream.into_split();
        let pending: Pending = Arc::new(Mutex::new(Some(VecDeque::new())));
        let (queue, queued) = mpsc::unbounded_channel();
        tokio::spawn(write_loop(writer, queued, pending.clone()));
        tokio::spawn(read_loop(reader, pending, pushes));
        let connection = Connection { queue };
        match connection.call(&[b"HELLO", b"3"]).await? {
            Value::Map(_) => Ok(connection),
            other => Err(Error::Protocol(format!("HELLO 3 answered {other:?}"))),
        }
    }

    /// Sends one command and waits for its reply (an error reply is a `Value::Error`).
    pub async fn call(&self, args: &[&[u8]]) -> Result<Value, Error> {
        let mut bytes = Vec::new();
        encode(args, &mut bytes);
        let mut replies = self.send(bytes, 1).await?;
        replies.pop().ok_or(Error::Closed)
    }

    /// Sends commands as one pipeline and waits for all their replies, in order.
    pub async fn pipeline(&self, commands: &[Vec<Vec<u8>>]) -> Result<Vec<Value>, Error> {
        let mut bytes = Vec::new();
        for command in commands {
            let args: Vec<&[u8]> = command.iter().map(Vec::as_slice).collect();
            encode(&args, &mut bytes);
        }
        self.send(bytes, commands.len()).await
    }

    /// Sends a command that has no reply of its own (SUBSCRIBE and UNSUBSCRIBE in RESP3 are
    /// confirmed by push frames).
    pub fn send_unanswered(&self, args: &[&[u8]]) -> Result<(), Error> {
        let mut bytes = Vec::new();
        encode(args, &mut bytes);
        let (done, _) = oneshot::channel();
        self.queue
            .send(Queued {
                bytes,
                replies: 0,
                done,
            })
            .map_err(|_| Error::Closed)
    }

    async fn send(&self, bytes: Vec<u8>, replies: usize) -> Result<Vec<Value>, Error> {
        let (done, answer) = oneshot::channel();
        self.queue
            .send(Queued {
                bytes,
                replies,
                done,
            })
            .map_err(|_| Error::Closed)?;
        answer.await.map_err(|_| Error::Closed)?
    }
}

async fn write_loop(
    mut writer: tokio::net::tcp::OwnedWriteHalf,
    mut queued: mpsc::UnboundedReceiver<Queued>,
    pending: Pending,
) {
    let mut buffer = Vec::new();
    while let Some(first) = queued.recv().await {
        buffer.clear();
        let mut batch = vec![first];
        while let Ok(more) = queued.try_recv() {
            batch.push(more);
        }
        {
            let mut pending = pending.lock().expect("pending lock");
            let Some(pending) = pending.as_mut() else {
                for command in batch {
                    let _ = command.done.send(Err(Error::Closed));
                }
                continue;
            };
            for command in batch {
                buffer.extend_from_slice(&command.bytes);
                if command.replies > 0 {
                    pending.push_back((command.replies, command.done));
                }
            }
        }
        if let Err(e) = writer.write_all(&buffer).await {
            fail_all(&pending, Error::Io(e.to_string()));
            return;
        }
    }
}

async fn read_loop(
    mut reader: tokio::net::tcp::OwnedReadHalf,
    pending: Pending,
    pushes: Option<mpsc::UnboundedSender<Vec<Value>>>,
) {
    let mut buffer = Vec::with_capacity(64 * 1024);
    let mut replies: Vec<Value> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let read = match reader.read(&mut chunk).await {
            Ok(0) => {
                fail_all(&pending, Error::Closed);
                return;
            }
            Ok(n) => n,
            Err(e) => {
                fail_all(&pending, Error::Io(e.to_string()));
                return;
            }
        };
        buffer.extend_from_slice(&chunk[..read]);
        let mut start = 0;
        loop {
            match parse(&buffer[start..]) {
                Ok(Some((value, used))) => {
                    start += used;
                    if let Value::Push(items) = value {
                        if let Some(pushes) = &pushes {
                            let _ = pushes.send(items);
                        }
                        continue;
                    }
                    replies.push(value);
                    let mut guard = pending.lock().expect("pending lock");
                    let Some((wanted, _)) = guard.as_ref().and_then(|p| p.front()) else {
                        drop(guard);
                        fail_all(
                            &pending,
                            Error::Protocol("a reply no command waited for".into()),
                        );
                        return;
                    };
                    if replies.len() == *wanted {
                        let queue = guard.as_mut().expect("checked above");
                        let (_, done) = queue.pop_front().expect("front exists");
                        let _ = done.send(Ok(std::mem::take(&mut replies)));
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    fail_all(&pending, e);
                    return;
                }
            }
        }
        buffer.drain(..start);
    }
}

fn fail_all(pending: &Pending, error: Error) {
    let owed = pending.lock().expect("pending lock").take();
    for (_, done) in owed.into_iter().flatten() {
        let _ = done.send(Err(error.clone()));
    }
}

/// Parses one value from the front of `input`: the value and the bytes it took, or None if
/// `input` does not hold a whole value yet.
pub fn parse(input: &[u8]) -> Result<Option<(Value, usize)>, Error> {
    let Some(line_end) = find_crlf(input) else {
        return Ok(None);
    };
    if line_end == 0 {
        return Err(Error::Protocol("empty type line".into()));
    }
    let line = &input[1..line_end];
    let after = line_end + 2;
    let text = || String::from_utf8_lossy(line).into_owned();
    let number = || -> Result<i64, Error> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::Protocol(format!("not a number: {}", text())))
    };
    let value = match input[0] {
        b'+' => Value::Simple(text()),
        b'-' => Value::Error(text()),
        b':' => Value::Integer(number()?),
        b'_' => Value::Null,
        b'#' => Value::Boolean(line == b"t"),
        b',' => Value::Double(text().parse().unwrap_or(f64::NAN)),
        b'(' => Value::BigNumber(text()),
        b'$' | b'=' | b'!' => {
            let length = number()?;
            if length < 0 {
                return Ok(Some((Value::Null, after)));
            }
            let end = after + length as usize;
            if input.len() < end + 2 {
                return Ok(None);
            }
            let body = input[after..end].to_vec();
            let value = match input[0] {
                b'!' => Value::Error(String::from_utf8_lossy(&body).into_owned()),
                // Verbatim strings start with a three-letter format and a colon.
                b'=' => Value::Bulk(body.get(4..).unwrap_or_default().to_vec()),
                _ => Value::Bulk(body),
            };
            return Ok(Some((value, end + 2)));
        }
        kind @ (b'*' | b'~' | b'>' | b'%') => {
            let count = number()?;
            if count < 0 {
                return Ok(Some((Value::Null, after)));
            }
            let items = if kind == b'%' { count * 2 } else { count } as usize;
            let mut values = Vec::with_capacity(items.min(1024));
            let mut used = after;
            for _ in 0..items {
                match parse(&input[used..])? {
                    Some((value, n)) => {
                        values.push(value);
                        used += n;
                    }
                    None => return Ok(None),
                }
            }
            let value = match kind {
                b'*' => Value::Array(values),
                b'~' => Value::Set(values),
                b'>' => Value::Push(values),
                _ => {
                    let mut pairs = Vec::with_capacity(values.len() / 2);
                    let mut values = values.into_iter();
                    while let (Some(k), Some(v)) = (values.next(), values.next()) {
                        pairs.push((k, v));
                    }
                    Value::Map(pairs)
                }
            };
            return Ok(Some((value, used)));
        }
        // Attributes (`|`) describe the next value: skip them.
        b'|' => {
            let count = number()? as usize * 2;
            let mut used = after;
            for _ in 0..count {
                match parse(&input[used..])? {
                    Some((_, n)) => used += n,
                    None => return Ok(None),
                }
            }
            return match parse(&input[used..])? {
                Some((value, n)) => Ok(Some((value, used + n))),
                None => Ok(None),
            };
        }
        other => {
            return Err(Error::Protocol(format!(
                "unknown type byte {:?}",
                other as char
            )))
        }
    };
    Ok(Some((value, after)))
}

fn find_crlf(input: &[u8]) -> Option<usize> {
    input.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_resp3_type_and_waits_for_the_rest_of_a_value() {
        let input = b"%2\r\n+server\r\n$5\r\nredis\r\n:3\r\n_\r\n*2\r\n#t\r\n,1.5\r\n";
        let (value, used) = parse(input).unwrap().unwrap();
        assert_eq!(
            value,
            Value::Map(vec![
                (
                    Value::Simple("server".into()),
                    Value::Bulk(b"redis".to_vec())
                ),
                (Value::Integer(3), Value::Null),
            ])
        );
        let (value, _) = parse(&input[used..]).unwrap().unwrap();
        assert_eq!(
            value,
            Value::Array(vec![Value::Boolean(true), Value::Double(1.5)])
        );
        for cut in 1..used {
            assert_eq!(parse(&input[..cut]).unwrap(), None, "cut at {cut}");
        }
        let push = b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$-1\r\n";
        assert_eq!(
            parse(push).unwrap().unwrap().0,
            Value::Push(vec![
                Value::Bulk(b"message".to_vec()),
                Value::Bulk(b"ch".to_vec()),
                Value::Null
            ])
        );
        assert!(parse(b"?x\r\n").is_err());
    }
}
