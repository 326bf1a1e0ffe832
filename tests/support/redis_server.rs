//! A real Redis server for a test: `redis-server` on 127.0.0.1, on a port
//! the kernel chose, with its own data directory and no persistence, stopped
//! (killed) when dropped.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server with these extra arguments (e.g. `--maxmemory 100kb`);
    /// `None` (and a line saying so) when `redis-server` is not installed,
    /// outside CI: under CI, which installs it, that is a failure.
    pub fn start(test: &str, extra: &[&str]) -> Option<RedisServer> {
        let found = Command::new("redis-server").arg("--version").stdout(Stdio::null()).status().is_ok_and(|s| s.success());
        if !found {
            super::skip(test, "redis-server is not installed (apt-get install redis-server)", ".ci/run installs it");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        // The kernel's choice of a free port; the window between closing it
        // and the server binding it is the one race left.
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start redis-server");
        let server = RedisServer { child, port, _dir: dir };
        let started = Instant::now();
        while server.connection().is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "redis-server did not start on port {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(server)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A connection of the test's own, as the default (all-powerful) user.
    pub fn connection(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url())?.get_connection_with_timeout(Duration::from_secs(1))
    }

    pub fn command<T: redis::FromRedisValue>(&self, args: &[&[u8]]) -> T {
        let mut cmd = redis::cmd(std::str::from_utf8(args[0]).unwrap());
        for arg in &args[1..] {
            cmd.arg(*arg);
        }
        cmd.query(&mut self.connection().unwrap()).unwrap()
    }

    /// Every key the server holds.
    pub fn keys(&self) -> Vec<String> {
        self.command(&[b"KEYS", b"*"])
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the server.
    #[cfg(unix)]
    pub fn signal(&self, signal: rustix::process::Signal) {
        rustix::process::kill_process(rustix::process::Pid::from_child(&self.child), signal).unwrap();
    }

    #[cfg(unix)]
    pub fn pid(&self) -> rustix::process::Pid {
        rustix::process::Pid::from_child(&self.child)
    }

    pub fn data_dir(&self) -> PathBuf {
        self._dir.path().to_path_buf()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        #[cfg(unix)]
        let _ = rustix::process::kill_process(rustix::process::Pid::from_child(&self.child), rustix::process::Signal::CONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
