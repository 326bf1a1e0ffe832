//! Configuring and opening a cache, and finding the caches under a root.

use super::*;

/// Configures and opens a [`Cache`].
#[derive(Debug, Clone)]
pub struct CacheBuilder {
    directory: Option<PathBuf>,
    namespace: String,
    policy: Policy,
    settings: Vec<(String, String)>,
    host: HostSettings,
    clock: Arc<dyn Clock>,
    enabled: bool,
    open_options: StoreOptions,
    remote: Vec<crate::remote::RemoteSettings>,
    direct_mode: DirectMode,
}

impl Default for CacheBuilder {
    fn default() -> Self {
        CacheBuilder {
            directory: None,
            namespace: "default".into(),
            policy: Policy::default(),
            settings: Vec::new(),
            host: HostSettings::default(),
            clock: Arc::new(SystemClock),
            enabled: true,
            remote: Vec::new(),
            open_options: Default::default(),
            direct_mode: DirectMode::Off,
        }
    }
}

impl CacheBuilder {
    /// A builder set up as a configuration file says (see [`crate::config`]).
    pub fn from_config(config: &crate::Config) -> Result<CacheBuilder, Error> {
        let c = &config.cache;
        let mut builder = CacheBuilder::default()
            .enabled(c.enabled)
            .read_only(c.read_only)
            .allow_insecure_directory(c.allow_insecure_directory)
            .direct_mode(c.direct_mode)
            .settings(config.policy_settings());
        if let Some(dir) = &c.directory {
            builder = builder.directory(dir);
        }
        if let crate::config::PolicyChoice::File(path) = &c.policy {
            builder = builder.policy(Policy::from_file(path)?);
        }
        for remote in &c.remote {
            builder = builder.remote(remote_settings(remote)?);
        }
        let h = &c.host;
        let defaults = HostSettings::default();
        let ms = |v: Option<u64>, d| v.map(std::time::Duration::from_millis).unwrap_or(d);
        builder.host = HostSettings {
            event_queue_size: h.event_queue_size.map(|n| n as usize).unwrap_or(defaults.event_queue_size),
            policy_memory_limit: h.policy_memory_limit.map(|n| n as usize).unwrap_or(defaults.policy_memory_limit),
            admit_deadline: ms(h.admit_deadline_ms, defaults.admit_deadline),
            event_deadline: ms(h.event_deadline_ms, defaults.event_deadline),
            maintain_deadline: ms(h.maintain_deadline_ms, defaults.maintain_deadline),
            max_module_size: h.max_module_size.unwrap_or(defaults.max_module_size),
            max_state_files: h.max_state_files.unwrap_or(defaults.max_state_files),
            max_state_bytes: h.max_state_bytes.unwrap_or(defaults.max_state_bytes),
            ..defaults
        };
        Ok(builder)
    }

    /// The cache's root directory; default: the platform's cache directory
    /// (e.g. `~/.cache/capcache`).
    pub fn directory(mut self, directory: impl Into<PathBuf>) -> Self {
        self.directory = Some(directory.into());
        self
    }

    /// The namespace under the root. Entries of different namespaces never
    /// meet; include whatever makes compiled code incompatible (see
    /// [`crate::wasmtime::engine_namespace`]).
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = namespace.into();
        self
    }

    /// The policy component that decides what is kept (default: the embedded
    /// default policy, wasmtime's cache behaviour).
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// The policy's settings, passed to its `configure`.
    pub fn settings<K: Into<String>, V: Into<String>>(mut self, settings: impl IntoIterator<Item = (K, V)>) -> Self {
        self.settings.extend(settings.into_iter().map(|(k, v)| (k.into(), v.into())));
        self
    }

    /// One setting for the policy's `configure`.
    pub fn setting(self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings([(key.into(), value.into())])
    }

    /// The bounds the host puts on the cache and its policy.
    pub fn host_settings(mut self, host: HostSettings) -> Self {
        self.host = host;
        self
    }

    /// The clock the cache and its policy read; tests use a [`crate::ManualClock`].
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Serve hits only: never write, store or clean. (A directory that cannot
    /// be written is opened this way anyway, with a warning.)
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.open_options.read_only = read_only;
        self
    }

    /// Open a directory that is writable by others or owned by another user.
    /// Anyone who can write the cache can plant compiled code that the host
    /// will load: only for directories protected some other way.
    pub fn allow_insecure_directory(mut self, allow: bool) -> Self {
        self.open_options.allow_insecure = allow;
        self
    }

    /// What to do if the directory or the namespace does not exist yet:
    /// create it (the default), or fail with [`Error::NoCache`] and create
    /// nothing, for tools that only look at a cache.
    pub fn if_missing(mut self, if_missing: IfMissing) -> Self {
        self.open_options.if_missing = if_missing;
        self
    }

    /// How file loads find their artifacts: by the file's bytes (the
    /// default), or, for files that are never changed in place, by its
    /// identity (see [`DirectMode`], which says when that is wrong).
    pub fn direct_mode(mut self, mode: DirectMode) -> Self {
        self.direct_mode = mode;
        self
    }

    /// A disabled cache computes every value and stores nothing.
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// A shared tier on Redis behind the local cache (see
    /// [`crate::RemoteSettings`]), after those given before: local misses
    /// ask the tiers in that order, a hit in one is backfilled into those
    /// before it, and what the policy shares goes to every tier this host
    /// writes to.
    pub fn remote(mut self, remote: crate::remote::RemoteSettings) -> Self {
        self.remote.push(remote);
        self
    }

    /// The whole chain of shared tiers, in order, in place of any given
    /// before (an empty one: none).
    pub fn remotes(mut self, remotes: impl IntoIterator<Item = crate::remote::RemoteSettings>) -> Self {
        self.remote = remotes.into_iter().collect();
        self
    }

    /// Opens the directory and starts the policy. Errors name what is wrong:
    /// the directory, the policy component, or a setting.
    pub fn open(self) -> Result<Cache, Error> {
        if !self.enabled {
            return Ok(Cache::disabled());
        }
        let root = match self.directory {
            Some(dir) => dir,
            None => default_directory()?,
        };
        if self.namespace == crate::policy::POLICY_CODE_NAMESPACE {
            return Err(Error::InvalidNamespace(self.namespace));
        }
        let store = EntryStore::open(&root, &self.namespace, self.clock.clone(), self.open_options)?;
        let read_only = store.read_only();
        let remotes = self.remote.into_iter().map(|r| crate::remote::RemoteTier::new(r, &self.namespace)).collect::<Result<Vec<_>, _>>()?;
        let namespace =
            Arc::new(Namespace { store, usage: Mutex::new(Usage::default()), stats: Stats::default(), read_only, remotes });
        // Compiled policies are kept beside the namespaces, so a process
        // starts its policy without compiling it.
        let code_options = StoreOptions { if_missing: IfMissing::Create, ..self.open_options };
        let code = EntryStore::open(&root, crate::policy::POLICY_CODE_NAMESPACE, self.clock.clone(), code_options)
            .map_err(|e| tracing::warn!("compiled policies are not kept ({e}): every start compiles the policy again"))
            .ok()
            .map(Arc::new);
        // A policy that started well here before, with these settings, starts
        // at its first call, off the caller's path; any other starts now,
        // so that its errors are the caller's.
        let at = match &code {
            Some(code) if crate::policy::known_good(code, &self.policy, &self.settings, &self.host) => StartAt::FirstCall,
            _ => StartAt::Now,
        };
        let runtime = PolicyRuntime::start(&self.policy, &self.settings, namespace.clone(), self.host.clone(), code.as_ref(), at)?;
        if at == StartAt::Now
            && let Some(code) = &code
            && !read_only
        {
            crate::policy::mark_known_good(code, &self.policy, &self.settings, &self.host);
        }
        let policy = Arc::new(Mutex::new(runtime));
        let worker = Worker::start(namespace.clone(), policy.clone(), self.host.clone())
            .map_err(|source| Error::Thread { what: "the cache's worker", source })?;
        Ok(Cache {
            inner: Some(Inner {
                namespace,
                policy,
                worker: Some(worker),
                host: self.host,
                direct_mode: self.direct_mode,
                flights: Default::default(),
            }),
        })
    }
}

/// The tier a `[cache.remote]` section describes; the HMAC key comes from
/// `hmac-key-file`, else the environment's `CAPCACHE_REMOTE_HMAC_KEY`.
fn remote_settings(section: &crate::config::RemoteSection) -> Result<crate::remote::RemoteSettings, Error> {
    let mut settings = crate::remote::RemoteSettings::new(&section.url);
    if let Some(prefix) = &section.prefix {
        settings.prefix = prefix.clone();
    }
    if section.mode.as_deref() == Some("read-only") {
        settings.mode = crate::remote::RemoteMode::ReadOnly;
    }
    let ms = |v: Option<u64>, d| v.map(std::time::Duration::from_millis).unwrap_or(d);
    settings.connect_timeout = ms(section.connect_timeout_ms, settings.connect_timeout);
    settings.timeout = ms(section.timeout_ms, settings.timeout);
    settings.cool_off = ms(section.cool_off_ms, settings.cool_off);
    settings.ttl = section.ttl_seconds.map(std::time::Duration::from_secs);
    settings.max_value_size = section.max_value_size.unwrap_or(settings.max_value_size);
    let url = crate::remote::redact(&section.url);
    let refuse = |reason: String| Error::Remote { url: url.clone(), reason };
    for (key, value) in [
        ("connect-timeout-ms", section.connect_timeout_ms),
        ("timeout-ms", section.timeout_ms),
        ("max-value-size", section.max_value_size),
    ] {
        if value == Some(0) {
            return Err(refuse(format!("[cache.remote] {key} = 0 would leave the tier unusable: leave it out for the default, or give a positive value")));
        }
    }
    settings.tls_ca_file = section.tls_ca_file.clone();
    settings.tls_client_cert = match (&section.tls_cert_file, &section.tls_key_file) {
        (Some(cert), Some(key)) => Some((cert.clone(), key.clone())),
        (None, None) => None,
        _ => return Err(refuse("[cache.remote] tls-cert-file and tls-key-file go together: give both, or neither".into())),
    };
    settings.s3_credentials = match (&section.access_key_id, &section.secret_access_key_file) {
        (Some(id), Some(path)) => {
            let secret = read_secret_file(path, "secret-access-key-file").map_err(refuse)?;
            let secret = String::from_utf8(secret)
                .map_err(|_| refuse(format!("secret-access-key-file {} is not text: give the key as it was issued", path.display())))?;
            Some(crate::remote::S3Credentials::new(id, secret))
        }
        (None, None) => None,
        _ => return Err(refuse("[cache.remote] access-key-id and secret-access-key-file go together: give both, or neither".into())),
    };
    settings.hmac_key = match &section.hmac_key_file {
        Some(path) => Some(read_hmac_key_file(path).map_err(refuse)?),
        None => match std::env::var_os("CAPCACHE_REMOTE_HMAC_KEY") {
            Some(key) => {
                let key = key.into_encoded_bytes().trim_ascii().to_vec();
                crate::remote::check_hmac_key(&key, "CAPCACHE_REMOTE_HMAC_KEY").map_err(refuse)?;
                Some(key)
            }
            None => None,
        },
    };
    Ok(settings)
}

/// The HMAC key in the file at `path`: at least 16 bytes (see
/// [`read_secret_file`]).
fn read_hmac_key_file(path: &Path) -> Result<Vec<u8>, String> {
    let key = read_secret_file(path, "hmac-key-file")?;
    crate::remote::check_hmac_key(&key, &format!("hmac-key-file {}", path.display()))?;
    Ok(key)
}

/// The secret in the file at `path` (the setting `setting`), surrounding
/// white space left out, from a file that neither group nor others can read,
/// as ssh asks of its keys.
fn read_secret_file(path: &Path, setting: &str) -> Result<Vec<u8>, String> {
    let shown = path.display();
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {setting} {shown}: {e}"))?;
    let exposed = crate::platform::exposed_secret(&file, &shown.to_string()).map_err(|e| format!("cannot read {setting} {shown}: {e}"))?;
    if let Some(exposed) = exposed {
        return Err(format!("{setting} {shown} {exposed}"));
    }
    let secret = crate::input::read_at_most(file, 0, 1 << 20).map_err(|e| format!("cannot read {setting} {shown}: {e}"))?;
    Ok(secret.trim_ascii().to_vec())
}

/// The namespaces that hold a cache under `root`, sorted (the host's own
/// store of compiled policies is not one). A missing root is
/// [`Error::NoCache`]: a mistyped directory is not an empty cache.
pub fn namespaces(root: &Path) -> Result<Vec<String>, Error> {
    let listing = match std::fs::read_dir(root) {
        Ok(listing) => listing,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Error::NoCache { path: root.to_path_buf() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            return Err(Error::NotADirectory { path: root.to_path_buf() });
        }
        Err(source) => return Err(Error::Directory { path: root.to_path_buf(), source }),
    };
    let mut names = Vec::new();
    for item in listing {
        let item = item.map_err(|source| Error::Directory { path: root.to_path_buf(), source })?;
        let Ok(name) = item.file_name().into_string() else { continue };
        let is_namespace = crate::store::valid_namespace(&name)
            && name != crate::policy::POLICY_CODE_NAMESPACE
            && item.path().join(crate::store::ENTRIES).is_dir();
        if is_namespace {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// The platform's cache directory, with `capcache` under it.
pub fn default_directory() -> Result<PathBuf, Error> {
    dirs::cache_dir().map(|d| d.join("capcache")).ok_or(Error::NoDirectory)
}
