//! A bucket of S3-compatible object storage as a shared tier: AWS S3, MinIO,
//! Ceph, Cloudflare R2, Google Cloud Storage's S3 API.
//!
//! Requests are signed here (SigV4, by rusty-s3, which does no I/O) and sent
//! by ureq, a blocking HTTP client: the host stays synchronous and brings no
//! async runtime into an embedder. Each request is bounded by the tier's
//! connect timeout and one operation timeout for the whole exchange, and a
//! body longer than `max-value-size` is refused by its `Content-Length`
//! before any of it is read (and cut off at that size if the server sends
//! none).
//!
//! The URL is `s3://bucket[/key/prefix][?region=..&endpoint=..&url-style=..]`.
//! Without `endpoint` the bucket is AWS's, addressed by virtual host; with
//! one (an S3-compatible server), by path unless `url-style` says otherwise.

use super::connection::{Bounds, Failure};
use std::io;
use std::time::Duration;

/// A signed URL is used at once; its signature stays valid this long so that
/// a host whose clock is a little behind the server's is not refused, and a
/// URL that leaked would soon be useless.
const SIGNATURE_LIFETIME: Duration = Duration::from_secs(300);
/// An error reply's body is read up to this much, for its code and message.
const MAX_ERROR_BODY: u64 = 64 << 10;
/// A page of a listing holds at most 1,000 keys of under 1 KiB each.
const MAX_LISTING_PAGE: u64 = 8 << 20;
/// The region of a bucket whose URL names none and no `AWS_REGION` is set:
/// the one S3 itself falls back to.
const DEFAULT_REGION: &str = "us-east-1";

/// The keys that sign requests.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct S3Credentials {
    /// The access key ID (`AWS_ACCESS_KEY_ID`).
    pub access_key_id: String,
    /// The secret access key (`AWS_SECRET_ACCESS_KEY`): never printed.
    pub secret_access_key: String,
    /// A session token, for temporary credentials (`AWS_SESSION_TOKEN`).
    pub session_token: Option<String>,
}

impl S3Credentials {
    /// Credentials of an access key ID and its secret.
    pub fn new(access_key_id: impl Into<String>, secret_access_key: impl Into<String>) -> S3Credentials {
        S3Credentials { access_key_id: access_key_id.into(), secret_access_key: secret_access_key.into(), session_token: None }
    }

    /// The credentials in the environment's `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`, if the first two
    /// are set.
    pub fn from_env() -> Option<S3Credentials> {
        let var = |name| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Some(S3Credentials {
            access_key_id: var("AWS_ACCESS_KEY_ID")?,
            secret_access_key: var("AWS_SECRET_ACCESS_KEY")?,
            session_token: var("AWS_SESSION_TOKEN"),
        })
    }
}

impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Credentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<set>")
            .field("session_token", &self.session_token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// A bucket, and the part of it this tier uses.
pub(crate) struct S3Bucket {
    bucket: rusty_s3::Bucket,
    credentials: rusty_s3::Credentials,
    /// The URL's path, ending in `/` unless empty: every object key starts
    /// with it.
    key_prefix: String,
    agent: ureq::Agent,
    bounds: Bounds,
}

/// One page of a listing.
pub(crate) struct ListingPage {
    pub(crate) keys: Vec<String>,
    pub(crate) next: Option<String>,
}

impl S3Bucket {
    /// The bucket an `s3://` URL names. `credentials` are the configuration's,
    /// else the environment's.
    pub(crate) fn new(
        url: &str,
        credentials: Option<&S3Credentials>,
        ca_file: Option<&std::path::Path>,
        bounds: Bounds,
    ) -> Result<S3Bucket, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("not a usable S3 URL ({e}): expected {EXPECTED}"))?;
        let name = parsed.host_str().filter(|h| !h.is_empty()).ok_or_else(|| format!("the URL names no bucket: expected {EXPECTED}"))?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err("an s3:// URL takes no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or \
                        access-key-id and secret-access-key-file in [cache.remote]"
                .into());
        }
        let (mut region, mut endpoint, mut style) = (None, None, None);
        for (key, value) in parsed.query_pairs() {
            match key.as_ref() {
                "region" => region = Some(value.into_owned()),
                "endpoint" => endpoint = Some(value.into_owned()),
                "url-style" => style = Some(value.into_owned()),
                other => return Err(format!("unknown setting `{other}` in the URL: it takes region, endpoint and url-style")),
            }
        }
        let region = region
            .or_else(|| std::env::var("AWS_REGION").ok())
            .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
            .unwrap_or_else(|| DEFAULT_REGION.into());
        let custom = endpoint.is_some();
        let endpoint = endpoint.unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let endpoint: url::Url =
            endpoint.parse().map_err(|e| format!("endpoint {endpoint} is not a URL ({e}): give http[s]://host[:port]"))?;
        let style = match style.as_deref() {
            Some("path") => rusty_s3::UrlStyle::Path,
            Some("virtual-host") => rusty_s3::UrlStyle::VirtualHost,
            None if custom => rusty_s3::UrlStyle::Path,
            None => rusty_s3::UrlStyle::VirtualHost,
            Some(other) => return Err(format!("url-style={other} is not one: give path or virtual-host")),
        };
        let bucket = rusty_s3::Bucket::new(endpoint.clone(), style, name.to_string(), region)
            .map_err(|e| format!("cannot address bucket {name} at {endpoint}: {e}"))?;
        let credentials = match credentials.cloned().or_else(S3Credentials::from_env) {
            Some(S3Credentials { access_key_id, secret_access_key, session_token: Some(token) }) => {
                rusty_s3::Credentials::new_with_token(access_key_id, secret_access_key, token)
            }
            Some(c) => rusty_s3::Credentials::new(c.access_key_id, c.secret_access_key),
            None => {
                return Err("no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or access-key-id and \
                            secret-access-key-file in [cache.remote]"
                    .into());
            }
        };
        let path = parsed.path().trim_matches('/');
        let key_prefix = if path.is_empty() { String::new() } else { format!("{path}/") };
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(ca_file) = ca_file {
            tls = tls.root_certs(private_roots(ca_file)?);
        }
        let config = ureq::Agent::config_builder()
            .timeout_connect(Some(bounds.connect_timeout))
            .timeout_global(Some(bounds.connect_timeout + bounds.timeout))
            // Error replies are read here, for their code.
            .http_status_as_error(false)
            // A redirect is a bucket in another region: said, not followed.
            .max_redirects(0)
            .tls_config(tls.build())
            .build();
        Ok(S3Bucket { bucket, credentials, key_prefix, agent: config.into(), bounds })
    }

    /// The object key of a tier key.
    pub(crate) fn object_key(&self, tier_key: &str) -> String {
        format!("{}{tier_key}", self.key_prefix)
    }

    /// The bucket as people name it, with its endpoint.
    pub(crate) fn describe(&self) -> String {
        format!("bucket {} at {}", self.bucket.name(), self.bucket.base_url())
    }

    /// The value at `key`, or `None` if there is none.
    pub(crate) fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Failure> {
        use rusty_s3::S3Action;
        let url = self.bucket.get_object(Some(&self.credentials), &self.object_key(key)).sign(SIGNATURE_LIFETIME);
        let mut response = self.agent.get(url.as_str()).call().map_err(failure)?;
        match response.status().as_u16() {
            200 => {}
            404 => return Ok(None),
            _ => return Err(refusal(response)),
        }
        let limit = self.bounds.max_value_size;
        if let Some(declared) = response.body().content_length()
            && declared > limit
        {
            return Err(Failure::TooLarge { declared, limit });
        }
        response.body_mut().with_config().limit(limit).read_to_vec().map(Some).map_err(failure)
    }

    /// Stores `value` at `key`, replacing what was there.
    pub(crate) fn put(&self, key: &str, value: &[u8]) -> Result<(), Failure> {
        use rusty_s3::S3Action;
        let url = self.bucket.put_object(Some(&self.credentials), &self.object_key(key)).sign(SIGNATURE_LIFETIME);
        let response = self.agent.put(url.as_str()).send(value).map_err(failure)?;
        match response.status().as_u16() {
            200 | 201 | 204 => Ok(()),
            _ => Err(refusal(response)),
        }
    }

    /// Deletes the value at `key`; one that is not there is no error.
    pub(crate) fn delete(&self, key: &str) -> Result<(), Failure> {
        use rusty_s3::S3Action;
        let url = self.bucket.delete_object(Some(&self.credentials), &self.object_key(key)).sign(SIGNATURE_LIFETIME);
        let response = self.agent.delete(url.as_str()).call().map_err(failure)?;
        match response.status().as_u16() {
            200 | 204 | 404 => Ok(()),
            _ => Err(refusal(response)),
        }
    }

    /// Whether a value is at `key`.
    pub(crate) fn exists(&self, key: &str) -> Result<bool, Failure> {
        use rusty_s3::S3Action;
        let url = self.bucket.head_object(Some(&self.credentials), &self.object_key(key)).sign(SIGNATURE_LIFETIME);
        let response = self.agent.head(url.as_str()).call().map_err(failure)?;
        match response.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            status => Err(Failure::Refused(format!("HTTP {status} to HEAD"))),
        }
    }

    /// Whether the bucket is there and these credentials may see it.
    pub(crate) fn head_bucket(&self) -> Result<(), Failure> {
        use rusty_s3::S3Action;
        let url = self.bucket.head_bucket(Some(&self.credentials)).sign(SIGNATURE_LIFETIME);
        let response = self.agent.head(url.as_str()).call().map_err(failure)?;
        match response.status().as_u16() {
            200 => Ok(()),
            404 => Err(Failure::Refused(format!("NoSuchBucket: {} does not exist: create it, or fix the URL", self.bucket.name()))),
            403 => Err(Failure::Refused("AccessDenied: these credentials may not use the bucket".into())),
            301 => Err(Failure::Refused("PermanentRedirect: the bucket is in another region: set region= in the URL".into())),
            status => Err(Failure::Refused(format!("HTTP {status} to HEAD bucket"))),
        }
    }

    /// One page of the tier keys under `key` (a prefix of tier keys), from
    /// `cursor` on.
    pub(crate) fn list(&self, key: &str, cursor: Option<&str>) -> Result<ListingPage, Failure> {
        use rusty_s3::S3Action;
        let mut action = self.bucket.list_objects_v2(Some(&self.credentials));
        action.with_prefix(self.object_key(key));
        if let Some(cursor) = cursor {
            action.with_continuation_token(cursor.to_string());
        }
        let url = action.sign(SIGNATURE_LIFETIME);
        let mut response = self.agent.get(url.as_str()).call().map_err(failure)?;
        if response.status().as_u16() != 200 {
            return Err(refusal(response));
        }
        let body = response.body_mut().with_config().limit(MAX_LISTING_PAGE).read_to_string().map_err(failure)?;
        let page = rusty_s3::actions::ListObjectsV2::parse_response(&body)
            .map_err(|e| Failure::Protocol(format!("a listing that is not ListObjectsV2's XML: {e}")))?;
        let keys = page.contents.into_iter().filter_map(|c| c.key.strip_prefix(&self.key_prefix).map(str::to_string)).collect();
        Ok(ListingPage { keys, next: page.next_continuation_token })
    }
}

const EXPECTED: &str = "s3://bucket[/key/prefix][?region=..&endpoint=http[s]://host:port]";

/// The CAs in a PEM file, as the only roots to trust.
fn private_roots(path: &std::path::Path) -> Result<ureq::tls::RootCerts, String> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| format!("cannot read tls-ca-file {shown}: {e}"))?;
    let mut certificates = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certificates.push(c),
            Ok(_) => {}
            Err(e) => return Err(format!("tls-ca-file {shown} is not PEM: {e}")),
        }
    }
    if certificates.is_empty() {
        return Err(format!("tls-ca-file {shown} holds no certificate"));
    }
    Ok(ureq::tls::RootCerts::new_with_certs(&certificates))
}

/// What a request that got no reply failed on.
fn failure(e: ureq::Error) -> Failure {
    match e {
        ureq::Error::Timeout(_) => Failure::TimedOut,
        ureq::Error::BodyExceedsLimit(limit) => Failure::TooLarge { declared: limit.saturating_add(1), limit },
        ureq::Error::Io(e) => Failure::Io(e),
        ureq::Error::ConnectionFailed => Failure::Io(io::Error::new(io::ErrorKind::ConnectionRefused, "cannot connect")),
        ureq::Error::HostNotFound => Failure::Io(io::Error::new(io::ErrorKind::NotFound, "host not found")),
        ureq::Error::Tls(what) => Failure::Tls(format!("TLS: {what}")),
        ureq::Error::Rustls(e) => Failure::Tls(format!("TLS: {e}")),
        other => Failure::Protocol(other.to_string()),
    }
}

/// The error an S3 reply says, as `Code: message (HTTP status)`; a server
/// error (5xx) starts the tier's cool-off.
fn refusal(mut response: ureq::http::Response<ureq::Body>) -> Failure {
    let status = response.status().as_u16();
    let body = response.body_mut().with_config().limit(MAX_ERROR_BODY).read_to_string().unwrap_or_default();
    let element = |name: &str| {
        let start = body.find(&format!("<{name}>"))? + name.len() + 2;
        let end = body[start..].find(&format!("</{name}>"))? + start;
        // The server's words, without control characters (a terminal's
        // escapes, forged line breaks in a log).
        Some(body[start..end].chars().filter(|c| !c.is_control()).collect::<String>())
    };
    let code = element("Code").unwrap_or_else(|| format!("HTTP{status}"));
    let message = element("Message").map(|m| format!(": {m}")).unwrap_or_default();
    let said = format!("{code}{message} (HTTP {status})");
    if status >= 500 { Failure::ServerError(said) } else { Failure::Refused(said) }
}
