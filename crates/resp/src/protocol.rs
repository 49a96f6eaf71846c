//! RESP framing: parsing client requests (multibulk and inline) and encoding replies in RESP2 or
//! RESP3.
//!
//! The parser is incremental and bounded: it never buffers more than one request's worth of
//! bytes, and refuses lengths beyond [`FrameLimits`] before reading them, so a client announcing a
//! huge bulk gets an error instead of making the node allocate it.

use bytes::{Buf, BytesMut};

/// Bounds on what one request may announce.
#[derive(Clone, Copy, Debug)]
pub struct FrameLimits {
    /// Most arguments in one request (Redis: 1,048,576).
    pub max_args: usize,
    /// Longest argument, in bytes.
    pub max_bulk: usize,
    /// Longest inline request or header line.
    pub max_inline: usize,
}

impl Default for FrameLimits {
    fn default() -> Self {
        FrameLimits {
            max_args: 1024 * 1024,
            // A value is at most 1 MiB and a command at most 16 MiB (state limits); an argument
            // beyond the latter can never be accepted, so it is refused before it is read.
            max_bulk: conclave_state::Limits::DEFAULT.max_command_bytes,
            max_inline: 64 * 1024,
        }
    }
}

/// A request that cannot be parsed; the connection answers it and closes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError(pub String);

/// One request: the command name and its arguments, binary safe.
pub type Request = Vec<Vec<u8>>;

/// Takes the next complete request off the front of `buf`. `Ok(None)` means more bytes are
/// needed; an empty request (a blank inline line, `*0`) is returned as an empty vector.
pub fn parse(buf: &mut BytesMut, limits: &FrameLimits) -> Result<Option<Request>, ProtocolError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] == b'*' {
        parse_multibulk(buf, limits)
    } else {
        parse_inline(buf, limits)
    }
}

/// Finds the end of the line starting at `from`; errors when it is longer than allowed.
fn line_end(
    buf: &[u8],
    from: usize,
    limits: &FrameLimits,
    what: &str,
) -> Result<Option<usize>, ProtocolError> {
    let window = &buf[from..buf.len().min(from + limits.max_inline + 2)];
    match window.iter().position(|&b| b == b'\n') {
        Some(i) => Ok(Some(from + i)),
        None if window.len() > limits.max_inline => Err(ProtocolError(format!("too big {what}"))),
        None => Ok(None),
    }
}

fn parse_number(line: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(line).ok()?;
    text.strip_suffix('\r').unwrap_or(text).parse().ok()
}

fn parse_multibulk(
    buf: &mut BytesMut,
    limits: &FrameLimits,
) -> Result<Option<Request>, ProtocolError> {
    let Some(end) = line_end(buf, 0, limits, "mbulk count string")? else {
        return Ok(None);
    };
    let count = match parse_number(&buf[1..end]) {
        Some(n) if n <= limits.max_args as i64 => n,
        _ => return Err(ProtocolError("invalid multibulk length".into())),
    };
    let mut at = end + 1;
    if count <= 0 {
        buf.advance(at);
        return Ok(Some(Vec::new()));
    }
    // First pass: check the whole request is here without copying anything.
    let mut spans = Vec::with_capacity((count as usize).min(1024));
    for _ in 0..count {
        if at >= buf.len() {
            return Ok(None);
        }
        if buf[at] != b'$' {
            return Err(ProtocolError(format!(
                "expected '$', got '{}'",
                char::from(buf[at]).escape_default()
            )));
        }
        let Some(end) = line_end(buf, at, limits, "bulk count string")? else {
            return Ok(None);
        };
        let len = match parse_number(&buf[at + 1..end]) {
            Some(n) if (0..=limits.max_bulk as i64).contains(&n) => n as usize,
            Some(n) if n > limits.max_bulk as i64 => {
                return Err(ProtocolError(format!(
                    "invalid bulk length {n}: arguments are limited to {} bytes",
                    limits.max_bulk
                )))
            }
            _ => return Err(ProtocolError("invalid bulk length".into())),
        };
        let start = end + 1;
        if buf.len() < start + len + 2 {
            // Make room for the rest of this argument at once.
            buf.reserve(start + len + 2 - buf.len());
            return Ok(None);
        }
        if &buf[start + len..start + len + 2] != b"\r\n" {
            return Err(ProtocolError(
                "bulk argument is not terminated by CRLF".into(),
            ));
        }
        spans.push((start, len));
        at = start + len + 2;
    }
    let request = spans.iter().map(|&(s, l)| buf[s..s + l].to_vec()).collect();
    buf.advance(at);
    Ok(Some(request))
}

fn parse_inline(
    buf: &mut BytesMut,
    limits: &FrameLimits,
) -> Result<Option<Request>, ProtocolError> {
    let Some(end) = line_end(buf, 0, limits, "inline request")? else {
        return Ok(None);
    };
    let line = &buf[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let args = split_inline(line)?;
    buf.advance(end + 1);
    Ok(Some(args))
}

/// Splits an inline request into arguments: whitespace separated, with "double quotes" (and
/// backslash escapes) or 'single quotes' as redis-cli and Redis's `sdssplitargs` accept.
fn split_inline(line: &[u8]) -> Result<Request, ProtocolError> {
    let unbalanced = || ProtocolError("unbalanced quotes in request".into());
    let mut args = Vec::new();
    let mut i = 0;
    while i < line.len() {
        if line[i].is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let mut arg = Vec::new();
        match line[i] {
            quote @ (b'"' | b'\'') => {
                i += 1;
                loop {
                    let Some(&c) = line.get(i) else {
                        return Err(unbalanced());
                    };
                    i += 1;
                    if c == quote {
                        break;
                    }
                    if c == b'\\' && quote == b'"' {
                        let Some(&e) = line.get(i) else {
                            return Err(unbalanced());
                        };
                        i += 1;
                        arg.push(match e {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'x' if line.len() >= i + 2 => {
                                let hex = std::str::from_utf8(&line[i..i + 2]).ok();
                                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                                    Some(byte) => {
                                        i += 2;
                                        byte
                                    }
                                    None => b'x',
                                }
                            }
                            other => other,
                        });
                    } else if c == b'\\' && line.get(i) == Some(&b'\'') {
                        arg.push(b'\'');
                        i += 1;
                    } else {
                        arg.push(c);
                    }
                }
                if line.get(i).is_some_and(|c| !c.is_ascii_whitespace()) {
                    return Err(unbalanced());
                }
            }
            _ => {
                while i < line.len() && !line[i].is_ascii_whitespace() {
                    arg.push(line[i]);
                    i += 1;
                }
            }
        }
        args.push(arg);
    }
    Ok(args)
}

/// The protocol version a connection speaks (HELLO switches it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    Resp2,
    Resp3,
}

/// A reply in RESP3's vocabulary; encoding in RESP2 flattens what RESP2 lacks.
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    Status(String),
    Error(String),
    Integer(i64),
    Bulk(Vec<u8>),
    /// A missing value: `$-1` in RESP2, `_` in RESP3.
    Nil,
    /// A missing array (an aborted EXEC): `*-1` in RESP2, `_` in RESP3.
    NilArray,
    Array(Vec<Reply>),
    /// Key-value pairs: a flat array in RESP2.
    Map(Vec<(Reply, Reply)>),
    /// An unordered collection: an array in RESP2.
    Set(Vec<Reply>),
    /// Out-of-band data (pub/sub messages): an array in RESP2.
    Push(Vec<Reply>),
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::Status("OK".into())
    }

    pub fn status(text: &str) -> Reply {
        Reply::Status(text.into())
    }

    /// An error; `text` starts with its code (`ERR`, `WRONGTYPE`, ...).
    pub fn error(text: impl Into<String>) -> Reply {
        Reply::Error(text.into())
    }

    pub fn bulk(bytes: impl Into<Vec<u8>>) -> Reply {
        Reply::Bulk(bytes.into())
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Reply::Error(_))
    }

    /// Appends the encoding of this reply to `out`.
    pub fn encode(&self, version: Version, out: &mut Vec<u8>) {
        let resp3 = version == Version::Resp3;
        match self {
            Reply::Status(text) => line(out, b'+', text.as_bytes()),
            Reply::Error(text) => {
                // An error is one line: a newline inside would end the frame early.
                let text = text.replace(['\r', '\n'], " ");
                line(out, b'-', text.as_bytes())
            }
            Reply::Integer(n) => line(out, b':', n.to_string().as_bytes()),
            Reply::Bulk(bytes) => {
                line(out, b'$', bytes.len().to_string().as_bytes());
                out.extend_from_slice(bytes);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Nil if resp3 => out.extend_from_slice(b"_\r\n"),
            Reply::Nil => out.extend_from_slice(b"$-1\r\n"),
            Reply::NilArray if resp3 => out.extend_from_slice(b"_\r\n"),
            Reply::NilArray => out.extend_from_slice(b"*-1\r\n"),
            Reply::Array(items) => aggregate(out, b'*', items, version),
            Reply::Set(items) => aggregate(out, if resp3 { b'~' } else { b'*' }, items, version),
            Reply::Push(items) => aggregate(out, if resp3 { b'>' } else { b'*' }, items, version),
            Reply::Map(pairs) => {
                let (marker, count) = if resp3 {
                    (b'%', pairs.len())
                } else {
                    (b'*', pairs.len() * 2)
                };
                line(out, marker, count.to_string().as_bytes());
                for (key, value) in pairs {
                    key.encode(version, out);
                    value.encode(version, out);
                }
            }
        }
    }
}

fn line(out: &mut Vec<u8>, marker: u8, body: &[u8]) {
    out.push(marker);
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
}

fn aggregate(out: &mut Vec<u8>, marker: u8, items: &[Reply], version: Version) {
    line(out, marker, items.len().to_string().as_bytes());
    for item in items {
        item.encode(version, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Result<Vec<Request>, ProtocolError> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(request) = parse(&mut buf, &FrameLimits::default())? {
            out.push(request);
        }
        Ok(out)
    }

    fn args(items: &[&str]) -> Request {
        items.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn multibulk_requests_are_parsed_in_order_and_binary_safe() {
        let input =
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\na\r\n\0\r\n";
        let parsed = parse_all(input).unwrap();
        assert_eq!(parsed[0], args(&["GET", "k"]));
        assert_eq!(
            parsed[1],
            vec![b"SET".to_vec(), b"k".to_vec(), b"a\r\n\0".to_vec()]
        );
    }

    #[test]
    fn partial_requests_wait_for_more_bytes() {
        let whole = b"*2\r\n$4\r\nECHO\r\n$5\r\nhello\r\n";
        for cut in 0..whole.len() {
            let mut buf = BytesMut::from(&whole[..cut]);
            assert_eq!(
                parse(&mut buf, &FrameLimits::default()),
                Ok(None),
                "cut at {cut}"
            );
            assert_eq!(
                buf.len(),
                cut,
                "nothing consumed before the request is whole"
            );
            buf.extend_from_slice(&whole[cut..]);
            assert_eq!(
                parse(&mut buf, &FrameLimits::default()),
                Ok(Some(args(&["ECHO", "hello"])))
            );
        }
    }

    #[test]
    fn inline_requests_split_on_whitespace_and_quotes() {
        assert_eq!(parse_all(b"PING\r\n").unwrap(), vec![args(&["PING"])]);
        assert_eq!(
            parse_all(b"set  k \"a b\\x41\\n\" 'c d'\n").unwrap(),
            vec![vec![
                b"set".to_vec(),
                b"k".to_vec(),
                b"a bA\n".to_vec(),
                b"c d".to_vec()
            ]]
        );
        assert_eq!(parse_all(b"\r\n").unwrap(), vec![Vec::<Vec<u8>>::new()]);
        assert!(parse_all(b"set k \"open\r\n").is_err());
    }

    #[test]
    fn bad_lengths_are_refused_before_anything_is_buffered() {
        let limits = FrameLimits::default();
        for bad in [
            &b"*abc\r\n"[..],
            b"*99999999999\r\n",
            b"*1\r\n$-5\r\n",
            b"*1\r\n$99999999999\r\nxx",
            b"*1\r\n+OK\r\n",
            b"*1\r\n$2\r\nabcd\r\n",
        ] {
            let mut buf = BytesMut::from(bad);
            assert!(
                parse(&mut buf, &limits).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut long_line = BytesMut::from(&vec![b'a'; limits.max_inline + 10][..]);
        assert!(parse(&mut long_line, &limits).is_err());
    }

    #[test]
    fn replies_encode_per_protocol_version() {
        let encode = |reply: &Reply, version| {
            let mut out = Vec::new();
            reply.encode(version, &mut out);
            String::from_utf8(out).unwrap()
        };
        let map = Reply::Map(vec![(Reply::bulk("f"), Reply::bulk("v"))]);
        assert_eq!(encode(&map, Version::Resp2), "*2\r\n$1\r\nf\r\n$1\r\nv\r\n");
        assert_eq!(encode(&map, Version::Resp3), "%1\r\n$1\r\nf\r\n$1\r\nv\r\n");
        assert_eq!(encode(&Reply::Nil, Version::Resp2), "$-1\r\n");
        assert_eq!(encode(&Reply::NilArray, Version::Resp2), "*-1\r\n");
        assert_eq!(encode(&Reply::Nil, Version::Resp3), "_\r\n");
        let push = Reply::Push(vec![Reply::bulk("message")]);
        assert_eq!(encode(&push, Version::Resp3), ">1\r\n$7\r\nmessage\r\n");
        assert_eq!(encode(&push, Version::Resp2), "*1\r\n$7\r\nmessage\r\n");
        assert_eq!(
            encode(&Reply::error("ERR a\r\nb"), Version::Resp2),
            "-ERR a  b\r\n"
        );
    }
}
