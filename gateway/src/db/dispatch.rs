//! Dispatch rows: create, read, list, state changes and the event log.
//!
//! Each write is a single statement, so it is atomic on its own: a create
//! inserts the row and its first event together, and a state change is a
//! compare-and-set on (state, generation) that appends its event in the same
//! statement. A dropped client connection can never leave half a write.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::node::NodeState;
use super::{DataStore, NodeRow};
use crate::dispatch::DispatchState;
use crate::Result;

/// One row of `dispatch`.
#[derive(Debug, Clone)]
pub struct DispatchRow {
    pub dispatch_id: Uuid,
    pub project: String,
    pub function_ref: String,
    pub function_name: Option<String>,
    pub bundle: Option<String>,
    pub requirements: Value,
    pub args: Value,
    pub kwargs: Value,
    pub cluster: String,
    pub node_id: Option<Uuid>,
    pub state: DispatchState,
    pub generation: i64,
    pub idempotency_key: Option<String>,
    pub request_hash: String,
    pub requester: String,
    pub labels: Value,
    pub timeout_s: Option<i32>,
    pub result: Option<Value>,
    pub failure: Option<Value>,
    pub cancelled_by: Option<String>,
    pub cancel_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub cancel_requested_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    pub log_bytes: i64,
    pub log_truncated: bool,
}

/// One row of `dispatch_event`.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub event_id: i64,
    pub dispatch_id: Uuid,
    pub from_state: Option<DispatchState>,
    pub to_state: DispatchState,
    pub generation: i64,
    pub actor: String,
    pub reason: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// What a create inserts.
#[derive(Debug, Clone)]
pub struct NewDispatch {
    pub dispatch_id: Uuid,
    pub project: String,
    pub function_ref: String,
    pub function_name: Option<String>,
    pub bundle: Option<String>,
    pub requirements: Value,
    pub args: Value,
    pub kwargs: Value,
    pub cluster: String,
    pub idempotency_key: Option<String>,
    pub request_hash: String,
    pub requester: String,
    pub labels: Value,
    pub timeout_s: Option<i32>,
}

/// A compare-and-set state change.
#[derive(Debug, Clone)]
pub struct StateChange {
    pub dispatch_id: Uuid,
    /// The state and generation the writer read; the write applies only if both still hold.
    pub from: DispatchState,
    pub generation: i64,
    pub to: DispatchState,
    pub actor: String,
    pub reason: Option<String>,
    pub result: Option<Value>,
    pub failure: Option<Value>,
    /// Set on a cancel request: who asked.
    pub cancelled_by: Option<String>,
    /// Clears the node assignment (a requeue).
    pub clear_node: bool,
}

/// Filters for listing, already validated.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub states: Vec<DispatchState>,
    pub cluster: Option<String>,
    /// A JSON object the labels must contain.
    pub labels: Value,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    /// Only ids below this one (keyset pagination).
    pub before_id: Option<Uuid>,
    pub limit: i64,
}

/// A dispatch just placed, and the node it was placed on.
pub type Placed = (DispatchRow, NodeRow);

impl DataStore {
    /// Records a new dispatch and, in the same transaction (one commit), places
    /// the oldest queued dispatch of its cluster (usually this one) if a ready
    /// node has a free slot.
    ///
    /// Returns `None` when the project already has a dispatch with this
    /// idempotency key; concurrent duplicates therefore yield exactly one row.
    #[tracing::instrument(skip_all, fields(dispatch_id = %new.dispatch_id))]
    pub async fn dispatch_insert_and_place(&self, new: &NewDispatch) -> Result<Option<(DispatchRow, Option<Placed>)>> {
        let mut tx = self.pool().begin().await?;
        let Some(row) = Self::dispatch_insert_on(&mut tx, new).await? else {
            tx.commit().await?;
            return Ok(None);
        };
        let placed = Self::dispatch_place_one(&mut tx, &new.cluster).await?;
        tx.commit().await?;
        Ok(Some((row, placed)))
    }

    /// Inserts a dispatch, its creating event and its labels in one statement.
    async fn dispatch_insert_on(conn: &mut sqlx::PgConnection, new: &NewDispatch) -> Result<Option<DispatchRow>> {
        let row = sqlx::query_as!(
            DispatchRow,
            r#"
            with inserted as (
                insert into dispatch (
                    dispatch_id, project, function_ref, args, kwargs, cluster,
                    idempotency_key, request_hash, requester, labels, timeout_s,
                    function_name, bundle, requirements
                )
                values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
                on conflict (project, idempotency_key) do nothing
                returning *
            ),
            event as (
                insert into dispatch_event (dispatch_id, from_state, to_state, generation, actor, reason)
                select dispatch_id, null, state, generation, requester, 'created' from inserted
            ),
            labelled as (
                insert into dispatch_label (project, key, value, dispatch_id)
                select i.project, l.key, l.value, i.dispatch_id from inserted i, jsonb_each_text(i.labels) l
            )
            select
                dispatch_id as "dispatch_id!", project as "project!", function_ref as "function_ref!",
                function_name, bundle, requirements as "requirements!",
                args as "args!", kwargs as "kwargs!", cluster as "cluster!", node_id,
                state as "state!: DispatchState", generation as "generation!",
                idempotency_key, request_hash as "request_hash!", requester as "requester!",
                labels as "labels!", timeout_s, result, failure, cancelled_by, cancel_reason,
                created_at as "created_at!", started_at, cancel_requested_at, finished_at,
                updated_at as "updated_at!", log_bytes as "log_bytes!", log_truncated as "log_truncated!"
            from inserted
            "#,
            new.dispatch_id,
            new.project,
            new.function_ref,
            new.args,
            new.kwargs,
            new.cluster,
            new.idempotency_key,
            new.request_hash,
            new.requester,
            new.labels,
            new.timeout_s,
            new.function_name,
            new.bundle,
            new.requirements,
        )
        .fetch_optional(&mut *conn)
        .await?;
        Ok(row)
    }

    /// The project's dispatch with this idempotency key.
    pub async fn dispatch_by_idempotency_key(&self, project: &str, key: &str) -> Result<Option<DispatchRow>> {
        let row = sqlx::query_as!(
            DispatchRow,
            r#"
            select dispatch_id, project, function_ref, function_name, bundle, requirements,
                   args, kwargs, cluster, node_id,
                   state as "state: DispatchState", generation, idempotency_key, request_hash,
                   requester, labels, timeout_s, result, failure, cancelled_by, cancel_reason,
                   created_at, started_at, cancel_requested_at, finished_at, updated_at,
                   log_bytes, log_truncated
            from dispatch
            where project = $1 and idempotency_key = $2
            "#,
            project,
            key
        )
        .fetch_optional(self.pool())
        .await?;
        Ok(row)
    }

    /// One dispatch. With `project`, another project's dispatch is not found.
    pub async fn dispatch_get(&self, project: Option<&str>, id: Uuid) -> Result<Option<DispatchRow>> {
        let row = sqlx::query_as!(
            DispatchRow,
            r#"
            select dispatch_id, project, function_ref, function_name, bundle, requirements,
                   args, kwargs, cluster, node_id,
                   state as "state: DispatchState", generation, idempotency_key, request_hash,
                   requester, labels, timeout_s, result, failure, cancelled_by, cancel_reason,
                   created_at, started_at, cancel_requested_at, finished_at, updated_at,
                   log_bytes, log_truncated
            from dispatch
            where dispatch_id = $1 and ($2::text is null or project = $2)
            "#,
            id,
            project
        )
        .fetch_optional(self.pool())
        .await?;
        Ok(row)
    }

    /// A page of the project's dispatches, newest first.
    pub async fn dispatch_list(&self, project: &str, filter: &ListFilter) -> Result<Vec<DispatchRow>> {
        let states: Vec<String> = filter.states.iter().map(|s| s.to_string()).collect();
        let first_label = filter
            .labels
            .as_object()
            .and_then(|labels| labels.iter().next())
            .map(|(key, value)| (key.clone(), value.as_str().unwrap_or_default().to_owned()));
        let Some((key, value)) = first_label else {
            let rows = sqlx::query_as!(
                DispatchRow,
                r#"
                select dispatch_id, project, function_ref, function_name, bundle, requirements,
                       args, kwargs, cluster, node_id,
                       state as "state: DispatchState", generation, idempotency_key, request_hash,
                       requester, labels, timeout_s, result, failure, cancelled_by, cancel_reason,
                       created_at, started_at, cancel_requested_at, finished_at, updated_at,
                       log_bytes, log_truncated
                from dispatch
                where project = $1
                  and (cardinality($2::text[]) = 0 or state = any($2::text[]::dispatch_state[]))
                  and ($3::text is null or cluster = $3)
                  and ($4::timestamptz is null or created_at >= $4)
                  and ($5::timestamptz is null or created_at < $5)
                  and ($6::uuid is null or dispatch_id < $6)
                order by dispatch_id desc
                limit $7
                "#,
                project,
                &states,
                filter.cluster,
                filter.created_after,
                filter.created_before,
                filter.before_id,
                filter.limit,
            )
            .fetch_all(self.pool())
            .await?;
            return Ok(rows);
        };
        // Walk one label's rows newest first; the other filters (and any
        // further labels) are checked on the way.
        let rows = sqlx::query_as!(
            DispatchRow,
            r#"
            select d.dispatch_id, d.project, d.function_ref, d.function_name, d.bundle, d.requirements,
                   d.args, d.kwargs, d.cluster, d.node_id,
                   d.state as "state: DispatchState", d.generation, d.idempotency_key, d.request_hash,
                   d.requester, d.labels, d.timeout_s, d.result, d.failure, d.cancelled_by, d.cancel_reason,
                   d.created_at, d.started_at, d.cancel_requested_at, d.finished_at, d.updated_at,
                   d.log_bytes, d.log_truncated
            from dispatch_label l
            join dispatch d on d.dispatch_id = l.dispatch_id
            where l.project = $1 and l.key = $9 and l.value = $10
              and ($7::uuid is null or l.dispatch_id < $7)
              and d.labels @> $4
              and (cardinality($2::text[]) = 0 or d.state = any($2::text[]::dispatch_state[]))
              and ($3::text is null or d.cluster = $3)
              and ($5::timestamptz is null or d.created_at >= $5)
              and ($6::timestamptz is null or d.created_at < $6)
            order by l.dispatch_id desc
            limit $8
            "#,
            project,
            &states,
            filter.cluster,
            filter.labels,
            filter.created_after,
            filter.created_before,
            filter.before_id,
            filter.limit,
            key,
            value,
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows)
    }

    /// Applies a state change if the row is still at (`from`, `generation`),
    /// appending its event in the same statement. `None` means another writer
    /// got there first (or the dispatch does not exist).
    #[tracing::instrument(skip_all, fields(dispatch_id = %change.dispatch_id, to = %change.to))]
    pub async fn dispatch_set_state(&self, change: &StateChange) -> Result<Option<DispatchRow>> {
        let row = sqlx::query_as!(
            DispatchRow,
            r#"
            with updated as (
                update dispatch set
                    state = $4::text::dispatch_state,
                    generation = generation + 1,
                    updated_at = now(),
                    started_at = case when $4 = 'running' then now() else started_at end,
                    cancel_requested_at = case when $7::text is not null then now() else cancel_requested_at end,
                    finished_at = case when $4 in ('succeeded', 'failed', 'cancelled', 'timed_out')
                                       then now() else finished_at end,
                    result = coalesce($8, result),
                    failure = coalesce($9, failure),
                    cancelled_by = coalesce($7, cancelled_by),
                    cancel_reason = case when $7::text is not null then $6 else cancel_reason end,
                    node_id = case when $10 then null else node_id end
                where dispatch_id = $1 and state = $2::text::dispatch_state and generation = $3
                returning *
            ),
            event as (
                insert into dispatch_event (dispatch_id, from_state, to_state, generation, actor, reason)
                select dispatch_id, $2::text::dispatch_state, state, generation, $5, $6 from updated
            )
            select
                dispatch_id as "dispatch_id!", project as "project!", function_ref as "function_ref!",
                function_name, bundle, requirements as "requirements!",
                args as "args!", kwargs as "kwargs!", cluster as "cluster!", node_id,
                state as "state!: DispatchState", generation as "generation!",
                idempotency_key, request_hash as "request_hash!", requester as "requester!",
                labels as "labels!", timeout_s, result, failure, cancelled_by, cancel_reason,
                created_at as "created_at!", started_at, cancel_requested_at, finished_at,
                updated_at as "updated_at!", log_bytes as "log_bytes!", log_truncated as "log_truncated!"
            from updated
            "#,
            change.dispatch_id,
            change.from.to_string(),
            change.generation,
            change.to.to_string(),
            change.actor,
            change.reason,
            change.cancelled_by,
            change.result,
            change.failure,
            change.clear_node,
        )
        .fetch_optional(self.pool())
        .await?;
        Ok(row)
    }

    /// Places up to `max` queued dispatches of `cluster`, oldest first, each on
    /// the least-loaded ready node with a free slot, in one transaction (one
    /// commit for the whole batch). Each dispatch becomes `running` on its
    /// node with its event appended. Node and dispatch rows are locked with
    /// `SKIP LOCKED`, so replicas never place one dispatch twice or overfill a
    /// node; this transaction sees its own placements when counting slots.
    #[tracing::instrument(skip_all, fields(cluster))]
    pub async fn dispatch_place_batch(&self, cluster: &str, max: usize) -> Result<Vec<Placed>> {
        let mut tx = self.pool().begin().await?;
        let mut placed = Vec::new();
        while placed.len() < max {
            let Some(next) = Self::dispatch_place_one(&mut tx, cluster).await? else { break };
            placed.push(next);
        }
        tx.commit().await?;
        Ok(placed)
    }

    async fn dispatch_place_one(tx: &mut sqlx::PgConnection, cluster: &str) -> Result<Option<Placed>> {
        let node = sqlx::query_as!(
            NodeRow,
            r#"
            select n.node_id, n.name, n.cluster, n.address, n.api_secret,
                   n.state as "state: NodeState", n.max_concurrent, n.resources, n.labels,
                   n.registered_at, n.last_heartbeat_at,
                   node_running(n.node_id) as "running!"
            from node n
            where n.cluster = $1 and n.state = 'ready'
              and node_running(n.node_id) < n.max_concurrent
            order by 12, random()
            limit 1
            for update of n skip locked
            "#,
            cluster
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(node) = node else {
            return Ok(None);
        };
        let row = sqlx::query_as!(
            DispatchRow,
            r#"
            with next as (
                select dispatch_id from dispatch
                where state = 'queued' and cluster = $1
                order by dispatch_id
                limit 1
                for update skip locked
            ),
            updated as (
                update dispatch set state = 'running', generation = generation + 1, node_id = $2,
                                    started_at = now(), updated_at = now()
                where dispatch_id = (select dispatch_id from next)
                returning *
            ),
            event as (
                insert into dispatch_event (dispatch_id, from_state, to_state, generation, actor, reason)
                select dispatch_id, 'queued', state, generation, 'gateway', $3 from updated
            )
            select
                dispatch_id as "dispatch_id!", project as "project!", function_ref as "function_ref!",
                function_name, bundle, requirements as "requirements!",
                args as "args!", kwargs as "kwargs!", cluster as "cluster!", node_id,
                state as "state!: DispatchState", generation as "generation!",
                idempotency_key, request_hash as "request_hash!", requester as "requester!",
                labels as "labels!", timeout_s, result, failure, cancelled_by, cancel_reason,
                created_at as "created_at!", started_at, cancel_requested_at, finished_at,
                updated_at as "updated_at!", log_bytes as "log_bytes!", log_truncated as "log_truncated!"
            from updated
            "#,
            cluster,
            node.node_id,
            format!("placed on node {}", node.name),
        )
        .fetch_optional(&mut *tx)
        .await?;
        Ok(row.map(|row| (row, node)))
    }

    /// Clusters that have queued dispatches and a ready node with a free slot.
    pub async fn dispatch_placeable_clusters(&self) -> Result<Vec<String>> {
        let rows = sqlx::query_scalar!(
            r#"
            select distinct n.cluster as "cluster!"
            from node n
            where n.state = 'ready'
              and exists (select 1 from dispatch q where q.state = 'queued' and q.cluster = n.cluster)
              and node_running(n.node_id) < n.max_concurrent
            "#
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows)
    }

    /// Dispatches placed on `node_id` that are still running or cancelling.
    pub async fn dispatch_active_on_node(&self, node_id: Uuid) -> Result<Vec<DispatchRow>> {
        let rows = sqlx::query_as!(
            DispatchRow,
            r#"
            select dispatch_id, project, function_ref, function_name, bundle, requirements,
                   args, kwargs, cluster, node_id,
                   state as "state: DispatchState", generation, idempotency_key, request_hash,
                   requester, labels, timeout_s, result, failure, cancelled_by, cancel_reason,
                   created_at, started_at, cancel_requested_at, finished_at, updated_at,
                   log_bytes, log_truncated
            from dispatch
            where node_id = $1 and state in ('running', 'cancelling')
            "#,
            node_id
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows)
    }

    /// Dispatches still waiting in `queued` for the cluster called `cluster`.
    pub async fn dispatch_queued_in_cluster(&self, cluster: &str, limit: i64) -> Result<Vec<DispatchRow>> {
        let rows = sqlx::query_as!(
            DispatchRow,
            r#"
            select dispatch_id, project, function_ref, function_name, bundle, requirements,
                   args, kwargs, cluster, node_id,
                   state as "state: DispatchState", generation, idempotency_key, request_hash,
                   requester, labels, timeout_s, result, failure, cancelled_by, cancel_reason,
                   created_at, started_at, cancel_requested_at, finished_at, updated_at,
                   log_bytes, log_truncated
            from dispatch
            where cluster = $1 and state = 'queued'
            order by dispatch_id
            limit $2
            "#,
            cluster,
            limit
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows)
    }

    /// Dispatches stuck in `cancelling` since before `older_than_s` seconds ago.
    pub async fn dispatch_cancelling_stale(&self, older_than_s: f64) -> Result<Vec<DispatchRow>> {
        let rows = sqlx::query_as!(
            DispatchRow,
            r#"
            select dispatch_id, project, function_ref, function_name, bundle, requirements,
                   args, kwargs, cluster, node_id,
                   state as "state: DispatchState", generation, idempotency_key, request_hash,
                   requester, labels, timeout_s, result, failure, cancelled_by, cancel_reason,
                   created_at, started_at, cancel_requested_at, finished_at, updated_at,
                   log_bytes, log_truncated
            from dispatch
            where state = 'cancelling' and updated_at < now() - make_interval(secs => $1)
            order by updated_at
            limit 100
            "#,
            older_than_s
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows)
    }

    /// The dispatch's event log, oldest first.
    pub async fn dispatch_events(&self, id: Uuid) -> Result<Vec<EventRow>> {
        let rows = sqlx::query_as!(
            EventRow,
            r#"
            select event_id, dispatch_id, from_state as "from_state: DispatchState",
                   to_state as "to_state: DispatchState", generation, actor, reason, created_at
            from dispatch_event
            where dispatch_id = $1
            order by event_id
            "#,
            id
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows)
    }

    /// How many dispatches are in each state, across projects (for `/metrics`).
    pub async fn dispatch_count_by_state(&self) -> Result<Vec<(DispatchState, i64)>> {
        let rows = sqlx::query!(
            r#"select state as "state: DispatchState", count(*) as "count!" from dispatch group by state"#
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|r| (r.state, r.count)).collect())
    }
}
