//! A minimal blocking RESP client for tests that need to see the exact frames (RESP2 and RESP3,
//! push frames, malformed input) rather than a library's interpretation of them.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A decoded reply frame.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    Status(String),
    Error(String),
    Integer(i64),
    Bulk(Vec<u8>),
    /// `$-1`, `*-1` or RESP3's `_`.
    Nil,
    Array(Vec<Frame>),
    Map(Vec<(Frame, Frame)>),
    Set(Vec<Frame>),
    Push(Vec<Frame>),
}

impl Frame {
    pub fn bulk(text: &str) -> Frame {
        Frame::Bulk(text.as_bytes().to_vec())
    }

    pub fn status(text: &str) -> Frame {
        Frame::Status(text.into())
    }

    /// The text of an error frame; panics on anything else.
    pub fn error_text(&self) -> &str {
        match self {
            Frame::Error(text) => text,
            other => panic!("expected an error, got {other:?}"),
        }
    }
}

pub struct RespConnection {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl RespConnection {
    pub fn connect(address: &str) -> RespConnection {
        let stream = TcpStream::connect(address).expect("connect to the RESP port");
        stream
            .set_read_timeout(Some(Duration::from_secs(15)))
            .expect("timeout");
        RespConnection {
            reader: BufReader::new(stream.try_clone().expect("clone")),
            writer: stream,
        }
    }

    /// Sends raw bytes, as they are.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("write");
    }

    /// Sends one command as a multibulk request without waiting for the reply.
    pub fn send(&mut self, args: &[&[u8]]) {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            out.extend_from_slice(arg);
            out.extend_from_slice(b"\r\n");
        }
        self.send_raw(&out);
    }

    /// Sends a command given as space-separated words and reads its reply.
    pub fn cmd(&mut self, line: &str) -> Frame {
        let words: Vec<&[u8]> = line.split_whitespace().map(str::as_bytes).collect();
        self.send(&words);
        self.read()
    }

    /// Sends a command with binary arguments and reads its reply.
    pub fn call(&mut self, args: &[&[u8]]) -> Frame {
        self.send(args);
        self.read()
    }

    /// Reads one frame.
    pub fn read(&mut self) -> Frame {
        self.try_read().expect("a reply frame")
    }

    /// Reads one frame; None once the server closed the connection.
    pub fn try_read(&mut self) -> Option<Frame> {
        let mut line = Vec::new();
        if self.reader.read_until(b'\n', &mut line).ok()? == 0 {
            return None;
        }
        let text = String::from_utf8_lossy(&line[1..line.len().saturating_sub(2)]).to_string();
        let count = || text.parse::<i64>().expect("a length");
        Some(match line[0] {
            b'+' => Frame::Status(text),
            b'-' => Frame::Error(text),
            b':' => Frame::Integer(count()),
            b'_' => Frame::Nil,
            b'$' if count() < 0 => Frame::Nil,
            b'$' => {
                let mut data = vec![0; count() as usize + 2];
                self.reader.read_exact(&mut data).ok()?;
                data.truncate(data.len() - 2);
                Frame::Bulk(data)
            }
            b'*' if count() < 0 => Frame::Nil,
            b'*' | b'~' | b'>' => {
                let items = (0..count())
                    .map(|_| self.try_read())
                    .collect::<Option<Vec<_>>>()?;
                match line[0] {
                    b'*' => Frame::Array(items),
                    b'~' => Frame::Set(items),
                    _ => Frame::Push(items),
                }
            }
            b'%' => {
                let mut pairs = Vec::new();
                for _ in 0..count() {
                    pairs.push((self.try_read()?, self.try_read()?));
                }
                Frame::Map(pairs)
            }
            other => panic!("unexpected frame type {:?} in {:?}", other as char, text),
        })
    }

    /// Whether the server has closed the connection (reads EOF within the timeout).
    pub fn is_closed(&mut self) -> bool {
        self.writer
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut byte = [0u8; 1];
        loop {
            match self.reader.read(&mut byte) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(_) => return false,
            }
        }
    }
}
