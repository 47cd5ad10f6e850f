//! Remote objects (`/v1/instances`): their rows, events, and the queries the
//! object step runs. How an object follows its constructor, and its slots,
//! are kept by the triggers of `migrations/0009_instances.sql`.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::DataStore;
use crate::Result;

/// Where an object is, as stored in the `object_state` enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "object_state", rename_all = "snake_case")]
pub enum ObjectState {
    Starting,
    Ready,
    Failed,
    Lost,
    Deleted,
}

impl ObjectState {
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectState::Starting => "starting",
            ObjectState::Ready => "ready",
            ObjectState::Failed => "failed",
            ObjectState::Lost => "lost",
            ObjectState::Deleted => "deleted",
        }
    }
}

/// One row of `object`.
#[derive(Debug, Clone)]
pub struct ObjectRow {
    pub object_id: Uuid,
    pub project: String,
    pub name: String,
    pub class_ref: String,
    pub bundle: Option<String>,
    pub requirements: Value,
    pub init_args: Value,
    pub init_kwargs: Value,
    pub cluster: String,
    pub cluster_project: String,
    pub max_concurrency: i32,
    pub idle_stop_minutes: Option<f64>,
    pub restart: String,
    pub state: ObjectState,
    pub state_reason: Option<String>,
    pub failure: Option<Value>,
    pub node_id: Option<Uuid>,
    pub constructor_id: Option<Uuid>,
    pub restarts: i32,
    pub generation: i64,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub ready_at: Option<DateTime<Utc>>,
}

/// What a create inserts.
#[derive(Debug, Clone)]
pub struct NewObject {
    pub object_id: Uuid,
    pub project: String,
    pub name: String,
    pub class_ref: String,
    pub bundle: Option<String>,
    pub requirements: Value,
    pub init_args: Value,
    pub init_kwargs: Value,
    pub cluster: String,
    pub cluster_project: String,
    pub max_concurrency: i32,
    pub idle_stop_minutes: Option<f64>,
    pub restart: String,
    pub created_by: String,
}

/// One row of `object_event`.
#[derive(Debug, Clone)]
pub struct ObjectEventRow {
    pub event_id: i64,
    pub kind: String,
    pub message: String,
    pub created_at: DateTime<Utc>,
}

impl DataStore {
    /// Records a new object (`starting`) and its `created` event. `None` if
    /// the project already has a live object of that name.
    pub async fn object_insert(&self, new: &NewObject) -> Result<Option<ObjectRow>> {
        let row = sqlx::query_as!(
            ObjectRow,
            r#"
            with inserted as (
                insert into object (object_id, project, name, class_ref, bundle, requirements, init_args,
                                    init_kwargs, cluster, cluster_project, max_concurrency, idle_stop_minutes,
                                    restart, created_by)
                values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
                on conflict (project, name) where state <> 'deleted' do nothing
                returning *
            ),
            event as (
                insert into object_event (object_id, kind, message)
                select object_id, 'created', 'created by ' || created_by || ' on cluster ' || cluster from inserted
            )
            select object_id as "object_id!", project as "project!", name as "name!", class_ref as "class_ref!",
                   bundle, requirements as "requirements!", init_args as "init_args!",
                   init_kwargs as "init_kwargs!", cluster as "cluster!", cluster_project as "cluster_project!",
                   max_concurrency as "max_concurrency!", idle_stop_minutes, restart as "restart!",
                   state as "state!: ObjectState", state_reason, failure, node_id, constructor_id,
                   restarts as "restarts!", generation as "generation!", created_by as "created_by!",
                   created_at as "created_at!", updated_at as "updated_at!", ready_at
            from inserted
            "#,
            new.object_id,
            new.project,
            new.name,
            new.class_ref,
            new.bundle,
            new.requirements,
            new.init_args,
            new.init_kwargs,
            new.cluster,
            new.cluster_project,
            new.max_concurrency,
            new.idle_stop_minutes,
            new.restart,
            new.created_by,
        )
        .fetch_optional(self.pool())
        .await?;
        Ok(row)
    }

    /// The project's object named `name`: the live one, else the latest deleted one.
    pub async fn object_by_name(&self, project: &str, name: &str) -> Result<Option<ObjectRow>> {
        let row = sqlx::query_as!(
            ObjectRow,
            r#"select object_id, project, name, class_ref, bundle, requirements, init_args, init_kwargs, cluster,
                    cluster_project, max_concurrency, idle_stop_minutes, restart, state as "state: ObjectState",
                    state_reason, failure, node_id, constructor_id, restarts, generation, created_by, created_at,
                    updated_at, ready_at
             from object where project = $1 and name = $2
             order by state = 'deleted', created_at desc limit 1"#,
            project,
            name
        )
        .fetch_optional(self.pool())
        .await?;
        Ok(row)
    }

    /// One object by id.
    pub async fn object_get(&self, id: Uuid) -> Result<Option<ObjectRow>> {
        let row = sqlx::query_as!(
            ObjectRow,
            r#"select object_id, project, name, class_ref, bundle, requirements, init_args, init_kwargs, cluster,
                    cluster_project, max_concurrency, idle_stop_minutes, restart, state as "state: ObjectState",
                    state_reason, failure, node_id, constructor_id, restarts, generation, created_by, created_at,
                    updated_at, ready_at
             from object where object_id = $1"#,
            id
        )
        .fetch_optional(self.pool())
        .await?;
        Ok(row)
    }

    /// The project's objects by name, deleted ones only with `all`.
    pub async fn object_list(&self, project: &str, all: bool) -> Result<Vec<ObjectRow>> {
        let rows = sqlx::query_as!(
            ObjectRow,
            r#"select object_id, project, name, class_ref, bundle, requirements, init_args, init_kwargs, cluster,
                    cluster_project, max_concurrency, idle_stop_minutes, restart, state as "state: ObjectState",
                    state_reason, failure, node_id, constructor_id, restarts, generation, created_by, created_at,
                    updated_at, ready_at
             from object where project = $1 and ($2 or state <> 'deleted')
             order by name, created_at desc limit 1000"#,
            project,
            all
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows)
    }

    /// Moves an object from `from` (at `generation`) to `to`, recording an
    /// event. `None` if it had moved on meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub async fn object_transition(
        &self,
        id: Uuid,
        generation: i64,
        to: ObjectState,
        reason: Option<&str>,
        kind: &str,
        message: &str,
    ) -> Result<Option<ObjectRow>> {
        let row = sqlx::query_as!(
            ObjectRow,
            r#"
            with moved as (
                update object set state = $3, state_reason = $4, generation = generation + 1, updated_at = now(),
                                  restarts = restarts + case when $3 = 'starting'::object_state then 1 else 0 end,
                                  node_id = case when $3 = 'starting'::object_state then null else node_id end
                where object_id = $1 and generation = $2
                returning *
            ),
            event as (
                insert into object_event (object_id, kind, message) select object_id, $5, $6 from moved
            )
            select object_id as "object_id!", project as "project!", name as "name!", class_ref as "class_ref!",
                   bundle, requirements as "requirements!", init_args as "init_args!",
                   init_kwargs as "init_kwargs!", cluster as "cluster!", cluster_project as "cluster_project!",
                   max_concurrency as "max_concurrency!", idle_stop_minutes, restart as "restart!",
                   state as "state!: ObjectState", state_reason, failure, node_id, constructor_id,
                   restarts as "restarts!", generation as "generation!", created_by as "created_by!",
                   created_at as "created_at!", updated_at as "updated_at!", ready_at
            from moved
            "#,
            id,
            generation,
            to as ObjectState,
            reason,
            kind,
            message,
        )
        .fetch_optional(self.pool())
        .await?;
        Ok(row)
    }

    /// Records that `dispatch_id` constructs the object in its current life
    /// (for display while it runs; the trigger records it too when it ends).
    pub async fn object_set_constructor(&self, id: Uuid, restarts: i32, dispatch_id: Uuid) -> Result<()> {
        sqlx::query!(
            "update object set constructor_id = $3 where object_id = $1 and restarts = $2 and state = 'starting'",
            id,
            restarts,
            dispatch_id
        )
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// Appends an event.
    pub async fn object_event(&self, id: Uuid, kind: &str, message: &str) -> Result<()> {
        sqlx::query!("insert into object_event (object_id, kind, message) values ($1, $2, $3)", id, kind, message)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// The latest `limit` events, oldest first.
    pub async fn object_events(&self, id: Uuid, limit: i64) -> Result<Vec<ObjectEventRow>> {
        let mut rows = sqlx::query_as!(
            ObjectEventRow,
            "select event_id, kind, message, created_at from object_event where object_id = $1
             order by event_id desc limit $2",
            id,
            limit
        )
        .fetch_all(self.pool())
        .await?;
        rows.reverse();
        Ok(rows)
    }

    /// Starting objects with no constructor queued or running (a gateway
    /// died between recording the object and its constructor).
    pub async fn objects_without_constructor(&self) -> Result<Vec<ObjectRow>> {
        let rows = sqlx::query_as!(
            ObjectRow,
            r#"select object_id, project, name, class_ref, bundle, requirements, init_args, init_kwargs, cluster,
                    cluster_project, max_concurrency, idle_stop_minutes, restart, state as "state: ObjectState",
                    state_reason, failure, node_id, constructor_id, restarts, generation, created_by, created_at,
                    updated_at, ready_at
             from object o where state = 'starting'
               and updated_at < now() - interval '2 seconds'
               and not exists (select 1 from dispatch d where d.object_id = o.object_id and d.method is null
                                                         and d.state in ('queued', 'running', 'cancelling'))"#
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows)
    }

    /// Objects that cannot run the method calls queued for them: failed,
    /// deleted or lost (a lost one with `restart: on_lost` is started again instead).
    pub async fn objects_ended_with_queued(&self) -> Result<Vec<ObjectRow>> {
        let rows = sqlx::query_as!(
            ObjectRow,
            r#"select object_id, project, name, class_ref, bundle, requirements, init_args, init_kwargs, cluster,
                    cluster_project, max_concurrency, idle_stop_minutes, restart, state as "state: ObjectState",
                    state_reason, failure, node_id, constructor_id, restarts, generation, created_by, created_at,
                    updated_at, ready_at
             from object o where state in ('failed', 'lost', 'deleted')
               and exists (select 1 from dispatch_index d where d.object_id = o.object_id and d.state = 'queued'
                                                            and d.is_method)"#
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows)
    }

    /// Ready objects with an idle limit that no call has used for that long.
    pub async fn objects_idle(&self) -> Result<Vec<ObjectRow>> {
        let rows = sqlx::query_as!(
            ObjectRow,
            r#"select object_id, project, name, class_ref, bundle, requirements, init_args, init_kwargs, cluster,
                    cluster_project, max_concurrency, idle_stop_minutes, restart, state as "state: ObjectState",
                    state_reason, failure, node_id, constructor_id, restarts, generation, created_by, created_at,
                    updated_at, ready_at
             from object o where state = 'ready' and idle_stop_minutes is not null
               and not exists (select 1 from dispatch d where d.object_id = o.object_id
                                                          and d.state in ('queued', 'running', 'cancelling'))
               and greatest(o.ready_at, (select coalesce(d.finished_at, d.updated_at) from dispatch d
                                         where d.object_id = o.object_id order by d.dispatch_id desc limit 1))
                   < now() - make_interval(secs => o.idle_stop_minutes * 60)"#
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows)
    }

    /// Objects that should be running on `node_id` (starting with a constructor placed there, or ready).
    pub async fn objects_on_node(&self, node_id: Uuid) -> Result<Vec<ObjectRow>> {
        let rows = sqlx::query_as!(
            ObjectRow,
            r#"select object_id, project, name, class_ref, bundle, requirements, init_args, init_kwargs, cluster,
                    cluster_project, max_concurrency, idle_stop_minutes, restart, state as "state: ObjectState",
                    state_reason, failure, node_id, constructor_id, restarts, generation, created_by, created_at,
                    updated_at, ready_at
             from object where node_id = $1 and state in ('starting', 'ready')"#,
            node_id
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows)
    }

    /// Of `ids`, those not live on `node_id` (the node should stop them). A
    /// starting object counts as live anywhere: its node is recorded only
    /// when the constructor's outcome arrives, which may be after the node
    /// lists it.
    pub async fn objects_not_live_on(&self, node_id: Uuid, ids: &[Uuid]) -> Result<Vec<Uuid>> {
        let rows = sqlx::query_scalar!(
            r#"select id as "id!" from unnest($2::uuid[]) as id
               where not exists (select 1 from object o
                                 where o.object_id = id
                                   and (o.state = 'starting' or (o.state = 'ready' and o.node_id = $1)))"#,
            node_id,
            ids
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows)
    }
}
