//! One connection to the tier's server, held to the bounds the tier promises:
//! a whole command (its request and its whole reply) within one deadline, a
//! value's declared length checked before any of it is read, and a
//! connection dropped as soon as its replies may no longer line up with its
//! commands.
//!
//! The `redis` crate parses the URL; it does not carry the commands, because
//! its synchronous connection bounds each socket read rather than the command
//! (a server that answers one byte at a time holds the caller as long as it
//! likes), buffers a bulk reply of whatever length the server declares, and
//! keeps using a connection after a reply it could not parse. The few
//! commands the tier sends (GET, SET, DEL, EXISTS, SCAN, PING, CONFIG GET,
//! AUTH, SELECT) and their RESP2 replies are small enough to speak here, with
//! those bounds built in.

use super::tls::TlsTarget;
use redis::{ConnectionAddr, ConnectionInfo};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
#[cfg(unix)]
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// The longest line of a reply (a status, an error, a length): error
/// messages are one sentence, and anything longer is not Redis.
const MAX_LINE: usize = 64 << 10;
/// The most elements of an array reply: SCAN's batches are asked for 1,000
/// keys, CONFIG GET of one name answers two.
const MAX_ARRAY: usize = 100_000;
/// No command sent here is answered by arrays nested deeper than CLUSTER
/// SLOTS' four (ranges, a range, a node, its metadata).
const MAX_DEPTH: usize = 4;
/// Arguments longer than this are written from the caller's buffer, not
/// copied into the request: a value is never held twice.
const WRITE_DIRECTLY: usize = 16 << 10;

/// Why a command failed, and so what becomes of its connection.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The server answered with an error reply (`OOM`, `NOPERM`, ...): it is
    /// reachable and in step.
    Refused(String),
    /// The server answered that it failed (an S3 server's 5xx): it is
    /// reachable but not serving.
    ServerError(String),
    /// The command did not complete within its deadline.
    TimedOut,
    /// A bulk reply declared more bytes than the tier takes; none was read.
    TooLarge { declared: u64, limit: u64 },
    /// The server said something that is not an answer to the command.
    Protocol(String),
    /// The server closed the connection.
    Closed,
    /// Connecting or the socket failed.
    Io(io::Error),
    /// The URL asks for something this tier cannot do.
    Unsupported(&'static str),
    /// TLS refused the server (or the server refused this client): what
    /// was wrong, for people.
    Tls(String),
}

/// What a failure does to its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Aftermath {
    /// Still in step: used again.
    KeepConnection,
    /// Out of step, but the server is fine: a new connection next time.
    DropConnection,
    /// The server is unreachable or misbehaving: the tier cools off.
    CoolOff,
}

impl Failure {
    /// The error code of a refusal (`OOM`, `NOPERM`, `ERR`).
    pub(crate) fn code(&self) -> Option<&str> {
        match self {
            Failure::Refused(message) => message.split_whitespace().next(),
            _ => None,
        }
    }

    pub(crate) fn aftermath(&self) -> Aftermath {
        match self {
            // The server keeps a value it refused for lack of memory in the
            // connection's query buffer for a while, and counts it against
            // maxmemory: a new connection lets the next upload fit.
            Failure::Refused(_) if self.code() == Some("OOM") => Aftermath::DropConnection,
            Failure::Refused(_) => Aftermath::KeepConnection,
            // The rest of the value is still on its way: the connection is
            // out of step, the server is not at fault.
            Failure::TooLarge { .. } => Aftermath::DropConnection,
            _ => Aftermath::CoolOff,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Refused(message) => write!(f, "refused: {message}"),
            Failure::ServerError(message) => write!(f, "the server failed: {message}"),
            Failure::TimedOut => write!(f, "timed out"),
            Failure::TooLarge { declared, limit } => {
                write!(f, "the value declares {declared} bytes, over max-value-size ({limit} bytes); none of it was read")
            }
            Failure::Protocol(what) => write!(f, "protocol error ({what}); connection dropped"),
            Failure::Closed => write!(f, "the server closed the connection"),
            Failure::Io(e) if e.kind() == io::ErrorKind::ConnectionRefused => write!(f, "connection refused: {e}"),
            Failure::Io(e) => write!(f, "{e}"),
            Failure::Unsupported(what) => write!(f, "{what}"),
            Failure::Tls(what) => write!(f, "{what}"),
        }
    }
}

/// A reply, once its kind is known to be an answer (error replies are
/// [`Failure::Refused`]).
#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Status(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// An argument of a command: one slice, or two written one after the other
/// (an entry and its tag) without joining them in memory.
#[derive(Clone, Copy)]
pub(crate) enum Argument<'a> {
    Bytes(&'a [u8]),
    Joined(&'a [u8], &'a [u8]),
}

impl Argument<'_> {
    fn parts(&self) -> [&[u8]; 2] {
        match *self {
            Argument::Bytes(bytes) => [bytes, &[]],
            Argument::Joined(a, b) => [a, b],
        }
    }
}

enum Stream {
    Tcp(TcpStream),
    /// TLS over TCP: the handshake is made by the first read or write.
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
    /// A Unix socket (`unix://`), where the platform has them.
    #[cfg(unix)]
    Unix(UnixStream),
}

impl Stream {
    fn set_timeouts(&self, timeout: Duration) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(Some(timeout)).and_then(|()| s.set_write_timeout(Some(timeout))),
            Stream::Tls(s) => s.sock.set_read_timeout(Some(timeout)).and_then(|()| s.sock.set_write_timeout(Some(timeout))),
            #[cfg(unix)]
            Stream::Unix(s) => s.set_read_timeout(Some(timeout)).and_then(|()| s.set_write_timeout(Some(timeout))),
        }
    }

    /// Whether TLS holds decrypted bytes no read has taken yet.
    fn has_buffered_plaintext(&mut self) -> bool {
        match self {
            Stream::Tls(s) => s.conn.process_new_packets().map_or(true, |state| state.plaintext_bytes_to_read() > 0),
            _ => false,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
            #[cfg(unix)]
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            // Written out at once: a request is written whole, then its
            // reply awaited.
            Stream::Tls(s) => s.write(buf).and_then(|n| s.flush().map(|()| n)),
            #[cfg(unix)]
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Tls(s) => s.flush(),
            _ => Ok(()),
        }
    }
}

impl Stream {
    /// Whether the socket has nothing to read now (and is still open): a
    /// peek that would block.
    #[cfg(unix)]
    fn nothing_to_read(&self) -> bool {
        use std::os::fd::AsFd;
        let fd = match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Tls(s) => s.sock.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        };
        let mut byte = [0u8; 1];
        let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
        matches!(rustix::net::recv(fd, &mut byte, flags), Err(rustix::io::Errno::AGAIN))
    }

    /// The same where a peek cannot be asked not to block: the socket is
    /// made non-blocking for it.
    #[cfg(not(unix))]
    fn nothing_to_read(&self) -> bool {
        let socket = match self {
            Stream::Tcp(s) => s,
            Stream::Tls(s) => &s.sock,
        };
        if socket.set_nonblocking(true).is_err() {
            return false;
        }
        let peeked = socket.peek(&mut [0u8; 1]);
        socket.set_nonblocking(false).is_ok() && matches!(peeked, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// What a [`Connection`] may take and how long it may take it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    /// For connecting.
    pub(crate) connect_timeout: Duration,
    /// For each command, from its first byte sent to its reply's last byte
    /// read.
    pub(crate) timeout: Duration,
    /// The longest bulk reply read.
    pub(crate) max_value_size: u64,
}

/// A connection to the server, authenticated and on its database.
pub(crate) struct Connection {
    reader: BufReader<Stream>,
    bounds: Bounds,
    /// When the command under way must be done.
    deadline: Instant,
}

impl Connection {
    /// Connects within the connect timeout, then authenticates and selects
    /// the database within one operation timeout each.
    pub(crate) fn open(info: &ConnectionInfo, bounds: Bounds, tls: Option<&TlsTarget>) -> Result<Connection, Failure> {
        let stream = match info.addr() {
            ConnectionAddr::Tcp(host, port) => {
                let deadline = Instant::now() + bounds.connect_timeout;
                let mut last = None;
                let mut connected = None;
                for address in (host.as_str(), *port).to_socket_addrs().map_err(Failure::Io)? {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        break;
                    }
                    match TcpStream::connect_timeout(&address, left) {
                        Ok(stream) => {
                            connected = Some(stream);
                            break;
                        }
                        Err(e) => last = Some(e),
                    }
                }
                let stream = match (connected, last) {
                    (Some(stream), _) => stream,
                    (None, Some(e)) if matches!(e.kind(), io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock) => {
                        return Err(Failure::TimedOut);
                    }
                    (None, Some(e)) => return Err(Failure::Io(e)),
                    (None, None) => return Err(Failure::TimedOut),
                };
                // Requests are written whole, then the reply awaited: no
                // reason to let Nagle hold the last segment.
                stream.set_nodelay(true).map_err(Failure::Io)?;
                match tls {
                    Some(tls) => Stream::Tls(Box::new(tls.wrap(stream).map_err(Failure::Tls)?)),
                    None => Stream::Tcp(stream),
                }
            }
            #[cfg(unix)]
            ConnectionAddr::Unix(path) => Stream::Unix(UnixStream::connect(path).map_err(Failure::Io)?),
            _ => return Err(Failure::Unsupported("this kind of Redis address (use redis://, rediss:// or unix://)")),
        };
        let mut connection = Connection { reader: BufReader::with_capacity(64 << 10, stream), bounds, deadline: Instant::now() };
        if let Stream::Tls(_) = connection.reader.get_ref() {
            connection.handshake(tls.map(TlsTarget::host).unwrap_or_default())?;
        }
        let settings = info.redis_settings();
        if let Some(password) = settings.password() {
            let mut auth = vec![Argument::Bytes(b"AUTH")];
            if let Some(user) = settings.username() {
                auth.push(Argument::Bytes(user.as_bytes()));
            }
            auth.push(Argument::Bytes(password.as_bytes()));
            connection.expect_ok(&auth)?;
        }
        if settings.db() != 0 {
            let db = settings.db().to_string();
            connection.expect_ok(&[Argument::Bytes(b"SELECT"), Argument::Bytes(db.as_bytes())])?;
        }
        Ok(connection)
    }

    /// Whether the connection can carry another command: the server has not
    /// closed it (as `timeout` in its configuration does to idle clients),
    /// and sent nothing that no command asked for.
    pub(crate) fn is_in_step(&mut self) -> bool {
        if !self.reader.buffer().is_empty() || self.reader.get_mut().has_buffered_plaintext() {
            return false;
        }
        self.reader.get_ref().nothing_to_read()
    }

    /// `GET key`: the value, or `None` when the key is absent.
    pub(crate) fn get(&mut self, key: &str) -> Result<Option<Vec<u8>>, Failure> {
        match self.command(&[Argument::Bytes(b"GET"), Argument::Bytes(key.as_bytes())])? {
            Reply::Bulk(value) => Ok(value),
            other => Err(unexpected("GET", &other)),
        }
    }

    /// `SET key value [EX seconds]`, the value written from `value` as it is.
    pub(crate) fn set(&mut self, key: &str, value: Argument<'_>, expiry: Option<Duration>) -> Result<(), Failure> {
        let seconds = expiry.map(|ttl| ttl.as_secs().max(1).to_string());
        let mut args = vec![Argument::Bytes(b"SET"), Argument::Bytes(key.as_bytes()), value];
        if let Some(seconds) = &seconds {
            args.extend([Argument::Bytes(b"EX"), Argument::Bytes(seconds.as_bytes())]);
        }
        self.expect_ok(&args)
    }

    /// `DEL key`: how many keys went.
    pub(crate) fn del(&mut self, key: &str) -> Result<i64, Failure> {
        self.integer("DEL", &[Argument::Bytes(b"DEL"), Argument::Bytes(key.as_bytes())])
    }

    /// `EXISTS key`.
    pub(crate) fn exists(&mut self, key: &str) -> Result<bool, Failure> {
        Ok(self.integer("EXISTS", &[Argument::Bytes(b"EXISTS"), Argument::Bytes(key.as_bytes())])? > 0)
    }

    /// `PING`.
    pub(crate) fn ping(&mut self) -> Result<(), Failure> {
        match self.command(&[Argument::Bytes(b"PING")])? {
            Reply::Status(_) => Ok(()),
            other => Err(unexpected("PING", &other)),
        }
    }

    /// One `SCAN cursor MATCH pattern COUNT 1000`: the next cursor (0 at the
    /// end) and a batch of keys.
    pub(crate) fn scan(&mut self, cursor: u64, pattern: &str) -> Result<(u64, Vec<String>), Failure> {
        let cursor_text = cursor.to_string();
        let args = [
            Argument::Bytes(b"SCAN"),
            Argument::Bytes(cursor_text.as_bytes()),
            Argument::Bytes(b"MATCH"),
            Argument::Bytes(pattern.as_bytes()),
            Argument::Bytes(b"COUNT"),
            Argument::Bytes(b"1000"),
        ];
        let reply = self.command(&args)?;
        if let Reply::Array(Some(parts)) = &reply
            && let [Reply::Bulk(Some(next)), Reply::Array(Some(keys))] = parts.as_slice()
            && let Some(next) = std::str::from_utf8(next).ok().and_then(|n| n.parse().ok())
        {
            let keys = keys
                .iter()
                .filter_map(|k| match k {
                    Reply::Bulk(Some(name)) => String::from_utf8(name.clone()).ok(),
                    _ => None,
                })
                .collect();
            return Ok((next, keys));
        }
        Err(unexpected("SCAN", &reply))
    }

    /// `ASKING`: the next command is for a slot this node is importing.
    pub(crate) fn asking(&mut self) -> Result<(), Failure> {
        self.expect_ok(&[Argument::Bytes(b"ASKING")])
    }

    /// `CLUSTER SLOTS`: each range of slots and the `host:port` of the
    /// master that serves it.
    pub(crate) fn cluster_slots(&mut self) -> Result<Vec<(u16, u16, String)>, Failure> {
        let reply = self.command(&[Argument::Bytes(b"CLUSTER"), Argument::Bytes(b"SLOTS")])?;
        let Reply::Array(Some(ranges)) = &reply else { return Err(unexpected("CLUSTER SLOTS", &reply)) };
        let mut slots = Vec::with_capacity(ranges.len());
        for range in ranges {
            let Reply::Array(Some(parts)) = range else { return Err(unexpected("CLUSTER SLOTS", &reply)) };
            match parts.as_slice() {
                [Reply::Integer(start), Reply::Integer(end), Reply::Array(Some(master)), ..] => match master.as_slice() {
                    [Reply::Bulk(Some(host)), Reply::Integer(port), ..] if (0..16384).contains(start) && (0..16384).contains(end) => {
                        slots.push((*start as u16, *end as u16, format!("{}:{port}", String::from_utf8_lossy(host))));
                    }
                    _ => return Err(unexpected("CLUSTER SLOTS", &reply)),
                },
                _ => return Err(unexpected("CLUSTER SLOTS", &reply)),
            }
        }
        Ok(slots)
    }

    /// `CONFIG GET name`: its value, if the server has that setting.
    pub(crate) fn config_get(&mut self, name: &str) -> Result<Option<String>, Failure> {
        let reply = self.command(&[Argument::Bytes(b"CONFIG"), Argument::Bytes(b"GET"), Argument::Bytes(name.as_bytes())])?;
        match &reply {
            Reply::Array(Some(pair)) => Ok(match pair.as_slice() {
                [_, Reply::Bulk(Some(value))] => Some(String::from_utf8_lossy(value).into_owned()),
                _ => None,
            }),
            _ => Err(unexpected("CONFIG GET", &reply)),
        }
    }

    fn expect_ok(&mut self, args: &[Argument<'_>]) -> Result<(), Failure> {
        match self.command(args)? {
            Reply::Status(_) => Ok(()),
            other => Err(unexpected(&String::from_utf8_lossy(args[0].parts()[0]), &other)),
        }
    }

    fn integer(&mut self, name: &str, args: &[Argument<'_>]) -> Result<i64, Failure> {
        match self.command(args)? {
            Reply::Integer(n) => Ok(n),
            other => Err(unexpected(name, &other)),
        }
    }

    /// Sends a command and reads its whole reply before the deadline; a
    /// reply followed by bytes that no command asked for is a protocol error.
    fn command(&mut self, args: &[Argument<'_>]) -> Result<Reply, Failure> {
        self.deadline = Instant::now() + self.bounds.timeout;
        self.send(args)?;
        let reply = self.read_reply(0)?;
        if !self.reader.buffer().is_empty() {
            return Err(Failure::Protocol(format!("{} bytes after a whole reply", self.reader.buffer().len())));
        }
        Ok(reply)
    }

    /// Completes the TLS handshake within one operation timeout: the
    /// server's certificate is verified here, and a refusal says why.
    fn handshake(&mut self, host: &str) -> Result<(), Failure> {
        self.deadline = Instant::now() + self.bounds.timeout;
        let Stream::Tls(_) = self.reader.get_ref() else { return Ok(()) };
        loop {
            self.arm()?;
            let Stream::Tls(tls) = self.reader.get_mut() else { unreachable!("checked above") };
            if !tls.conn.is_handshaking() {
                return Ok(());
            }
            if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
                return Err(match super::tls::tls_error(&e) {
                    Some(refused) => Failure::Tls(super::tls::describe(refused, Some(host))),
                    None if e.kind() == io::ErrorKind::UnexpectedEof => {
                        Failure::Tls("TLS: the server closed the connection during the handshake (is it speaking TLS on this port?)".into())
                    }
                    None => io_failure(e),
                });
            }
        }
    }

    /// The time left before the deadline, set as the socket's timeout for the
    /// next read or write.
    fn arm(&mut self) -> Result<(), Failure> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Failure::TimedOut);
        }
        self.reader.get_ref().set_timeouts(left).map_err(Failure::Io)
    }

    fn send(&mut self, args: &[Argument<'_>]) -> Result<(), Failure> {
        let mut pending = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            let parts = arg.parts();
            pending.extend_from_slice(format!("${}\r\n", parts[0].len() + parts[1].len()).as_bytes());
            for part in parts {
                if part.len() >= WRITE_DIRECTLY {
                    self.write_all(&std::mem::take(&mut pending))?;
                    self.write_all(part)?;
                } else {
                    pending.extend_from_slice(part);
                }
            }
            pending.extend_from_slice(b"\r\n");
        }
        self.write_all(&pending)
    }

    fn write_all(&mut self, mut bytes: &[u8]) -> Result<(), Failure> {
        while !bytes.is_empty() {
            self.arm()?;
            match self.reader.get_mut().write(bytes) {
                Ok(0) => return Err(Failure::Closed),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_failure(e)),
            }
        }
        Ok(())
    }

    /// The bytes buffered, reading more if none are, within the deadline.
    fn fill(&mut self) -> Result<&[u8], Failure> {
        if self.reader.buffer().is_empty() {
            self.arm()?;
        }
        loop {
            match self.reader.fill_buf() {
                Ok([]) => return Err(Failure::Closed),
                Ok(_) => return Ok(self.reader.buffer()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_failure(e)),
            }
        }
    }

    /// A line without its CRLF.
    fn read_line(&mut self) -> Result<Vec<u8>, Failure> {
        let mut line = Vec::new();
        loop {
            let buffered = self.fill()?;
            match buffered.iter().position(|&b| b == b'\n') {
                Some(end) => {
                    line.extend_from_slice(&buffered[..=end]);
                    self.reader.consume(end + 1);
                    break;
                }
                None => {
                    let n = buffered.len();
                    line.extend_from_slice(buffered);
                    self.reader.consume(n);
                }
            }
            if line.len() > MAX_LINE {
                return Err(Failure::Protocol(format!("a line of over {MAX_LINE} bytes")));
            }
        }
        match line.strip_suffix(b"\r\n") {
            Some(content) if line.len() <= MAX_LINE + 2 => Ok(content.to_vec()),
            _ => Err(Failure::Protocol("a line not ended by CRLF".into())),
        }
    }

    /// Exactly `len` bytes, then CRLF, into a buffer allocated once.
    fn read_bulk(&mut self, len: usize) -> Result<Vec<u8>, Failure> {
        let mut value = Vec::with_capacity(len);
        while value.len() < len {
            let buffered = self.fill()?;
            let take = buffered.len().min(len - value.len());
            value.extend_from_slice(&buffered[..take]);
            self.reader.consume(take);
        }
        let mut end = [0u8; 2];
        for byte in &mut end {
            *byte = self.fill()?[0];
            self.reader.consume(1);
        }
        if &end != b"\r\n" {
            return Err(Failure::Protocol("a bulk reply longer than its declared length".into()));
        }
        Ok(value)
    }

    fn read_reply(&mut self, depth: usize) -> Result<Reply, Failure> {
        let line = self.read_line()?;
        let Some((&kind, rest)) = line.split_first() else {
            return Err(Failure::Protocol("an empty line".into()));
        };
        let text = || String::from_utf8_lossy(rest).into_owned();
        let number = || -> Result<i64, Failure> {
            std::str::from_utf8(rest)
                .ok()
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| Failure::Protocol(format!("{:?} where a number belongs", text())))
        };
        match kind {
            b'+' => Ok(Reply::Status(text())),
            b'-' if depth == 0 => Err(Failure::Refused(text())),
            b':' => Ok(Reply::Integer(number()?)),
            b'_' => Ok(Reply::Bulk(None)),
            b'$' => match number()? {
                -1 => Ok(Reply::Bulk(None)),
                len if len < 0 => Err(Failure::Protocol(format!("a bulk length of {len}"))),
                len if len as u64 > self.bounds.max_value_size => {
                    Err(Failure::TooLarge { declared: len as u64, limit: self.bounds.max_value_size })
                }
                len => Ok(Reply::Bulk(Some(self.read_bulk(len as usize)?))),
            },
            b'*' => match number()? {
                -1 => Ok(Reply::Array(None)),
                count if count < 0 || count as usize > MAX_ARRAY => Err(Failure::Protocol(format!("an array of {count} elements"))),
                _ if depth >= MAX_DEPTH => Err(Failure::Protocol("arrays nested deeper than any reply to these commands".into())),
                count => (0..count).map(|_| self.read_reply(depth + 1)).collect::<Result<_, _>>().map(|v| Reply::Array(Some(v))),
            },
            other => Err(Failure::Protocol(format!("a reply that starts with byte {other:#04x}"))),
        }
    }
}

fn io_failure(e: io::Error) -> Failure {
    // TLS says what it refused (a server that wants a client certificate
    // says so at the first read, after the handshake).
    if let Some(refused) = super::tls::tls_error(&e) {
        return Failure::Tls(super::tls::describe(refused, None));
    }
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Failure::TimedOut,
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe => Failure::Closed,
        _ => Failure::Io(e),
    }
}

fn unexpected(command: &str, reply: &Reply) -> Failure {
    let kind = match reply {
        Reply::Status(_) => "a status",
        Reply::Integer(_) => "an integer",
        Reply::Bulk(_) => "a bulk string",
        Reply::Array(_) => "an array",
    };
    Failure::Protocol(format!("{command} answered with {kind}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A connection to a listener that answers the first command with
    /// `reply`, whatever the command.
    fn answered_with(reply: &'static [u8], max_value_size: u64) -> (Connection, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut request = [0u8; 256];
            let _ = socket.read(&mut request);
            socket.write_all(reply).unwrap();
            std::thread::sleep(Duration::from_millis(100));
        });
        let info = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap().get_connection_info().clone();
        let bounds = Bounds { connect_timeout: Duration::from_secs(1), timeout: Duration::from_secs(1), max_value_size };
        (Connection::open(&info, bounds, None).unwrap(), server)
    }

    #[test]
    fn replies_are_read_as_redis_writes_them() {
        let (mut c, s) = answered_with(b"$5\r\nhello\r\n", 100);
        assert_eq!(c.get("k").unwrap(), Some(b"hello".to_vec()));
        s.join().unwrap();
        let (mut c, s) = answered_with(b"$-1\r\n", 100);
        assert_eq!(c.get("k").unwrap(), None);
        s.join().unwrap();
        let (mut c, s) = answered_with(b"*2\r\n$2\r\n17\r\n*2\r\n$1\r\na\r\n$1\r\nb\r\n", 100);
        assert_eq!(c.scan(0, "*").unwrap(), (17, vec!["a".to_string(), "b".to_string()]));
        s.join().unwrap();
        let (mut c, s) = answered_with(b"-NOPERM this user has no permissions\r\n", 100);
        let refused = c.del("k").unwrap_err();
        assert_eq!((refused.code(), refused.aftermath()), (Some("NOPERM"), Aftermath::KeepConnection));
        s.join().unwrap();
    }

    #[test]
    fn a_reply_that_breaks_the_protocol_drops_the_connection() {
        for (reply, why) in [
            (&b"$5\r\nhello\r\n+OK\r\n"[..], "bytes after a whole reply"),
            (b"$3\r\nhello\r\n", "longer than its declared length"),
            (b"HTTP/1.1 400 Bad Request\r\n", "starts with byte"),
            (b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n", "nested deeper"),
            (b":twelve\r\n", "where a number belongs"),
        ] {
            let (mut c, s) = answered_with(reply, 100);
            let failure = c.get("k").unwrap_err();
            assert!(failure.to_string().contains(why), "{failure}");
            assert_eq!(failure.aftermath(), Aftermath::CoolOff, "{failure}");
            s.join().unwrap();
        }
    }

    #[test]
    fn a_value_over_the_limit_is_refused_from_its_declared_length() {
        let (mut c, s) = answered_with(b"$101\r\n", 100);
        let failure = c.get("k").unwrap_err();
        assert!(matches!(failure, Failure::TooLarge { declared: 101, limit: 100 }), "{failure}");
        assert_eq!(failure.aftermath(), Aftermath::DropConnection);
        s.join().unwrap();
        let (mut c, s) = answered_with(b"$100\r\n", 100);
        assert!(matches!(c.get("k").unwrap_err(), Failure::Closed | Failure::TimedOut), "a value at the limit was refused");
        s.join().unwrap();
    }

    #[test]
    fn a_connection_that_was_sent_stray_bytes_or_closed_is_not_reused() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (go, wait) = std::sync::mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut request = [0u8; 256];
            let _ = socket.read(&mut request);
            socket.write_all(b"$-1\r\n").unwrap();
            // After the reply was read, a byte no command asked for.
            wait.recv().unwrap();
            socket.write_all(b"+").unwrap();
            // Open until the client has looked.
            let _ = wait.recv();
        });
        let info = redis::Client::open(format!("redis://127.0.0.1:{port}")).unwrap().get_connection_info().clone();
        let bounds = Bounds { connect_timeout: Duration::from_secs(1), timeout: Duration::from_secs(1), max_value_size: 100 };
        let mut c = Connection::open(&info, bounds, None).unwrap();
        assert_eq!(c.get("k").unwrap(), None);
        assert!(c.is_in_step());
        go.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert!(!c.is_in_step(), "a stray byte went unseen");
        drop(go);
        server.join().unwrap();

        // A server that closes idle connections (its `timeout` setting).
        let (mut c, server) = answered_with(b"$-1\r\n", 100);
        assert_eq!(c.get("k").unwrap(), None);
        server.join().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(!c.is_in_step(), "a closed connection was taken for a live one");
    }
}
