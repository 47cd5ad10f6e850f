//! Cluster use cases: create, read, list, delete, on-demand bring-up from a
//! profile, join tokens for existing hosts, and machines joining as nodes.

use std::time::Duration;

use chrono::Utc;
use uuid::Uuid;

use super::dispatch::validate_name;
use super::App;
use crate::auth::{Caller, Keys, NodeBinding};
use crate::compute::PROVIDER_NAMES;
use crate::db::{ClusterKey, ClusterRow, ClusterState, InstanceRow, NewCluster, NewInstance, NodeRow};
use crate::{Error, Result};

const MAX_NODES: u32 = 64;
/// How long a joined node's token lasts; nodes keep it to re-register after restarts.
const NODE_TOKEN_TTL: Duration = Duration::from_secs(365 * 86_400);

/// A cluster with its machines and nodes.
#[derive(Debug, Clone)]
pub struct ClusterView {
    pub row: ClusterRow,
    pub instances: Vec<InstanceRow>,
    pub nodes: Vec<NodeRow>,
}

impl App {
    /// Starts provisioning a new cluster of the caller's project (admin). A
    /// live cluster of the project with the same name is a 409.
    pub async fn cluster_create(&self, caller: &Caller, req: wire::CreateCluster) -> Result<ClusterView> {
        validate_name("name", &req.name)?;
        self.validate_spec(&req.spec)?;
        if req.shared_with.len() > 64 {
            return Err(Error::invalid("shared_with", "at most 64 projects"));
        }
        for project in &req.shared_with {
            validate_name("shared_with", project)?;
        }
        let new = NewCluster {
            project: caller.project.clone(),
            shared_with: req.shared_with.clone(),
            name: req.name.clone(),
            provider: req.spec.provider.clone(),
            spec: serde_json::to_value(&req.spec).map_err(|e| Error::Internal(e.into()))?,
            profile: None,
            created_by: caller.sub.clone(),
        };
        let row = self.db.cluster_insert(&new).await?.ok_or(Error::ClusterExists { name: req.name })?;
        tracing::info!(cluster = %row.name, provider = %row.provider, actor = %caller.sub, "cluster requested");
        self.provisioner.notify_one();
        Ok(ClusterView { row, instances: Vec::new(), nodes: Vec::new() })
    }

    /// The caller's project's live cluster called `name`, or its most recent ended one.
    pub async fn cluster_get(&self, caller: &Caller, name: &str) -> Result<ClusterView> {
        let row = self.cluster_row(caller, name).await?;
        self.cluster_view(row).await
    }

    async fn cluster_row(&self, caller: &Caller, name: &str) -> Result<ClusterRow> {
        if !crate::auth::is_name(name) {
            return Err(not_found(name));
        }
        self.db.cluster_by_name(&ClusterKey::new(&caller.project, name)).await?.ok_or_else(|| not_found(name))
    }

    /// The caller's project's live clusters (or all, with history), newest first.
    pub async fn cluster_list(&self, caller: &Caller, all: bool) -> Result<Vec<ClusterView>> {
        let mut views = Vec::new();
        for row in self.db.cluster_list(Some(&caller.project), all).await? {
            views.push(self.cluster_view(row).await?);
        }
        Ok(views)
    }

    async fn cluster_view(&self, row: ClusterRow) -> Result<ClusterView> {
        let instances = self.db.instances_of(row.cluster_id).await?;
        let nodes = if row.state == ClusterState::Terminated || row.state == ClusterState::Failed {
            Vec::new()
        } else {
            self.db.node_list(&row.project, Some(&row.name)).await?
        };
        Ok(ClusterView { row, instances, nodes })
    }

    /// Stops a cluster (admin): its machines are terminated and it ends
    /// `terminated`. Deleting a stopping or ended cluster changes nothing.
    pub async fn cluster_delete(&self, caller: &Caller, name: &str) -> Result<ClusterView> {
        loop {
            let row = self.cluster_row(caller, name).await?;
            if !matches!(row.state, ClusterState::Provisioning | ClusterState::Ready) {
                return self.cluster_view(row).await;
            }
            let reason = format!("deleted by {}", caller.sub);
            if let Some(row) = self
                .db
                .cluster_transition(row.cluster_id, row.generation, ClusterState::Stopping, Some(&reason))
                .await?
            {
                tracing::info!(cluster = %name, actor = %caller.sub, "cluster stopping");
                self.provisioner.notify_one();
                return self.cluster_view(row).await;
            }
        }
    }

    /// Creates `cluster` with `spec` unless a live one exists (for `dev`).
    pub async fn cluster_ensure(&self, cluster: &ClusterKey, spec: &wire::ClusterSpec, created_by: &str) -> Result<()> {
        self.validate_spec(spec)?;
        let new = NewCluster {
            project: cluster.project.clone(),
            shared_with: Vec::new(),
            name: cluster.name.clone(),
            provider: spec.provider.clone(),
            spec: serde_json::to_value(spec).map_err(|e| Error::Internal(e.into()))?,
            profile: None,
            created_by: created_by.to_owned(),
        };
        if self.db.cluster_insert(&new).await?.is_some() {
            self.provisioner.notify_one();
        }
        Ok(())
    }

    /// A single-use join token for one more host of a `static` cluster (admin).
    pub async fn cluster_join_token(&self, caller: &Caller, name: &str) -> Result<wire::JoinTokenCreated> {
        let row = self.cluster_row(caller, name).await?;
        if row.provider != "static" {
            return Err(Error::invalid(
                "name",
                format!("cluster `{name}` is `{}`: the gateway joins its machines itself; join tokens are for `static` clusters", row.provider),
            ));
        }
        if !matches!(row.state, ClusterState::Provisioning | ClusterState::Ready) {
            return Err(Error::invalid("name", format!("cluster `{name}` is {:?}; create it again", row.state)));
        }
        let ordinal = self.db.instances_of(row.cluster_id).await?.iter().map(|i| i.ordinal + 1).max().unwrap_or(0);
        let new = self.new_instance(&row, ordinal);
        self.db.instance_insert(&new).await?;
        let gateway = self.public_url();
        Ok(wire::JoinTokenCreated {
            command: format!("rh-node run --gateway {gateway} --join {}", new.join_token),
            join_token: new.join_token,
            node_name: new.node_name,
            expires_at: new.join_expires_at,
        })
    }

    /// A machine trades its join token (once) for its node identity and token.
    pub async fn node_join(&self, keys: &Keys, req: wire::JoinNode) -> Result<wire::NodeJoined> {
        let refused = || Error::JoinRefused;
        if !req.join_token.starts_with("rhj_") {
            return Err(refused());
        }
        // The node token's id is recorded by the same statement that spends
        // the join token, so it can be revoked when the machine goes.
        let jti = Uuid::new_v4().to_string();
        let (instance, cluster, spec) =
            self.db.instance_join(&req.join_token, req.instance_id.as_deref(), &jti).await?.ok_or_else(refused)?;
        let binding = NodeBinding { cluster: cluster.name.clone(), name: instance.node_name.clone() };
        let (token, _) =
            keys.mint_node(&cluster.project, &binding, NODE_TOKEN_TTL, &jti).map_err(|e| Error::Internal(e.into()))?;
        let spec: wire::ClusterSpec = serde_json::from_value(spec).unwrap_or_default();
        tracing::info!(cluster = %cluster, node = %instance.node_name, "machine joined");
        Ok(wire::NodeJoined { cluster: cluster.name, name: instance.node_name, token, labels: spec.labels })
    }

    /// A dispatch names `cluster` of its own project: if no live cluster has
    /// that name but a profile does, bring one up for the project. Costs
    /// nothing for names without a profile.
    pub async fn cluster_ensure_for_dispatch(&self, cluster: &ClusterKey, requester: &str) -> Result<()> {
        let Some(spec) = self.settings.profiles.get(&cluster.name) else { return Ok(()) };
        if let Some(row) = self.db.cluster_by_name(cluster).await? {
            if matches!(row.state, ClusterState::Provisioning | ClusterState::Ready | ClusterState::Stopping) {
                return Ok(());
            }
        }
        let new = NewCluster {
            project: cluster.project.clone(),
            shared_with: Vec::new(),
            name: cluster.name.clone(),
            provider: spec.provider.clone(),
            spec: serde_json::to_value(spec).map_err(|e| Error::Internal(e.into()))?,
            profile: Some(cluster.name.clone()),
            created_by: requester.to_owned(),
        };
        if let Some(row) = self.db.cluster_insert(&new).await? {
            tracing::info!(cluster = %row.name, provider = %row.provider, "bringing up a cluster from its profile");
            self.provisioner.notify_one();
        }
        Ok(())
    }

    /// Why a queued dispatch for `key` has not started.
    pub async fn queued_reason(&self, key: &ClusterKey) -> Result<String> {
        let row = self.db.cluster_by_name(key).await?;
        let cluster = &key.name;
        let profile = self.settings.profiles.contains_key(cluster);
        Ok(match row.map(|r| (r.state, r)) {
            Some((ClusterState::Provisioning, row)) => {
                let joined = self.db.cluster_ready_nodes(key).await?;
                let spec: wire::ClusterSpec = serde_json::from_value(row.spec).unwrap_or_default();
                let kind = spec.instance_type.map(|t| format!(" {t}")).unwrap_or_default();
                format!(
                    "waiting for cluster `{cluster}` to be provisioned ({}{kind}; {joined} of {} nodes joined)",
                    row.provider, spec.count
                )
            }
            Some((ClusterState::Ready, _)) => format!("waiting for a free slot on cluster `{cluster}`"),
            Some((ClusterState::Stopping, _)) if profile => {
                format!("cluster `{cluster}` is stopping; it will be brought up again from its profile")
            }
            Some((ClusterState::Stopping, _)) => format!("cluster `{cluster}` is stopping"),
            Some((state @ (ClusterState::Failed | ClusterState::Terminated), row)) if !profile => format!(
                "cluster `{cluster}` is {}{}; create it again or add a profile",
                if state == ClusterState::Failed { "failed" } else { "terminated" },
                row.state_reason.map(|r| format!(" ({r})")).unwrap_or_default()
            ),
            _ if profile => format!("cluster `{cluster}` is being brought up from its profile"),
            _ => format!(
                "no cluster `{cluster}` exists and no profile defines one; waiting for a node to join `{cluster}`"
            ),
        })
    }

    /// When an idle cluster with autostop will be stopped, if it is idle
    /// now: its last dispatch's end (or its ready time) plus
    /// `autostop_idle_minutes`. `None` while busy or without autostop.
    pub async fn cluster_autostop_at(
        &self,
        cluster: &ClusterRow,
        spec: &wire::ClusterSpec,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>> {
        let Some(minutes) = spec.autostop_idle_minutes else {
            return Ok(None);
        };
        let (busy, last) = self.db.cluster_activity(&cluster.key()).await?;
        if busy {
            return Ok(None);
        }
        let since = last.into_iter().chain(cluster.ready_at).max().unwrap_or(cluster.updated_at);
        Ok(Some(since + chrono::Duration::milliseconds((minutes * 60_000.0) as i64)))
    }

    /// The URL machines use to reach this gateway.
    pub fn public_url(&self) -> String {
        self.settings.compute.public_url.clone().unwrap_or_else(|| format!("http://{}", self.settings.listen))
    }

    /// A new instance intent for `cluster` at `ordinal`, with a fresh key and
    /// join token. Node names are per slot, so a replacement machine's node
    /// takes over the name (and node row) of the one it replaces.
    pub(crate) fn new_instance(&self, cluster: &ClusterRow, ordinal: i32) -> NewInstance {
        let count = serde_json::from_value::<wire::ClusterSpec>(cluster.spec.clone()).map(|s| s.count).unwrap_or(1);
        let slot = if cluster.provider == "static" { ordinal } else { ordinal % count.max(1) as i32 };
        let secret: [u8; 24] = rand::random();
        NewInstance {
            cluster_id: cluster.cluster_id,
            ordinal,
            instance_key: Uuid::new_v4().to_string(),
            node_name: format!("{}-{}", cluster.name, slot + 1),
            join_token: format!("rhj_{}", hex::encode(secret)),
            join_expires_at: Utc::now() + chrono::Duration::seconds(self.settings.compute.join_timeout_s.into()),
        }
    }

    fn validate_spec(&self, spec: &wire::ClusterSpec) -> Result<()> {
        let provider = spec.provider.as_str();
        if !PROVIDER_NAMES.contains(&provider) {
            return Err(Error::invalid(
                "spec.provider",
                format!("unknown provider `{provider}`; use one of local, static, aws, gcp"),
            ));
        }
        if provider != "static" && self.providers.get(provider).is_none() {
            return Err(Error::invalid(
                "spec.provider",
                format!("provider `{provider}` is not configured on this gateway; add a [compute.{provider}] section to its config"),
            ));
        }
        if spec.count == 0 || spec.count > MAX_NODES {
            return Err(Error::invalid("spec.count", format!("`count` must be between 1 and {MAX_NODES}")));
        }
        if let Some(provider_impl) = self.providers.get(provider) {
            if matches!(provider, "aws" | "gcp") && provider_impl.location(spec).is_empty() {
                let (field, default) =
                    if provider == "aws" { ("region", "compute.aws.region") } else { ("zone", "compute.gcp.zone") };
                return Err(Error::invalid(
                    format!("spec.{field}"),
                    format!("`{field}` is required for {provider} clusters (and {default} sets no default)"),
                ));
            }
        }
        if provider == "gcp" && spec.gpus > 0 && spec.gpu_type.is_none() {
            return Err(Error::invalid("spec.gpu_type", "`gpus` on gcp needs `gpu_type`, e.g. nvidia-tesla-t4"));
        }
        if spec.gpus > 16 {
            return Err(Error::invalid("spec.gpus", "`gpus` must be at most 16"));
        }
        if let Some(minutes) = spec.autostop_idle_minutes {
            if !(minutes > 0.0 && minutes <= 7.0 * 24.0 * 60.0) {
                return Err(Error::invalid(
                    "spec.autostop_idle_minutes",
                    "`autostop_idle_minutes` must be more than 0 and at most 10080 (a week)",
                ));
            }
        }
        if spec.bootstrap.len() > 64 || spec.bootstrap.iter().any(|c| c.len() > 4096 || c.contains('\0')) {
            return Err(Error::invalid("spec.bootstrap", "at most 64 `bootstrap` commands of up to 4096 bytes each"));
        }
        if spec.labels.len() > 32 {
            return Err(Error::invalid("spec.labels", "at most 32 labels"));
        }
        Ok(())
    }
}

fn not_found(name: &str) -> Error {
    Error::NotFound { kind: "cluster", id: name.to_owned() }
}
