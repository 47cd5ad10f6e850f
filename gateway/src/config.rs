//! Typed gateway settings, read once at start from defaults, an optional TOML
//! file and `RH_GATEWAY_*` environment variables (`__` separates levels, e.g.
//! `RH_GATEWAY_DATABASE__URL`). `DATABASE_URL` is honoured as well.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// Everything the gateway can be configured with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    pub database: DatabaseSettings,
    pub auth: AuthSettings,
    pub http: HttpSettings,
    pub log: LogSettings,
    pub nodes: NodeSettings,
    pub bundles: BundleSettings,
    pub call_logs: CallLogSettings,
    pub results: ResultSettings,
    pub artifacts: ArtifactSettings,
    pub compute: ComputeSettings,
    pub ui: UiSettings,
    /// Named cluster specs a dispatch may bring up on demand: a dispatch to a
    /// cluster that does not exist but has a profile provisions it.
    pub profiles: BTreeMap<String, wire::ClusterSpec>,
}

/// How the gateway provisions compute and how new machines reach it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ComputeSettings {
    /// The URL machines use to reach this gateway (written into their
    /// bootstrap script). Defaults to `http://<listen address>`.
    pub public_url: Option<String>,
    /// Where machines download `rh-node` from. Defaults to this gateway's
    /// `GET /v1/node-binary` (the `rh-node` built next to `rh-gateway`).
    pub node_binary_url: Option<String>,
    /// The `rh-node` this gateway serves and the `local` provider runs.
    /// Defaults to `rh-node` next to the `rh-gateway` executable.
    pub node_binary_path: Option<PathBuf>,
    /// How long a join token is valid; a machine that has not joined by then
    /// fails its cluster.
    pub join_timeout_s: u32,
    /// How often the provisioner reconciles.
    pub reconcile_interval_s: u32,
    /// How often machines carrying our tags are checked against live clusters.
    pub orphan_sweep_interval_s: u32,
    /// Where `local` nodes keep their work folders (default: a folder in
    /// the temp dir named by a hash of the database URL).
    pub local_work_dir: Option<PathBuf>,
    pub aws: Option<AwsSettings>,
    pub gcp: Option<GcpSettings>,
}

/// The `aws` provider (EC2 through aws-sdk-ec2). Credentials come from the
/// standard AWS chain unless both keys are given here.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AwsSettings {
    /// Default region for clusters that do not name one.
    #[serde(default)]
    pub region: Option<String>,
    /// Another EC2 endpoint (a VPC endpoint, or a local test server).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Static credentials; with them, neither the credential chain nor IMDS is consulted.
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default, serialize_with = "serialize_redacted_opt")]
    pub secret_access_key: Option<SecretString>,
    /// AMI used when a cluster names none. It needs Python 3.9+ and curl.
    #[serde(default)]
    pub default_image: Option<String>,
    #[serde(default)]
    pub default_instance_type: Option<String>,
    #[serde(default)]
    pub subnet_id: Option<String>,
    #[serde(default)]
    pub security_group_ids: Vec<String>,
    #[serde(default)]
    pub key_name: Option<String>,
    /// Instance profile (IAM role) name for the instances.
    #[serde(default)]
    pub instance_profile: Option<String>,
}

/// The `gcp` provider (Compute Engine through google-cloud-compute-v1).
/// Credentials are Application Default Credentials.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcpSettings {
    pub project: String,
    /// Default zone for clusters that do not name one.
    #[serde(default)]
    pub zone: Option<String>,
    /// Another Compute endpoint, scheme + host + port (a local test server, say).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Skip credentials (only for a local test endpoint).
    #[serde(default)]
    pub anonymous: bool,
    /// Image used when a cluster names none.
    #[serde(default = "default_gcp_image")]
    pub default_image: String,
    #[serde(default = "default_gcp_machine_type")]
    pub default_machine_type: String,
    /// VPC network; defaults to `global/networks/default`.
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub service_account: Option<String>,
    /// Seconds between zone-operation polls.
    #[serde(default = "default_gcp_poll_s")]
    pub operation_poll_s: f64,
}

fn default_gcp_image() -> String {
    "projects/debian-cloud/global/images/family/debian-12".into()
}

fn default_gcp_machine_type() -> String {
    "e2-standard-4".into()
}

fn default_gcp_poll_s() -> f64 {
    1.0
}

impl Default for ComputeSettings {
    fn default() -> Self {
        ComputeSettings {
            public_url: None,
            node_binary_url: None,
            node_binary_path: None,
            join_timeout_s: 900,
            reconcile_interval_s: 2,
            orphan_sweep_interval_s: 60,
            local_work_dir: None,
            aws: None,
            gcp: None,
        }
    }
}

/// How the gateway tracks node daemons.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeSettings {
    /// How often nodes are asked to heartbeat, and how often the replica
    /// holding a node's link pings it.
    pub heartbeat_interval_s: u32,
    /// How often a node whose link is open heartbeats (what it runs, for the
    /// repair). In between, the pongs to the link's pings keep it alive,
    /// recorded for all of a replica's links by one statement.
    pub linked_heartbeat_interval_s: u32,
    /// A node silent for longer is declared lost, and its dispatches fail with `node_lost`.
    pub lost_after_s: u32,
    /// A dispatch placed on a node that still does not list it after this long
    /// never reached it, and goes back to the queue.
    pub unacknowledged_requeue_s: u32,
}

/// Limits on uploaded code bundles.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BundleSettings {
    /// Largest accepted upload (compressed), in bytes.
    pub max_bytes: usize,
    /// Largest total size once unpacked, in bytes.
    pub max_unpacked_bytes: u64,
    /// Most entries in one bundle.
    pub max_files: u32,
}

/// Limits on stored call output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallLogSettings {
    /// Most bytes of stdout/stderr kept per dispatch; the rest is dropped and
    /// the truncation is marked in the log.
    pub max_bytes_per_dispatch: u64,
}

/// Limits on what a call returns.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResultSettings {
    /// The largest result stored, in bytes of JSON. A larger one fails its
    /// dispatch with `result_too_large`, naming this limit; the call is not
    /// run again. Nodes learn it when they register.
    pub max_bytes: usize,
}

/// The dashboard under `/ui`: where the orchestrators' own UIs are, so a
/// run's page links to its Airflow task instance or Prefect flow run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UiSettings {
    /// Airflow's base URL, e.g. `http://airflow.internal:8080`.
    pub airflow_url: Option<String>,
    /// Prefect's UI base URL, e.g. `http://prefect.internal:4200`.
    pub prefect_url: Option<String>,
}

/// Where the files calls keep (artifacts) are stored, and how much a call may keep.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArtifactSettings {
    /// The store's URL: `file:///path`, `s3://bucket[/prefix]` or
    /// `gs://bucket[/prefix]`. Default: a folder under `$XDG_DATA_HOME` (or
    /// `~/.local/share`) named after the database's installation, which every
    /// replica on this machine shares. Several machines need a bucket.
    pub store: Option<String>,
    /// Options of the store (`object_store` keys such as `aws_endpoint`,
    /// `aws_region`, `aws_allow_http`, `aws_access_key_id`,
    /// `google_service_account`). Credentials not given here come from the
    /// provider's usual environment variables.
    #[serde(serialize_with = "serialize_redacted_map", deserialize_with = "scalars_as_strings")]
    pub options: BTreeMap<String, String>,
    /// The largest file a call may keep, in bytes. A larger one fails its
    /// dispatch with `artifact_too_large`, naming this limit.
    pub max_file_bytes: u64,
    /// The most bytes one call may keep in all.
    pub max_call_bytes: u64,
    /// The most files one call may keep.
    pub max_files: u32,
}

impl Default for ArtifactSettings {
    fn default() -> Self {
        ArtifactSettings {
            store: None,
            options: BTreeMap::new(),
            max_file_bytes: 1024 * 1024 * 1024,
            max_call_bytes: 4 * 1024 * 1024 * 1024,
            max_files: 1_000,
        }
    }
}

/// A map of scalars as strings: `RH_GATEWAY_ARTIFACTS__OPTIONS__AWS_ALLOW_HTTP=true`
/// arrives as a boolean, and `object_store` takes every option as text.
fn scalars_as_strings<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let map: BTreeMap<String, serde_json::Value> = BTreeMap::deserialize(d)?;
    map.into_iter()
        .map(|(key, value)| match value {
            serde_json::Value::String(text) => Ok((key, text)),
            serde_json::Value::Bool(_) | serde_json::Value::Number(_) => Ok((key, value.to_string())),
            other => Err(serde::de::Error::custom(format!("artifacts.options.{key} must be a string, not {other}"))),
        })
        .collect()
}

fn serialize_redacted_map<S: serde::Serializer>(map: &BTreeMap<String, String>, s: S) -> Result<S::Ok, S::Error> {
    let redacted: BTreeMap<&str, &str> = map
        .iter()
        .map(|(k, v)| {
            let secret = ["secret", "key", "token", "password", "credential"].iter().any(|w| k.contains(w));
            (k.as_str(), if secret { "[redacted]" } else { v.as_str() })
        })
        .collect();
    redacted.serialize(s)
}

impl Default for ResultSettings {
    fn default() -> Self {
        ResultSettings { max_bytes: 1024 * 1024 }
    }
}

impl Default for NodeSettings {
    fn default() -> Self {
        NodeSettings {
            heartbeat_interval_s: 2,
            linked_heartbeat_interval_s: 10,
            lost_after_s: 10,
            unacknowledged_requeue_s: 15,
        }
    }
}

impl Default for BundleSettings {
    fn default() -> Self {
        BundleSettings { max_bytes: 64 * 1024 * 1024, max_unpacked_bytes: 512 * 1024 * 1024, max_files: 50_000 }
    }
}

impl Default for CallLogSettings {
    fn default() -> Self {
        CallLogSettings { max_bytes_per_dispatch: 1024 * 1024 }
    }
}

/// Where Postgres is and how many connections to hold.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// A `postgres://` URL.
    #[serde(serialize_with = "serialize_redacted")]
    pub url: SecretString,
    /// Size of the connection pool.
    pub max_connections: u32,
    /// Seconds to wait for a free connection before answering 503.
    pub acquire_timeout_s: u64,
}

/// The JWT algorithms the gateway can be pinned to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with `auth.hs256_secret` (the default).
    HS256,
    /// RSA-SHA256 with PEM keys.
    RS256,
    /// Ed25519 with PEM keys.
    EdDSA,
}

/// How bearer tokens are verified and minted.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// The only algorithm accepted; tokens signed otherwise (or `none`) are rejected.
    pub algorithm: JwtAlgorithm,
    /// Shared secret for HS256, at least 32 bytes.
    #[serde(serialize_with = "serialize_redacted_opt")]
    pub hs256_secret: Option<SecretString>,
    /// PEM public key for RS256/EdDSA verification.
    pub public_key_path: Option<PathBuf>,
    /// PEM private key for RS256/EdDSA, needed only to mint tokens.
    pub private_key_path: Option<PathBuf>,
}

/// HTTP limits.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Largest accepted request body, in bytes; larger ones get 413. (Node
    /// reports may be larger: they carry results of up to `results.max_bytes`.)
    pub body_limit_bytes: usize,
    /// Longest `timeout_s` a wait request may ask for.
    pub max_wait_s: u32,
    /// Requests one HTTP/2 connection may have open at once (the SDK sends
    /// its long-polls over one such connection); more wait in the client
    /// until one ends.
    pub max_streams_per_connection: std::num::NonZeroU32,
    /// If set, `GET /metrics` needs `Authorization: Bearer <this>`.
    #[serde(serialize_with = "serialize_redacted_opt")]
    pub metrics_token: Option<SecretString>,
}

/// Log output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `text` for people, `json` for log pipelines.
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `gateway=debug,info`.
    pub filter: String,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database: DatabaseSettings::default(),
            auth: AuthSettings::default(),
            http: HttpSettings::default(),
            log: LogSettings::default(),
            nodes: NodeSettings::default(),
            bundles: BundleSettings::default(),
            call_logs: CallLogSettings::default(),
            results: ResultSettings::default(),
            artifacts: ArtifactSettings::default(),
            compute: ComputeSettings::default(),
            ui: UiSettings::default(),
            profiles: BTreeMap::new(),
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            url: SecretString::from("postgres://postgres@127.0.0.1:5432/runhouse"),
            max_connections: 16,
            acquire_timeout_s: 5,
        }
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        AuthSettings {
            algorithm: JwtAlgorithm::HS256,
            hs256_secret: None,
            public_key_path: None,
            private_key_path: None,
        }
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            body_limit_bytes: 1024 * 1024,
            max_wait_s: 300,
            max_streams_per_connection: std::num::NonZeroU32::new(16_384).expect("not zero"),
            metrics_token: None,
        }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings { format: LogFormat::Text, filter: "info".into() }
    }
}

impl Settings {
    /// Reads defaults, then `file` (if given), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, Box<figment::Error>> {
        Settings::sources(file).extract().map_err(Box::new)
    }

    /// What was configured, before defaults: `file` (if given), then the
    /// environment. Defaults come from `Settings::default()` as the sources
    /// are extracted (every struct is `#[serde(default)]`), so
    /// `sources(..).contains("database.url")` tells whether anyone set it.
    pub fn sources(file: Option<&Path>) -> Figment {
        let mut figment = Figment::new();
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment
            .merge(Env::raw().only(&["DATABASE_URL"]).map(|_| "database.url".into()))
            .merge(Env::prefixed("RH_GATEWAY_").split("__"))
    }
}

fn serialize_redacted<S: serde::Serializer>(_: &SecretString, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str("[redacted]")
}

fn serialize_redacted_opt<S: serde::Serializer>(value: &Option<SecretString>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => s.serialize_some("[redacted]"),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
// `figment::Jail`'s closures return figment's own (large) error type.
#[allow(clippy::result_large_err)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn with_nothing_configured_every_default_is_real() {
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            let settings = Settings::load(None).map_err(|e| e.to_string())?;
            assert_eq!(settings.database.url.expose_secret(), "postgres://postgres@127.0.0.1:5432/runhouse");
            assert_eq!(settings.listen, SocketAddr::from(([127, 0, 0, 1], 8080)));
            assert!(!Settings::sources(None).contains("database.url"));
            Ok(())
        });
    }

    #[test]
    fn the_file_is_layered_under_the_environment() {
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file(
                "gateway.toml",
                "listen = \"127.0.0.1:9000\"\n[database]\nurl = \"postgres://file/db\"\nmax_connections = 4\n",
            )?;
            let file = Some(Path::new("gateway.toml"));
            let settings = Settings::load(file).map_err(|e| e.to_string())?;
            assert_eq!(settings.database.url.expose_secret(), "postgres://file/db");
            assert_eq!(settings.database.max_connections, 4);
            assert_eq!(settings.database.acquire_timeout_s, 5, "unset keys keep their defaults");
            assert_eq!(settings.listen.port(), 9000);
            assert!(Settings::sources(file).contains("database.url"));
            jail.set_env("RH_GATEWAY_LISTEN", "127.0.0.1:9100");
            jail.set_env("DATABASE_URL", "postgres://env/db");
            let settings = Settings::load(file).map_err(|e| e.to_string())?;
            assert_eq!(settings.listen.port(), 9100);
            assert_eq!(settings.database.url.expose_secret(), "postgres://env/db");
            jail.set_env("RH_GATEWAY_DATABASE__URL", "postgres://prefixed/db");
            let settings = Settings::load(file).map_err(|e| e.to_string())?;
            assert_eq!(settings.database.url.expose_secret(), "postgres://prefixed/db");
            Ok(())
        });
    }

    #[test]
    fn zero_streams_per_connection_is_refused_naming_the_key() {
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            jail.set_env("RH_GATEWAY_HTTP__MAX_STREAMS_PER_CONNECTION", "0");
            let err = Settings::load(None).unwrap_err().to_string();
            assert!(err.to_lowercase().contains("max_streams_per_connection") && err.contains("nonzero"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn an_unknown_key_is_refused_naming_it() {
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file("gateway.toml", "[database]\nurll = \"x\"\n")?;
            let err = Settings::load(Some(Path::new("gateway.toml"))).unwrap_err().to_string();
            assert!(err.contains("urll"), "{err}");
            Ok(())
        });
    }
}
