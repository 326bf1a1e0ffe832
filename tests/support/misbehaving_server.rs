//! A server on 127.0.0.1 that speaks just enough of Redis's protocol to
//! misbehave as a hostile or broken one would: dribbling its replies,
//! declaring huge values, adding bytes after a reply. What a real server
//! cannot be made to do, this one does on purpose.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// What the server saw and did, shared with its threads.
#[derive(Default)]
pub struct Log {
    /// The command names received, in order, across connections.
    pub commands: Mutex<Vec<String>>,
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Bytes of replies written.
    pub bytes_written: AtomicU64,
}

/// A server whose every connection is handled by `answer(command, socket,
/// log)`, called once per request with the command's name (`GET`, `SET`);
/// an `Err` closes the connection.
pub struct MisbehavingServer {
    port: u16,
    log: Arc<Log>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

pub type Answer = fn(&str, &mut TcpStream, &Log) -> std::io::Result<()>;

impl MisbehavingServer {
    pub fn start(answer: Answer) -> MisbehavingServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let log = Arc::new(Log::default());
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = std::thread::spawn({
            let (log, stop) = (log.clone(), stop.clone());
            move || {
                for socket in listener.incoming() {
                    if stop.load(SeqCst) {
                        return;
                    }
                    let Ok(mut socket) = socket else { continue };
                    log.connections.fetch_add(1, SeqCst);
                    let log = log.clone();
                    std::thread::spawn(move || {
                        while let Some(command) = read_command(&mut socket) {
                            log.commands.lock().unwrap().push(command.clone());
                            if answer(&command, &mut socket, &log).is_err() {
                                return;
                            }
                        }
                    });
                }
            }
        });
        MisbehavingServer { port, log, stop, acceptor: Some(acceptor) }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> &Log {
        &self.log
    }
}

impl Drop for MisbehavingServer {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
        // Wakes the acceptor, which sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Writes `bytes`, counted.
pub fn reply(socket: &mut TcpStream, log: &Log, bytes: &[u8]) -> std::io::Result<()> {
    socket.write_all(bytes)?;
    log.bytes_written.fetch_add(bytes.len() as u64, SeqCst);
    Ok(())
}

/// One request, `*N\r\n` then N bulk strings: its first argument, upper
/// case; `None` when the client closed the connection or sent something else.
fn read_command(socket: &mut TcpStream) -> Option<String> {
    let count: usize = read_line(socket)?.strip_prefix('*')?.parse().ok()?;
    let mut name = None;
    for _ in 0..count {
        let len: usize = read_line(socket)?.strip_prefix('$')?.parse().ok()?;
        let mut arg = vec![0u8; len + 2];
        socket.read_exact(&mut arg).ok()?;
        name.get_or_insert_with(|| String::from_utf8_lossy(&arg[..len]).to_uppercase());
    }
    name
}

fn read_line(socket: &mut TcpStream) -> Option<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        if socket.read(&mut byte).ok()? == 0 {
            return None;
        }
        line.push(byte[0]);
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line).ok()
}
