//! Compute providers: where machines for a cluster come from.
//!
//! Each provider (local processes, existing hosts, EC2, Compute Engine) sits
//! behind [`Provider`], a handful of idempotent calls keyed by an instance key
//! the gateway records *before* it calls the provider. The provisioner
//! (`app::provision`) is the only caller; dispatch code never sees a provider,
//! so adding Kubernetes or Slurm means one more implementation of this trait.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use uuid::Uuid;

use crate::config::Settings;

pub mod aws;
pub mod bootstrap;
pub mod gcp;
pub mod local;

pub use bootstrap::Bootstrap;

/// The tag (EC2) or label (GCE) naming the cluster an instance belongs to.
pub const TAG_CLUSTER: &str = "rh-cluster-id";
/// The tag naming the instance key, i.e. the gateway's intent row.
pub const TAG_INSTANCE: &str = "rh-instance-key";
/// The tag every instance we start carries, so the orphan sweep can find them.
pub const TAG_MANAGED: &str = "rh-managed";

/// One machine to create.
#[derive(Debug, Clone)]
pub struct InstanceRequest {
    pub cluster_id: Uuid,
    pub cluster_name: String,
    /// The idempotency key (EC2 `ClientToken`, GCE `requestId`) and the tag
    /// the machine is found by again. At most 64 characters of `[a-z0-9-]`.
    pub instance_key: String,
    pub node_name: String,
    pub spec: wire::ClusterSpec,
    /// What the machine runs at boot to join as a node.
    pub bootstrap: Bootstrap,
}

/// A machine the provider has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// EC2 instance id, GCE instance name, or pid.
    pub provider_id: String,
    /// From the instance's tags.
    pub cluster_id: Option<Uuid>,
    pub instance_key: Option<String>,
    /// Where it runs (region or zone); empty for local processes.
    pub location: String,
}

/// Why a provider call failed.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The provider refused the request and retrying will not help (a bad
    /// instance type, missing credentials, an unknown image). The cluster
    /// fails with this message.
    #[error("{0}")]
    Rejected(String),
    /// A transient failure (throttling, a network error): the next reconcile retries.
    #[error("{0}")]
    Unavailable(String),
}

/// One way of getting machines. Every method must be safe to call again
/// with the same arguments, since a gateway may die between any two calls.
#[async_trait]
pub trait Provider: Send + Sync {
    /// Starts one machine. Calling again with the same `instance_key` must not
    /// start a second one. Returns the provider's id for it.
    async fn create(&self, request: &InstanceRequest) -> Result<String, ProviderError>;

    /// The live (not terminated) machine started for `instance_key`, if any.
    async fn find(&self, request: &InstanceRequest) -> Result<Option<Instance>, ProviderError>;

    /// Stops a machine for good. Terminating one already gone succeeds.
    async fn terminate(&self, provider_id: &str, location: &str) -> Result<(), ProviderError>;

    /// Every live machine carrying our tags in `locations` (regions or zones),
    /// for the orphan sweep.
    async fn list_managed(&self, locations: &[String]) -> Result<Vec<Instance>, ProviderError>;

    /// Where a cluster of `spec` runs (its region or zone), after defaults.
    fn location(&self, spec: &wire::ClusterSpec) -> String;

    /// True if `find` is cheap enough to run on every reconcile of a ready
    /// cluster (local processes); cloud machines are only looked at when
    /// their node goes missing.
    fn cheap_to_watch(&self) -> bool {
        false
    }
}

/// The providers this gateway is configured with, by name.
#[derive(Clone, Default)]
pub struct Providers(Arc<BTreeMap<&'static str, Arc<dyn Provider>>>);

/// Every provider name a cluster spec may use.
pub const PROVIDER_NAMES: [&str; 4] = ["local", "static", "aws", "gcp"];

impl Providers {
    /// Builds the configured providers. `local` is always there; `aws` and
    /// `gcp` only with their config sections; `static` needs no provider.
    pub async fn from_settings(settings: &Settings, installation: Uuid) -> anyhow::Result<Providers> {
        let mut providers: BTreeMap<&'static str, Arc<dyn Provider>> = BTreeMap::new();
        providers.insert("local", Arc::new(local::LocalProvider::new(settings, installation)));
        if let Some(aws) = &settings.compute.aws {
            providers.insert("aws", Arc::new(aws::AwsProvider::new(aws.clone()).await));
        }
        if let Some(gcp) = &settings.compute.gcp {
            providers.insert("gcp", Arc::new(gcp::GcpProvider::new(gcp.clone()).await?));
        }
        Ok(Providers(Arc::new(providers)))
    }

    /// The provider called `name`, if configured.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Provider>> {
        self.0.get(name)
    }

    /// Every configured provider with its name.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &Arc<dyn Provider>)> {
        self.0.iter().map(|(k, v)| (*k, v))
    }
}
