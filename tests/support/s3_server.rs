//! A real S3-compatible server for a test: moto in server mode (installed by
//! `tests/support/s3-server/install`) on 127.0.0.1, on a port it chose,
//! holding its objects in its own memory, stopped (killed) when dropped.
//! The test's own requests (making a bucket, planting an object) are signed
//! as the tier's are, with rusty-s3, and sent with ureq.

use rusty_s3::S3Action;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// moto takes any credentials; these are the tests'.
pub const ACCESS_KEY_ID: &str = "capcache-test";
pub const SECRET_ACCESS_KEY: &str = "capcache-test-secret";
const SIGNED_FOR: Duration = Duration::from_secs(60);

pub struct S3Server {
    child: Child,
    pub port: u16,
}

fn moto_server() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")))
        .join("s3-server/bin/moto_server")
}

impl S3Server {
    /// Starts a server with one bucket, `bucket`; `None` (and a line saying
    /// so) when moto is not installed, outside CI: under CI, which installs
    /// it, that is a failure.
    pub fn start(test: &str, bucket: &str) -> Option<S3Server> {
        let program = moto_server();
        if !program.exists() {
            let why = format!("{} is not installed (bash tests/support/s3-server/install)", program.display());
            super::skip(test, &why, ".ci/run installs it");
            return None;
        }
        let mut child = Command::new(&program)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("cannot start moto_server");
        // Werkzeug says where it listens: ` * Running on http://127.0.0.1:PORT`.
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sender = Some(sender);
            for line in stderr.lines().map_while(Result::ok) {
                if let Some(port) = line.split("http://127.0.0.1:").nth(1).and_then(|p| p.trim().parse::<u16>().ok())
                    && let Some(sender) = sender.take()
                {
                    let _ = sender.send(port);
                }
                // Read on, so that the server never blocks on a full pipe.
            }
        });
        let port = receiver.recv_timeout(Duration::from_secs(30)).expect("moto_server did not say its port");
        let server = S3Server { child, port };
        server.create_bucket(bucket);
        Some(server)
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The tier's URL for `bucket`, under the key prefix `path`.
    pub fn url(&self, bucket: &str, path: &str) -> String {
        format!("s3://{bucket}/{path}?endpoint={}&region=us-east-1", self.endpoint())
    }

    fn bucket(&self, name: &str) -> rusty_s3::Bucket {
        rusty_s3::Bucket::new(self.endpoint().parse().unwrap(), rusty_s3::UrlStyle::Path, name.to_string(), "us-east-1").unwrap()
    }

    fn credentials() -> rusty_s3::Credentials {
        rusty_s3::Credentials::new(ACCESS_KEY_ID, SECRET_ACCESS_KEY)
    }

    pub fn create_bucket(&self, name: &str) {
        let url = self.bucket(name).create_bucket(&Self::credentials()).sign(SIGNED_FOR);
        let response = ureq::put(url.as_str()).send_empty().unwrap();
        assert_eq!(response.status(), 200, "moto did not make bucket {name}");
    }

    /// Every object key in `bucket`, sorted.
    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let bucket = self.bucket(bucket);
        let credentials = Self::credentials();
        let url = bucket.list_objects_v2(Some(&credentials)).sign(SIGNED_FOR);
        let body = ureq::get(url.as_str()).call().unwrap().body_mut().read_to_string().unwrap();
        let mut keys: Vec<String> = rusty_s3::actions::ListObjectsV2::parse_response(&body).unwrap().contents.into_iter().map(|c| c.key).collect();
        keys.sort();
        keys
    }

    pub fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        let url = self.bucket(bucket).get_object(Some(&Self::credentials()), key).sign(SIGNED_FOR);
        ureq::get(url.as_str()).call().unwrap().body_mut().with_config().limit(1 << 30).read_to_vec().unwrap()
    }

    pub fn put(&self, bucket: &str, key: &str, value: &[u8]) {
        let url = self.bucket(bucket).put_object(Some(&Self::credentials()), key).sign(SIGNED_FOR);
        assert_eq!(ureq::put(url.as_str()).send(value).unwrap().status(), 200);
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the server.
    #[cfg(unix)]
    pub fn signal(&self, signal: rustix::process::Signal) {
        rustix::process::kill_process(rustix::process::Pid::from_child(&self.child), signal).unwrap();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        #[cfg(unix)]
        let _ = rustix::process::kill_process(rustix::process::Pid::from_child(&self.child), rustix::process::Signal::CONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
