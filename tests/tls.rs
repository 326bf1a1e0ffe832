//! The shared tier over TLS (`rediss://`), against Debian's `redis-server`
//! started with `--tls-port` and certificates this test makes: a server
//! whose certificate a trusted CA signed for the host connected to is used;
//! a wrong CA, an expired certificate and a wrong host name are each refused
//! with a message that says which, and cost only a miss; a server that asks
//! for a client certificate gets one.

use crate::support::redis_server::RedisServer;
use crate::support::*;
use capcache::{Cache, RemoteSettings, Source};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType, date_time_ymd};
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};

/// A CA: its certificate (PEM, written to `dir/<name>-ca.pem`) and what signs
/// with it.
struct Ca {
    pem: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, format!("capcache test CA {name}"));
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pem = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&pem, cert.pem()).unwrap();
        Ca { pem, issuer: Issuer::new(params, key) }
    }

    /// A certificate for `names` (DNS names; `127.0.0.1` is added as an
    /// address), valid in `years`; writes `<file>.pem` and `<file>.key`.
    fn issue(&self, dir: &Path, file: &str, names: &[&str], years: (i32, i32)) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.subject_alt_names.push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        params.not_before = date_time_ymd(years.0, 1, 1);
        params.not_after = date_time_ymd(years.1, 1, 1);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (cert_path, key_path) = (dir.join(format!("{file}.pem")), dir.join(format!("{file}.key")));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }
}

/// A server speaking TLS on a port of its own (and plain TCP on another,
/// for the test's own checks), with this certificate; `client_ca` makes it
/// ask every client for a certificate that CA signed.
fn tls_server(test: &str, cert: &(PathBuf, PathBuf), client_ca: Option<&Path>) -> Option<(RedisServer, u16)> {
    let tls_port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let (cert_file, key_file) = (cert.0.display().to_string(), cert.1.display().to_string());
    let mut args = vec!["--tls-port", &tls_port, "--tls-cert-file", &cert_file, "--tls-key-file", &key_file];
    let ca_file = client_ca.map(|ca| ca.display().to_string());
    match &ca_file {
        Some(ca) => args.extend(["--tls-ca-cert-file", ca.as_str(), "--tls-auth-clients", "yes"]),
        None => args.extend(["--tls-auth-clients", "no"]),
    }
    let server = RedisServer::start(test, &args)?;
    Some((server, tls_port.parse().unwrap()))
}

/// A host on the TLS tier: what its first load gave, and what `remote
/// check` said.
fn load_through(dir: &Path, settings: RemoteSettings) -> (Source, String) {
    let cache = Cache::builder().directory(dir).remote(settings).open().unwrap();
    let engine = wasmtime::Engine::default();
    let (_, source) = capcache::wasmtime::load_module_with_source(&cache, &engine, &tiny_module(5)).unwrap();
    cache.flush();
    let check = cache.check_remote().unwrap_or_default().iter().map(|c| c.finding.clone()).collect::<Vec<_>>().join("; ");
    (source, check)
}

#[test]
#[cfg_attr(windows, ignore = "starts redis-server, a Linux program that Wine starts without a handle to wait on or stop")]
fn a_server_a_trusted_ca_signed_for_its_host_is_used_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "good");
    let cert = ca.issue(dir.path(), "server", &["localhost"], (2020, 2100));
    let Some((server, port)) = tls_server("tls::good", &cert, None) else { return };
    let settings = || RemoteSettings::new(format!("rediss://localhost:{port}")).tls_ca_file(&ca.pem);
    // Host A compiles and uploads over TLS; host B, with an empty disk,
    // fetches it over TLS.
    assert_eq!(load_through(&dir.path().join("a"), settings()).0, Source::Miss);
    assert_eq!(server.keys().len(), 1, "nothing reached the server over TLS");
    assert_eq!(load_through(&dir.path().join("b"), settings()).0, Source::RemoteHit);
    // By address too: the certificate names 127.0.0.1.
    let by_address = RemoteSettings::new(format!("rediss://127.0.0.1:{port}")).tls_ca_file(&ca.pem);
    assert_eq!(load_through(&dir.path().join("c"), by_address).0, Source::RemoteHit);
}

#[test]
#[cfg_attr(windows, ignore = "starts redis-server, a Linux program that Wine starts without a handle to wait on or stop")]
fn a_wrong_ca_an_expired_certificate_and_a_wrong_name_are_refused_each_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "good");
    let other = Ca::new(dir.path(), "other");
    let cases = [
        ("wrong-ca", ca.issue(dir.path(), "server", &["localhost"], (2020, 2100)), other.pem.clone(), "not signed by a trusted CA"),
        ("expired", ca.issue(dir.path(), "expired", &["localhost"], (2000, 2001)), ca.pem.clone(), "has expired"),
        ("wrong-name", ca.issue(dir.path(), "elsewhere", &["elsewhere.example"], (2020, 2100)), ca.pem.clone(), "not valid for \"localhost\""),
    ];
    for (case, cert, trusted, said) in cases {
        let Some((server, port)) = tls_server(&format!("tls::{case}"), &cert, None) else { return };
        let settings = RemoteSettings::new(format!("rediss://localhost:{port}")).tls_ca_file(&trusted);
        let (source, check) = load_through(&dir.path().join(case), settings);
        assert_eq!(source, Source::Miss, "{case}: the load did not fall back to compiling");
        assert!(check.contains(said), "{case}: remote check does not say {said:?}: {check}");
        assert!(server.keys().is_empty(), "{case}: a value reached a server that should have been refused");
    }
}

#[test]
#[cfg_attr(windows, ignore = "starts redis-server, a Linux program that Wine starts without a handle to wait on or stop")]
fn a_server_that_asks_for_a_client_certificate_gets_the_one_configured() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "good");
    let cert = ca.issue(dir.path(), "server", &["localhost"], (2020, 2100));
    let client = ca.issue(dir.path(), "client", &["capcache-client"], (2020, 2100));
    let Some((server, port)) = tls_server("tls::client_cert", &cert, Some(&ca.pem)) else { return };
    let url = format!("rediss://localhost:{port}");
    // Without one, the server refuses the handshake, and the check says so.
    let (source, check) = load_through(&dir.path().join("without"), RemoteSettings::new(&url).tls_ca_file(&ca.pem));
    assert_eq!(source, Source::Miss);
    assert!(check.contains("TLS") && check.contains("client certificate"), "{check}");
    // With it, the upload lands.
    let with = RemoteSettings::new(&url).tls_ca_file(&ca.pem).tls_client_cert(&client.0, &client.1);
    assert_eq!(load_through(&dir.path().join("with"), with).0, Source::Miss);
    assert_eq!(server.keys().len(), 1, "the host with a client certificate uploaded nothing");
}

#[test]
#[cfg_attr(windows, ignore = "starts redis-server, a Linux program that Wine starts without a handle to wait on or stop")]
fn tls_settings_that_cannot_work_are_refused_when_the_cache_opens() {
    let dir = tempfile::tempdir().unwrap();
    let open = |settings: RemoteSettings| Cache::builder().directory(dir.path()).remote(settings).open().map(drop).unwrap_err().to_string();
    let err = open(RemoteSettings::new("rediss://localhost:1/#insecure"));
    assert!(err.contains("cannot be turned off") && err.contains("tls-ca-file"), "{err}");
    let err = open(RemoteSettings::new("redis://localhost:1").tls_ca_file("/nonexistent/ca.pem"));
    assert!(err.contains("not rediss://"), "{err}");
    let err = open(RemoteSettings::new("rediss://localhost:1").tls_ca_file("/nonexistent/ca.pem"));
    assert!(err.contains("tls-ca-file /nonexistent/ca.pem"), "{err}");
    // TLS to a cluster, by scheme or by TLS files, is refused by name.
    for settings in [RemoteSettings::new("rediss-cluster://localhost:1"), RemoteSettings::new("redis-cluster://localhost:1").tls_ca_file(dir.path().join("ca.pem"))] {
        let err = open(settings);
        assert!(err.contains("TLS to a Redis Cluster is not supported yet"), "{err}");
    }
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let err = open(RemoteSettings::new("rediss://localhost:1").tls_ca_file(&empty));
    assert!(err.contains("holds no PEM certificate"), "{err}");
}
