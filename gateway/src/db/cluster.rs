//! Cluster rows, their instances (intents written before a provider is
//! called) and join tokens.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::DataStore;
use crate::Result;

/// Where a cluster is, as stored in the `cluster_state` enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "cluster_state", rename_all = "snake_case")]
pub enum ClusterState {
    Provisioning,
    Ready,
    Stopping,
    Terminated,
    Failed,
}

/// Where an instance is, as stored in the `instance_state` enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "instance_state", rename_all = "snake_case")]
pub enum InstanceState {
    /// The intent is recorded; the provider may or may not have the machine yet.
    Requested,
    Created,
    Terminating,
    Terminated,
}

/// A cluster's name within its project: what placement and provisioning key on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterKey {
    /// The project owning the cluster.
    pub project: String,
    pub name: String,
}

impl ClusterKey {
    pub fn new(project: &str, name: &str) -> ClusterKey {
        ClusterKey { project: project.to_owned(), name: name.to_owned() }
    }
}

impl std::fmt::Display for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.project, self.name)
    }
}

/// One row of `cluster`.
#[derive(Debug, Clone)]
pub struct ClusterRow {
    pub cluster_id: Uuid,
    /// The project owning it.
    pub project: String,
    pub name: String,
    /// Other projects that may dispatch to it.
    pub shared_with: Vec<String>,
    pub provider: String,
    pub spec: Value,
    pub profile: Option<String>,
    pub state: ClusterState,
    pub generation: i64,
    pub state_reason: Option<String>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub ready_at: Option<DateTime<Utc>>,
    pub stopping_at: Option<DateTime<Utc>>,
    pub terminated_at: Option<DateTime<Utc>>,
}

/// One row of `cluster_instance`.
#[derive(Debug, Clone)]
pub struct InstanceRow {
    pub cluster_id: Uuid,
    pub ordinal: i32,
    pub instance_key: String,
    pub node_name: String,
    pub state: InstanceState,
    pub provider_id: Option<String>,
    pub join_token: String,
    pub join_expires_at: DateTime<Utc>,
    pub joined_at: Option<DateTime<Utc>>,
    pub node_token_jti: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl ClusterRow {
    /// Its project and name.
    pub fn key(&self) -> ClusterKey {
        ClusterKey::new(&self.project, &self.name)
    }
}

/// What a cluster create writes.
#[derive(Debug, Clone)]
pub struct NewCluster {
    pub project: String,
    pub name: String,
    pub shared_with: Vec<String>,
    pub provider: String,
    pub spec: Value,
    pub profile: Option<String>,
    pub created_by: String,
}

/// What an instance intent writes.
#[derive(Debug, Clone)]
pub struct NewInstance {
    pub cluster_id: Uuid,
    pub ordinal: i32,
    pub instance_key: String,
    pub node_name: String,
    pub join_token: String,
    pub join_expires_at: DateTime<Utc>,
}

impl DataStore {
    /// Records a new `provisioning` cluster, unless a live one has the name (then `None`).
    pub async fn cluster_insert(&self, new: &NewCluster) -> Result<Option<ClusterRow>> {
        let row = sqlx::query_as!(
            ClusterRow,
            r#"
            insert into cluster (cluster_id, name, provider, spec, profile, state, created_by, project, shared_with)
            values ($1, $2, $3, $4, $5, 'provisioning', $6, $7, $8)
            on conflict (project, name) where state in ('provisioning', 'ready', 'stopping') do nothing
            returning cluster_id, project, name, shared_with, provider, spec, profile, state as "state: ClusterState",
                      generation, state_reason, created_by, created_at, updated_at, ready_at, stopping_at,
                      terminated_at
            "#,
            Uuid::now_v7(),
            new.name,
            new.provider,
            new.spec,
            new.profile,
            new.created_by,
            new.project,
            &new.shared_with,
        )
        .fetch_optional(self.pool())
        .await?;
        Ok(row)
    }

    /// The project's live cluster called `name`, or else its most recent ended one.
    pub async fn cluster_by_name(&self, key: &ClusterKey) -> Result<Option<ClusterRow>> {
        let row = sqlx::query_as!(
            ClusterRow,
            r#"
            select cluster_id, project, name, shared_with, provider, spec, profile, state as "state: ClusterState",
                   generation, state_reason, created_by, created_at, updated_at, ready_at, stopping_at, terminated_at
            from cluster where project = $1 and name = $2
            order by (state in ('provisioning', 'ready', 'stopping')) desc, created_at desc
            limit 1
            "#,
            key.project,
            key.name
        )
        .fetch_optional(self.pool())
        .await?;
        Ok(row)
    }

    /// Clusters of `project` (of every project with `None`), newest first:
    /// live ones, or every one with `all`.
    pub async fn cluster_list(&self, project: Option<&str>, all: bool) -> Result<Vec<ClusterRow>> {
        let rows = sqlx::query_as!(
            ClusterRow,
            r#"
            select cluster_id, project, name, shared_with, provider, spec, profile, state as "state: ClusterState",
                   generation, state_reason, created_by, created_at, updated_at, ready_at, stopping_at, terminated_at
            from cluster
            where ($1 or state in ('provisioning', 'ready', 'stopping')) and ($2::text is null or project = $2)
            order by created_at desc
            limit 1000
            "#,
            all,
            project
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows)
    }

    /// Every cluster (live or ended) with the providers and specs in use, for the orphan sweep.
    pub async fn cluster_specs_in_use(&self) -> Result<Vec<(String, Value)>> {
        let rows =
            sqlx::query!("select distinct provider, spec from cluster where created_at > now() - interval '90 days'")
                .fetch_all(self.pool())
                .await?;
        Ok(rows.into_iter().map(|r| (r.provider, r.spec)).collect())
    }

    /// Moves a cluster to `to` if it is still at `generation` (compare-and-set).
    pub async fn cluster_transition(
        &self,
        cluster_id: Uuid,
        generation: i64,
        to: ClusterState,
        reason: Option<&str>,
    ) -> Result<Option<ClusterRow>> {
        let row = sqlx::query_as!(
            ClusterRow,
            r#"
            update cluster set
                state = $3::cluster_state,
                generation = generation + 1,
                state_reason = coalesce($4, state_reason),
                updated_at = now(),
                ready_at = case when $3::cluster_state = 'ready' then now() else ready_at end,
                stopping_at = case when $3::cluster_state = 'stopping' then now() else stopping_at end,
                terminated_at = case when $3::cluster_state in ('terminated', 'failed') then now() else terminated_at end
            where cluster_id = $1 and generation = $2
            returning cluster_id, project, name, shared_with, provider, spec, profile, state as "state: ClusterState",
                      generation, state_reason, created_by, created_at, updated_at, ready_at, stopping_at,
                      terminated_at
            "#,
            cluster_id,
            generation,
            to as ClusterState,
            reason,
        )
        .fetch_optional(self.pool())
        .await?;
        Ok(row)
    }

    /// Records the intent to create one machine. A repeat is a no-op.
    pub async fn instance_insert(&self, new: &NewInstance) -> Result<()> {
        sqlx::query!(
            r#"
            insert into cluster_instance (cluster_id, ordinal, instance_key, node_name, join_token, join_expires_at)
            values ($1, $2, $3, $4, $5, $6)
            on conflict (cluster_id, ordinal) do nothing
            "#,
            new.cluster_id,
            new.ordinal,
            new.instance_key,
            new.node_name,
            new.join_token,
            new.join_expires_at,
        )
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// A cluster's instances, by ordinal.
    pub async fn instances_of(&self, cluster_id: Uuid) -> Result<Vec<InstanceRow>> {
        let rows = sqlx::query_as!(
            InstanceRow,
            r#"
            select cluster_id, ordinal, instance_key, node_name, state as "state: InstanceState", provider_id,
                   join_token, join_expires_at, joined_at, node_token_jti, created_at
            from cluster_instance where cluster_id = $1 order by ordinal
            "#,
            cluster_id
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows)
    }

    /// Records what the provider made (or that the machine is going or gone).
    pub async fn instance_update(
        &self,
        instance_key: &str,
        state: InstanceState,
        provider_id: Option<&str>,
    ) -> Result<()> {
        sqlx::query!(
            r#"
            update cluster_instance
            set state = $2, provider_id = coalesce($3, provider_id), updated_at = now()
            where instance_key = $1
            "#,
            instance_key,
            state as InstanceState,
            provider_id,
        )
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Instance keys of every machine a live cluster still owns: anything
    /// else carrying our tags is an orphan.
    pub async fn instance_keys_owned(&self) -> Result<Vec<String>> {
        let keys = sqlx::query_scalar!(
            r#"
            select i.instance_key from cluster_instance i join cluster c using (cluster_id)
            where c.state in ('provisioning', 'ready', 'stopping') and i.state <> 'terminated'
            "#
        )
        .fetch_all(self.pool())
        .await?;
        Ok(keys)
    }

    /// Uses a join token, once: the instance must be unjoined, the token
    /// unexpired, its cluster live, and the instance id (if both sides know
    /// it) must match. Returns the instance and its cluster's name and spec.
    pub async fn instance_join(
        &self,
        join_token: &str,
        instance_id: Option<&str>,
        node_token_jti: &str,
    ) -> Result<Option<(InstanceRow, ClusterKey, Value)>> {
        let row = sqlx::query!(
            r#"
            update cluster_instance i set joined_at = now(), node_token_jti = $3, updated_at = now()
            from cluster c
            where i.join_token = $1 and i.joined_at is null and i.join_expires_at > now()
              and c.cluster_id = i.cluster_id and c.state in ('provisioning', 'ready')
              and ($2::text is null or i.provider_id is null or i.provider_id = $2
                   or i.instance_key = $2)
            returning i.cluster_id, i.ordinal, i.instance_key, i.node_name, i.state as "state: InstanceState",
                      i.provider_id, i.join_token, i.join_expires_at, i.joined_at, i.node_token_jti, i.created_at,
                      c.name as cluster_name, c.project as cluster_project, c.spec
            "#,
            join_token,
            instance_id,
            node_token_jti,
        )
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(|r| {
            (
                InstanceRow {
                    cluster_id: r.cluster_id,
                    ordinal: r.ordinal,
                    instance_key: r.instance_key,
                    node_name: r.node_name,
                    state: r.state,
                    provider_id: r.provider_id,
                    join_token: r.join_token,
                    join_expires_at: r.join_expires_at,
                    joined_at: r.joined_at,
                    node_token_jti: r.node_token_jti,
                    created_at: r.created_at,
                },
                ClusterKey { project: r.cluster_project, name: r.cluster_name },
                r.spec,
            )
        }))
    }

    /// True if `join_token` belongs to a live cluster's unjoined, unexpired instance.
    pub async fn join_token_valid(&self, join_token: &str) -> Result<bool> {
        let valid = sqlx::query_scalar!(
            r#"
            select exists(
                select 1 from cluster_instance i join cluster c using (cluster_id)
                where i.join_token = $1 and i.joined_at is null and i.join_expires_at > now()
                  and c.state in ('provisioning', 'ready')
            ) as "valid!"
            "#,
            join_token
        )
        .fetch_one(self.pool())
        .await?;
        Ok(valid)
    }

    /// Ready nodes in the cluster.
    pub async fn cluster_ready_nodes(&self, key: &ClusterKey) -> Result<i64> {
        let count = sqlx::query_scalar!(
            r#"select count(*) as "count!" from node where project = $1 and cluster = $2 and state = 'ready'"#,
            key.project,
            key.name
        )
        .fetch_one(self.pool())
        .await?;
        Ok(count)
    }

    /// Whether the cluster has queued or running work, and when its dispatches last changed.
    pub async fn cluster_activity(&self, key: &ClusterKey) -> Result<(bool, Option<DateTime<Utc>>)> {
        let row = sqlx::query!(
            r#"
            select
                exists(select 1 from dispatch_index where cluster_project = $1 and cluster = $2
                                                    and state in ('queued', 'running', 'cancelling'))
                -- A live object keeps its cluster up (it stops itself after its own idle limit).
                or exists(select 1 from object where cluster_project = $1 and cluster = $2
                                               and state in ('starting', 'ready')) as "busy!",
                (select max(updated_at) from dispatch_index where cluster_project = $1 and cluster = $2) as last
            "#,
            key.project,
            key.name
        )
        .fetch_one(self.pool())
        .await?;
        Ok((row.busy, row.last))
    }

    /// Marks every ready node of a cluster lost, at once (its machines are being stopped).
    pub async fn cluster_nodes_gone(&self, key: &ClusterKey) -> Result<Vec<Uuid>> {
        let ids = sqlx::query_scalar!(
            r#"
            update node set state = 'lost', lost_at = now()
            where project = $1 and cluster = $2 and state in ('ready', 'unreachable')
            returning node_id
            "#,
            key.project,
            key.name
        )
        .fetch_all(self.pool())
        .await?;
        Ok(ids)
    }

    /// Marks one node lost at once (its machine is gone).
    pub async fn node_gone(&self, cluster: &ClusterKey, name: &str) -> Result<()> {
        sqlx::query!(
            r#"
            update node set state = 'lost', lost_at = now()
            where project = $1 and cluster = $2 and name = $3 and state in ('ready', 'unreachable')
            "#,
            cluster.project,
            cluster.name,
            name
        )
        .execute(self.pool())
        .await?;
        Ok(())
    }
}

impl DataStore {
    /// True if `owner`'s live cluster `name` is shared with `project`.
    pub async fn cluster_shared_with(&self, cluster: &ClusterKey, project: &str) -> Result<bool> {
        let shared = sqlx::query_scalar!(
            r#"
            select exists(
                select 1 from cluster
                where project = $1 and name = $2 and state in ('provisioning', 'ready', 'stopping')
                  and $3 = any(shared_with)
            ) as "shared!"
            "#,
            cluster.project,
            cluster.name,
            project
        )
        .fetch_one(self.pool())
        .await?;
        Ok(shared)
    }

    /// This database's installation id (see migration 0007).
    pub async fn installation_id(&self) -> Result<Uuid> {
        let id = sqlx::query_scalar!("select id from installation").fetch_one(self.pool()).await?;
        Ok(id)
    }
}
