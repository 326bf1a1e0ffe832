//! TLS to the tier (`rediss://`), with rustls: no OpenSSL to install, and
//! the server always verified. Its certificate must chain to a trusted root
//! (the Mozilla roots rustls ships, `webpki-roots`, or the operator's own CA
//! file for a private CA) and name the host the URL names; an expired
//! certificate, an unknown issuer and a wrong name are refused, each said as
//! such. A client certificate and key can be given for servers that ask for
//! one (`tls-auth-clients yes`). There is no way to turn verification off:
//! a private CA goes in `tls-ca-file`.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

/// What a tier's connections need to speak TLS: the client's configuration
/// and the name the server's certificate must carry.
#[derive(Clone)]
pub(crate) struct TlsTarget {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    host: String,
}

/// The files a TLS tier may be given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct TlsFiles<'a> {
    /// PEM certificates of the CAs to trust besides the shipped roots.
    pub(crate) ca_file: Option<&'a Path>,
    /// The client's PEM certificate chain and its PEM private key.
    pub(crate) client: Option<(&'a Path, &'a Path)>,
}

impl TlsTarget {
    /// The configuration for a server at `host`; a message naming the file
    /// and what is wrong with it if one cannot be used.
    pub(crate) fn new(host: &str, files: TlsFiles<'_>) -> Result<TlsTarget, String> {
        let mut roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
        if let Some(path) = files.ca_file {
            let certs = read_certificates(path, "tls-ca-file")?;
            for cert in certs {
                roots.add(cert).map_err(|e| format!("tls-ca-file {}: a certificate in it is not a usable CA ({e})", path.display()))?;
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS cannot be set up: {e}"))?
            .with_root_certificates(roots);
        let config = match files.client {
            None => builder.with_no_client_auth(),
            Some((cert_path, key_path)) => {
                let chain = read_certificates(cert_path, "tls-cert-file")?;
                let key = PrivateKeyDer::from_pem_file(key_path)
                    .map_err(|e| format!("tls-key-file {}: no PEM private key could be read ({e})", key_path.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("tls-cert-file {} and tls-key-file {} do not go together ({e})", cert_path.display(), key_path.display()))?
            }
        };
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|_| format!("{host:?} is not a host name or address a certificate can name"))?;
        Ok(TlsTarget { config: Arc::new(config), server_name, host: host.to_string() })
    }

    /// The host the certificate must name.
    pub(crate) fn host(&self) -> &str {
        &self.host
    }

    /// Starts TLS on `tcp`; the handshake happens at the first read or
    /// write, within the caller's deadline (the socket's timeouts).
    pub(crate) fn wrap(&self, tcp: TcpStream) -> Result<StreamOwned<ClientConnection, TcpStream>, String> {
        let connection = ClientConnection::new(self.config.clone(), self.server_name.clone()).map_err(|e| e.to_string())?;
        Ok(StreamOwned::new(connection, tcp))
    }
}

fn read_certificates(path: &Path, setting: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{setting} {}: cannot be read as PEM certificates ({e})", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{setting} {}: holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// A TLS failure for people: which check refused the server, and what to do.
pub(crate) fn describe(error: &rustls::Error, host: Option<&str>) -> String {
    use rustls::CertificateError as C;
    match error {
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "TLS: the server's certificate has expired (renew it on the server)".to_string()
        }
        rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => {
            "TLS: the server's certificate is not valid yet (check the clocks)".to_string()
        }
        rustls::Error::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            let host = host.map(|h| format!(" for {h:?}")).unwrap_or_default();
            format!("TLS: the server's certificate is not valid{host} (connect by a name it carries)")
        }
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => {
            "TLS: the server's certificate is not signed by a trusted CA (for a private CA, set tls-ca-file)".to_string()
        }
        rustls::Error::InvalidCertificate(other) => format!("TLS: the server's certificate is refused ({other:?})"),
        rustls::Error::AlertReceived(alert @ (rustls::AlertDescription::CertificateRequired | rustls::AlertDescription::BadCertificate | rustls::AlertDescription::UnknownCA)) => {
            format!("TLS: the server refused this client ({alert:?}): it asks for a client certificate it trusts (tls-cert-file, tls-key-file)")
        }
        rustls::Error::AlertReceived(alert) => format!("TLS: the server refused the handshake ({alert:?})"),
        other => format!("TLS: {other}"),
    }
}

/// The TLS error inside an I/O error of a TLS stream, if it is one.
pub(crate) fn tls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

