//! Dispatch rows: create, read, list, state changes and the event log.
//!
//! Each write is a single statement, so it is atomic on its own and costs one
//! round trip and one commit: a create inserts the row, its events and labels
//! and takes a node slot together, and a state change is a compare-and-set on
//! the state that appends its event (and any output shipped with it) in the
//! same statement. A dropped client connection can never leave half a write.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use super::{ClusterKey, DataStore, LogStream, NodeEndpoint};
use crate::dispatch::DispatchState;
use crate::Result;

/// Declares [`DispatchRow`] and the row a create returns (the same columns
/// plus the node it was placed on) from one list of columns.
macro_rules! dispatch_rows {
    ($($field:ident: $ty:ty,)*) => {
        /// One row of `dispatch`.
        #[derive(Debug, Clone)]
        pub struct DispatchRow {
            $(pub $field: $ty,)*
        }

        /// A dispatch row and, when it was placed, its node's endpoint.
        struct PlacedRow {
            $($field: $ty,)*
            node_name: Option<String>,
            node_address: Option<String>,
            node_api_secret: Option<String>,
            node_failing: Option<bool>,
            node_link_replica: Option<Uuid>,
        }

        impl PlacedRow {
            fn split(self) -> (DispatchRow, Option<NodeEndpoint>) {
                let node = match (self.node_id, self.node_name, self.node_address, self.node_api_secret) {
                    (Some(node_id), Some(name), Some(address), Some(api_secret)) => {
                        let failing = self.node_failing.unwrap_or(false);
                        let link_replica = self.node_link_replica;
                        Some(NodeEndpoint { node_id, name, address, api_secret, failing, link_replica })
                    }
                    _ => None,
                };
                (DispatchRow { $($field: self.$field,)* }, node)
            }
        }
    };
}

dispatch_rows! {
    dispatch_id: Uuid,
    project: String,
    function_ref: String,
    function_name: Option<String>,
    bundle: Option<String>,
    requirements: Value,
    args: Value,
    kwargs: Value,
    cluster: String,
    node_id: Option<Uuid>,
    state: DispatchState,
    generation: i64,
    idempotency_key: Option<String>,
    request_hash: String,
    requester: String,
    labels: Value,
    timeout_s: Option<i32>,
    result: Option<Value>,
    failure: Option<Value>,
    cancelled_by: Option<String>,
    cancel_reason: Option<String>,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    cancel_requested_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
    log_bytes: i64,
    log_truncated: bool,
    cluster_project: String,
    acked_at: Option<DateTime<Utc>>,
    requeues: i32,
    object_id: Option<Uuid>,
    method: Option<String>,
    cache_key: Option<String>,
    cached_from: Option<Uuid>,
}

impl DispatchRow {
    /// The cluster it runs on.
    pub fn cluster_key(&self) -> ClusterKey {
        ClusterKey::new(&self.cluster_project, &self.cluster)
    }
}

/// A dispatch as its node's writes see it (`DataStore::dispatches_on_node`).
#[derive(Debug, Clone)]
pub struct OnNodeRow {
    pub dispatch_id: Uuid,
    pub project: String,
    pub cluster_project: String,
    pub cluster: String,
    pub bundle: Option<String>,
    pub state: DispatchState,
}

impl OnNodeRow {
    /// The cluster it runs on.
    pub fn cluster_key(&self) -> ClusterKey {
        ClusterKey::new(&self.cluster_project, &self.cluster)
    }
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
    /// The project owning `cluster` (the dispatch's own, or the one sharing it).
    pub cluster_project: String,
    pub idempotency_key: Option<String>,
    pub request_hash: String,
    pub requester: String,
    pub labels: Value,
    pub timeout_s: Option<i32>,
    /// The object this constructs (without `method`) or calls `method` of.
    pub object_id: Option<Uuid>,
    pub method: Option<String>,
    /// Set when the create asked for caching.
    pub cache_key: Option<String>,
}

/// A state change, applied in one statement: the row moves along the entry
/// of `moves` whose `from` is its current state, and is left alone if none is
/// (or if `expected_generation` or `project` do not hold). The moves come
/// from the pure state machine, so the write is a compare-and-set on the
/// state that needs no read first.
#[derive(Debug, Clone)]
pub struct Transition {
    pub dispatch_id: Uuid,
    /// With a project, another project's dispatch is left alone.
    pub project: Option<String>,
    /// With a node, a dispatch placed on another node is left alone.
    pub node: Option<Uuid>,
    /// Every (from, to) pair the event allows.
    pub moves: Vec<(DispatchState, DispatchState)>,
    /// If set, applies only at this generation.
    pub expected_generation: Option<i64>,
    pub actor: String,
    pub reason: Option<String>,
    pub result: Option<Value>,
    pub failure: Option<Value>,
    /// Set on a cancel request: who asked.
    pub cancelled_by: Option<String>,
    /// Output shipped with the change (a node's last lines), stored in the
    /// same statement. The change applies only if they fit in `log_limit`.
    pub logs: Vec<(i64, LogStream, String)>,
    pub log_limit: i64,
}

/// Filters for listing, already validated.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub states: Vec<DispatchState>,
    pub cluster: Option<String>,
    /// The registered function name, else the entry point.
    pub function: Option<String>,
    /// A JSON object the labels must contain.
    pub labels: Value,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    /// Only ids below this one (keyset pagination).
    pub before_id: Option<Uuid>,
    pub limit: i64,
}

/// A dispatch just placed, and the node it was placed on.
pub type Placed = (DispatchRow, NodeEndpoint);

impl DataStore {
    /// Records a new dispatch and, in the same statement (one commit), places
    /// it on a free slot of a ready node of its cluster, unless older
    /// dispatches of that cluster are still queued (they go first, through
    /// the placement task). Returns the row and, if placed, its node.
    ///
    /// Returns `None` when the project already has a dispatch with this
    /// idempotency key; concurrent duplicates therefore yield exactly one row.
    #[tracing::instrument(skip_all, fields(dispatch_id = %new.dispatch_id))]
    pub async fn dispatch_insert_and_place(
        &self,
        new: &NewDispatch,
    ) -> Result<Option<(DispatchRow, Option<NodeEndpoint>)>> {
        let mut hot = self.hot.acquire().await?;
        let row = sqlx::query_as!(
            PlacedRow,
            r#"
            with node_free as (
                -- A function call or a constructor: a free slot of a ready node.
                select s.node_id, s.slot
                from node_slot s
                join node n on n.node_id = s.node_id
                where $17::text is null and s.project = $15 and s.cluster = $6 and n.state = 'ready'
                  and s.dispatch_id is null and s.object_id is null and s.slot < n.max_concurrent
                  and (n.unreachable_until is null or n.unreachable_until < now())
                  -- Nothing queued before it: probed as "the cluster's oldest queued
                  -- call", which only the queue's index answers in order. As `not
                  -- exists`, the generic plan scanned every queued row of every
                  -- cluster (17 ms with 100,000 queued elsewhere).
                  and (
                      select q.dispatch_id from dispatch_index q
                      where q.state = 'queued' and q.cluster_project = $15 and q.cluster = $6 and not q.is_method
                        and q.cached_from is null
                      order by q.dispatch_id
                      limit 1
                  ) is null
                order by s.slot
                limit 1
                for update of s skip locked
            ),
            object_free as (
                -- A method call: a free slot of its ready object, on its ready node.
                select o.node_id, s.slot
                from object_slot s
                join object o on o.object_id = s.object_id
                join node n on n.node_id = o.node_id
                where $17::text is not null and s.object_id = $16 and o.state = 'ready' and n.state = 'ready'
                  and s.dispatch_id is null and s.slot < o.max_concurrency
                  and (
                      select q.dispatch_id from dispatch_index q
                      where q.state = 'queued' and q.object_id = $16 and q.is_method
                      order by q.dispatch_id
                      limit 1
                  ) is null
                order by s.slot
                limit 1
                for update of s skip locked
            ),
            slot as (select node_id, slot from node_free union all select node_id, slot from object_free),
            inserted as (
                insert into dispatch (
                    dispatch_id, project, function_ref, args, kwargs, cluster,
                    idempotency_key, request_hash, requester, labels, timeout_s,
                    function_name, bundle, requirements, cluster_project, object_id, method, cache_key,
                    state, generation, node_id, started_at
                )
                select $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
                       case when slot.node_id is null then 'queued' else 'running' end::dispatch_state,
                       case when slot.node_id is null then 1 else 2 end,
                       slot.node_id,
                       case when slot.node_id is null then null else now() end
                from (select 1) as one left join slot on true
                on conflict (project, idempotency_key) where idempotency_key is not null do nothing
                returning *
            ),
            indexed as (
                insert into dispatch_index (dispatch_id, project, cluster_project, cluster, object_id, is_method,
                                            cache_key, state, node_id, cached_from, updated_at, finished_at)
                select dispatch_id, project, cluster_project, cluster, object_id, method is not null,
                       cache_key, state, node_id, cached_from, updated_at, finished_at
                from inserted
            ),
            occupied as (
                update node_slot s set dispatch_id = i.dispatch_id
                from inserted i, node_free f
                where s.node_id = f.node_id and s.slot = f.slot
            ),
            object_occupied as (
                update object_slot s set dispatch_id = i.dispatch_id
                from inserted i, object_free f
                where s.object_id = $16 and s.slot = f.slot
            ),
            event as (
                insert into dispatch_event (dispatch_id, from_state, to_state, generation, actor, reason)
                select dispatch_id, null::dispatch_state, 'queued'::dispatch_state, 1::bigint, requester, 'created'
                from inserted
                union all
                select i.dispatch_id, 'queued'::dispatch_state, 'running'::dispatch_state, 2::bigint, 'gateway',
                       'placed on node ' || n.name
                from inserted i join node n on n.node_id = i.node_id
            ),
            labelled as (
                insert into dispatch_label (project, key, value, dispatch_id)
                select i.project, l.key, l.value, i.dispatch_id from inserted i, jsonb_each_text(i.labels) l
            )
            select
                i.dispatch_id as "dispatch_id!", i.project as "project!", i.function_ref as "function_ref!",
                i.function_name, i.bundle, i.requirements as "requirements!",
                i.args as "args!", i.kwargs as "kwargs!", i.cluster as "cluster!", i.node_id,
                i.state as "state!: DispatchState", i.generation as "generation!",
                i.idempotency_key, i.request_hash as "request_hash!", i.requester as "requester!",
                i.labels as "labels!", i.timeout_s, i.result, i.failure, i.cancelled_by, i.cancel_reason,
                i.created_at as "created_at!", i.started_at, i.cancel_requested_at, i.finished_at,
                i.updated_at as "updated_at!", i.log_bytes as "log_bytes!", i.log_truncated as "log_truncated!",
                i.cluster_project as "cluster_project!", i.acked_at, i.requeues as "requeues!", i.object_id, i.method, i.cache_key, i.cached_from,
                n.name as "node_name?", n.address as "node_address?", n.api_secret as "node_api_secret?",
                n.forward_failures > 0 as "node_failing?", n.link_replica as "node_link_replica?"
            from inserted i
            left join node n on n.node_id = i.node_id
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
            new.cluster_project,
            new.object_id,
            new.method,
            new.cache_key,
        )
        .fetch_optional(hot.conn())
        .await;
        Ok(hot.finished(row)?.map(PlacedRow::split))
    }

    /// Records several new dispatches in one statement and one commit (group
    /// commit) and, in the same statement, places as many as there are free
    /// slots, in order, the way [`DataStore::dispatch_insert_and_place`]
    /// places one: a function call or constructor on a free slot of a ready
    /// node of its cluster, unless older calls of that cluster are queued.
    /// The rest (and every method call) are `queued`, for the placement
    /// task. Each result is its item's, in order: its row and, if placed,
    /// its node; `None` when the project already has a dispatch with that
    /// idempotency key.
    ///
    /// If the statement fails, each item is tried again on its own, so an
    /// item the database refuses fails alone, with its own error, and the
    /// others are stored.
    pub async fn dispatch_insert_group(
        &self,
        news: &[&NewDispatch],
    ) -> Vec<Result<Option<(DispatchRow, Option<NodeEndpoint>)>>> {
        let found = |rows: &[(DispatchRow, Option<NodeEndpoint>)], new: &NewDispatch| {
            rows.iter().find(|(r, _)| r.dispatch_id == new.dispatch_id).cloned()
        };
        match self.dispatch_insert_placing(news).await {
            Ok(rows) => news.iter().map(|new| Ok(found(&rows, new))).collect(),
            Err(err) if news.len() == 1 => vec![Err(err)],
            Err(err) => {
                tracing::debug!(error = %err, items = news.len(), "a grouped create failed; storing its items one by one");
                let mut results = Vec::with_capacity(news.len());
                for new in news {
                    results.push(self.dispatch_insert_placing(&[new]).await.map(|rows| found(&rows, new)));
                }
                results
            }
        }
    }

    /// The statement behind [`DataStore::dispatch_insert_group`].
    async fn dispatch_insert_placing(&self, news: &[&NewDispatch]) -> Result<Vec<(DispatchRow, Option<NodeEndpoint>)>> {
        let mut hot = self.hot.acquire().await?;
        let column = |f: fn(&NewDispatch) -> Value| news.iter().map(|n| f(n)).collect::<Vec<Value>>();
        let rows = sqlx::query_as!(
            PlacedRow,
            r#"
            with input as (
                select * from unnest(
                    $1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::jsonb[], $6::text[], $7::text[],
                    $8::text[], $9::text[], $10::jsonb[], $11::int[], $12::text[], $13::text[], $14::jsonb[],
                    $15::text[], $16::uuid[], $17::text[], $18::text[]
                ) with ordinality as t(
                    dispatch_id, project, function_ref, args, kwargs, cluster, idempotency_key,
                    request_hash, requester, labels, timeout_s, function_name, bundle, requirements,
                    cluster_project, object_id, method, cache_key, position
                )
            ),
            -- How many function calls and constructors each cluster wants slots for.
            wanted as (
                select cluster_project, cluster, count(*) as wanted
                from input where method is null
                group by cluster_project, cluster
            ),
            -- Up to that many free slots of each such cluster's ready nodes,
            -- ranked, unless the cluster has calls queued (they go first, through
            -- the placement task). The same conditions as the lone create's.
            free as (
                select w.cluster_project, w.cluster, f.node_id, f.slot,
                       row_number() over (partition by w.cluster_project, w.cluster order by f.slot, f.node_id) as rank
                from wanted w
                cross join lateral (
                    select s.node_id, s.slot
                    from node_slot s
                    join node n on n.node_id = s.node_id
                    where s.project = w.cluster_project and s.cluster = w.cluster and n.state = 'ready'
                      and s.dispatch_id is null and s.object_id is null and s.slot < n.max_concurrent
                      and (n.unreachable_until is null or n.unreachable_until < now())
                      and (
                          select q.dispatch_id from dispatch_index q
                          where q.state = 'queued' and q.cluster_project = w.cluster_project
                            and q.cluster = w.cluster and not q.is_method and q.cached_from is null
                          order by q.dispatch_id
                          limit 1
                      ) is null
                    order by s.slot
                    limit w.wanted
                    for update of s skip locked
                ) f
            ),
            -- The n-th call of a cluster, in the group's order, takes its n-th free slot.
            chosen as (
                select i.*, f.node_id, f.slot
                from (
                    select *, row_number() over (
                        partition by cluster_project, cluster, method is null order by position
                    ) as rank
                    from input
                ) i
                left join free f
                  on i.method is null and f.cluster_project = i.cluster_project and f.cluster = i.cluster
                 and f.rank = i.rank
            ),
            inserted as (
                insert into dispatch (
                    dispatch_id, project, function_ref, args, kwargs, cluster,
                    idempotency_key, request_hash, requester, labels, timeout_s,
                    function_name, bundle, requirements, cluster_project, object_id, method, cache_key,
                    state, generation, node_id, started_at
                )
                select dispatch_id, project, function_ref, args, kwargs, cluster,
                       idempotency_key, request_hash, requester, labels, timeout_s,
                       function_name, bundle, requirements, cluster_project, object_id, method, cache_key,
                       case when node_id is null then 'queued' else 'running' end::dispatch_state,
                       case when node_id is null then 1 else 2 end,
                       node_id,
                       case when node_id is null then null else now() end
                from chosen order by position
                on conflict (project, idempotency_key) where idempotency_key is not null do nothing
                returning *
            ),
            indexed as (
                insert into dispatch_index (dispatch_id, project, cluster_project, cluster, object_id, is_method,
                                            cache_key, state, node_id, cached_from, updated_at, finished_at)
                select dispatch_id, project, cluster_project, cluster, object_id, method is not null,
                       cache_key, state, node_id, cached_from, updated_at, finished_at
                from inserted
            ),
            -- Only a call that was stored takes its slot: one whose idempotency
            -- key was taken leaves it free.
            occupied as (
                update node_slot s set dispatch_id = i.dispatch_id
                from inserted i
                join chosen c on c.dispatch_id = i.dispatch_id
                where i.node_id is not null and s.node_id = c.node_id and s.slot = c.slot
            ),
            event as (
                insert into dispatch_event (dispatch_id, from_state, to_state, generation, actor, reason)
                select dispatch_id, null::dispatch_state, 'queued'::dispatch_state, 1::bigint, requester, 'created'
                from inserted
                union all
                select i.dispatch_id, 'queued'::dispatch_state, 'running'::dispatch_state, 2::bigint, 'gateway',
                       'placed on node ' || n.name
                from inserted i join node n on n.node_id = i.node_id
            ),
            labelled as (
                insert into dispatch_label (project, key, value, dispatch_id)
                select i.project, l.key, l.value, i.dispatch_id from inserted i, jsonb_each_text(i.labels) l
            )
            select
                i.dispatch_id as "dispatch_id!", i.project as "project!", i.function_ref as "function_ref!",
                i.function_name, i.bundle, i.requirements as "requirements!",
                i.args as "args!", i.kwargs as "kwargs!", i.cluster as "cluster!", i.node_id,
                i.state as "state!: DispatchState", i.generation as "generation!",
                i.idempotency_key, i.request_hash as "request_hash!", i.requester as "requester!",
                i.labels as "labels!", i.timeout_s, i.result, i.failure, i.cancelled_by, i.cancel_reason,
                i.created_at as "created_at!", i.started_at, i.cancel_requested_at, i.finished_at,
                i.updated_at as "updated_at!", i.log_bytes as "log_bytes!", i.log_truncated as "log_truncated!",
                i.cluster_project as "cluster_project!", i.acked_at, i.requeues as "requeues!", i.object_id, i.method, i.cache_key, i.cached_from,
                n.name as "node_name?", n.address as "node_address?", n.api_secret as "node_api_secret?",
                n.forward_failures > 0 as "node_failing?", n.link_replica as "node_link_replica?"
            from inserted i
            left join node n on n.node_id = i.node_id
            "#,
            &news.iter().map(|n| n.dispatch_id).collect::<Vec<_>>(),
            &news.iter().map(|n| n.project.clone()).collect::<Vec<_>>(),
            &news.iter().map(|n| n.function_ref.clone()).collect::<Vec<_>>(),
            &column(|n| n.args.clone()),
            &column(|n| n.kwargs.clone()),
            &news.iter().map(|n| n.cluster.clone()).collect::<Vec<_>>(),
            &news.iter().map(|n| n.idempotency_key.clone()).collect::<Vec<_>>() as &[Option<String>],
            &news.iter().map(|n| n.request_hash.clone()).collect::<Vec<_>>(),
            &news.iter().map(|n| n.requester.clone()).collect::<Vec<_>>(),
            &column(|n| n.labels.clone()),
            &news.iter().map(|n| n.timeout_s).collect::<Vec<_>>() as &[Option<i32>],
            &news.iter().map(|n| n.function_name.clone()).collect::<Vec<_>>() as &[Option<String>],
            &news.iter().map(|n| n.bundle.clone()).collect::<Vec<_>>() as &[Option<String>],
            &column(|n| n.requirements.clone()),
            &news.iter().map(|n| n.cluster_project.clone()).collect::<Vec<_>>(),
            &news.iter().map(|n| n.object_id).collect::<Vec<_>>() as &[Option<Uuid>],
            &news.iter().map(|n| n.method.clone()).collect::<Vec<_>>() as &[Option<String>],
            &news.iter().map(|n| n.cache_key.clone()).collect::<Vec<_>>() as &[Option<String>],
        )
        .fetch_all(hot.conn())
        .await;
        Ok(hot.finished(rows)?.into_iter().map(PlacedRow::split).collect())
    }

    /// A call placed and not yet ended, with its node: what a replica needs
    /// to send it over the node's link when another replica placed it.
    pub async fn dispatch_placed_with_node(&self, id: Uuid) -> Result<Option<(DispatchRow, Option<NodeEndpoint>)>> {
        let row = sqlx::query_as!(
            PlacedRow,
            r#"
            select
                i.dispatch_id as "dispatch_id!", i.project as "project!", i.function_ref as "function_ref!",
                i.function_name, i.bundle, i.requirements as "requirements!",
                i.args as "args!", i.kwargs as "kwargs!", i.cluster as "cluster!", i.node_id,
                i.state as "state!: DispatchState", i.generation as "generation!",
                i.idempotency_key, i.request_hash as "request_hash!", i.requester as "requester!",
                i.labels as "labels!", i.timeout_s, i.result, i.failure, i.cancelled_by, i.cancel_reason,
                i.created_at as "created_at!", i.started_at, i.cancel_requested_at, i.finished_at,
                i.updated_at as "updated_at!", i.log_bytes as "log_bytes!", i.log_truncated as "log_truncated!",
                i.cluster_project as "cluster_project!", i.acked_at, i.requeues as "requeues!", i.object_id, i.method, i.cache_key, i.cached_from,
                n.name as "node_name?", n.address as "node_address?", n.api_secret as "node_api_secret?",
                n.forward_failures > 0 as "node_failing?", n.link_replica as "node_link_replica?"
            from dispatch i
            join node n on n.node_id = i.node_id
            where i.dispatch_id = $1 and i.state = 'running'
            "#,
            id
        )
        .fetch_optional(self.pool())
        .await?;
        Ok(row.map(PlacedRow::split))
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
                   log_bytes, log_truncated, cluster_project, acked_at, requeues, object_id, method, cache_key, cached_from
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
        let mut hot = self.hot.acquire().await?;
        let row = sqlx::query_as!(
            DispatchRow,
            r#"
            select dispatch_id, project, function_ref, function_name, bundle, requirements,
                   args, kwargs, cluster, node_id,
                   state as "state: DispatchState", generation, idempotency_key, request_hash,
                   requester, labels, timeout_s, result, failure, cancelled_by, cancel_reason,
                   created_at, started_at, cancel_requested_at, finished_at, updated_at,
                   log_bytes, log_truncated, cluster_project, acked_at, requeues, object_id, method, cache_key, cached_from
            from dispatch
            where dispatch_id = $1 and ($2::text is null or project = $2)
            "#,
            id,
            project
        )
        .fetch_optional(hot.conn())
        .await;
        Ok(hot.finished(row)?)
    }

    /// A page of the project's dispatches, newest first.
    pub async fn dispatch_list(&self, project: &str, filter: &ListFilter) -> Result<Vec<DispatchRow>> {
        let states: Vec<String> = filter.states.iter().map(|s| s.to_string()).collect();
        let first_label = filter
            .labels
            .as_object()
            .and_then(|labels| labels.iter().next())
            .map(|(key, value)| (key.clone(), value.as_str().unwrap_or_default().to_owned()));
        if let (None, Some(function)) = (&first_label, &filter.function) {
            // Walk one function's rows newest first (`dispatch_project_function`).
            let rows = sqlx::query_as!(
                DispatchRow,
                r#"
                select dispatch_id, project, function_ref, function_name, bundle, requirements,
                       args, kwargs, cluster, node_id,
                       state as "state: DispatchState", generation, idempotency_key, request_hash,
                       requester, labels, timeout_s, result, failure, cancelled_by, cancel_reason,
                       created_at, started_at, cancel_requested_at, finished_at, updated_at,
                       log_bytes, log_truncated, cluster_project, acked_at, requeues, object_id, method, cache_key, cached_from
                from dispatch
                where project = $1 and coalesce(function_name, function_ref) = $8
                  and (cardinality($2::text[]) = 0 or state = any($2::text[]::dispatch_state[]))
                  and ($3::text is null or cluster = $3)
                  and ($4::timestamptz is null or created_at >= $4)
                  and ($5::timestamptz is null or created_at < $5)
                  and ($6::uuid is null or dispatch_id < $6)
                order by coalesce(function_name, function_ref), dispatch_id desc
                limit $7
                "#,
                project,
                &states,
                filter.cluster,
                filter.created_after,
                filter.created_before,
                filter.before_id,
                filter.limit,
                function,
            )
            .fetch_all(self.pool())
            .await?;
            return Ok(rows);
        }
        if let (None, false) = (&first_label, states.is_empty()) {
            // Walk the wanted states' rows newest first (`dispatch_index_project_state`).
            let rows = sqlx::query_as!(
                DispatchRow,
                r#"
                select d.dispatch_id, d.project, d.function_ref, d.function_name, d.bundle, d.requirements,
                       d.args, d.kwargs, d.cluster, d.node_id,
                       d.state as "state: DispatchState", d.generation, d.idempotency_key, d.request_hash,
                       d.requester, d.labels, d.timeout_s, d.result, d.failure, d.cancelled_by, d.cancel_reason,
                       d.created_at, d.started_at, d.cancel_requested_at, d.finished_at, d.updated_at,
                       d.log_bytes, d.log_truncated, d.cluster_project, d.acked_at, d.requeues, d.object_id, d.method,
                       d.cache_key, d.cached_from
                from dispatch_index q
                -- Row by row (`offset 0` keeps the planner from making this a
                -- join), so the walk stops at the limit instead of merging
                -- with a scan of the whole table.
                cross join lateral (select * from dispatch d where d.dispatch_id = q.dispatch_id offset 0) d
                where q.project = $1 and q.state = any($2::text[]::dispatch_state[])
                  and ($3::text is null or q.cluster = $3)
                  and ($4::timestamptz is null or d.created_at >= $4)
                  and ($5::timestamptz is null or d.created_at < $5)
                  and ($6::uuid is null or q.dispatch_id < $6)
                order by q.dispatch_id desc
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
        }
        let Some((key, value)) = first_label else {
            // No label, function or state: the project's rows newest first.
            let rows = sqlx::query_as!(
                DispatchRow,
                r#"
                select dispatch_id, project, function_ref, function_name, bundle, requirements,
                       args, kwargs, cluster, node_id,
                       state as "state: DispatchState", generation, idempotency_key, request_hash,
                       requester, labels, timeout_s, result, failure, cancelled_by, cancel_reason,
                       created_at, started_at, cancel_requested_at, finished_at, updated_at,
                       log_bytes, log_truncated, cluster_project, acked_at, requeues, object_id, method, cache_key, cached_from
                from dispatch
                where project = $1
                  and ($2::text is null or cluster = $2)
                  and ($3::timestamptz is null or created_at >= $3)
                  and ($4::timestamptz is null or created_at < $4)
                  and ($5::uuid is null or dispatch_id < $5)
                order by dispatch_id desc
                limit $6
                "#,
                project,
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
                   d.log_bytes, d.log_truncated, d.cluster_project, d.acked_at, d.requeues, d.object_id, d.method, d.cache_key, d.cached_from
            from dispatch_label l
            join dispatch d on d.dispatch_id = l.dispatch_id
            where l.project = $1 and l.key = $9 and l.value = $10
              and ($7::uuid is null or l.dispatch_id < $7)
              and d.labels @> $4
              and (cardinality($2::text[]) = 0 or d.state = any($2::text[]::dispatch_state[]))
              and ($3::text is null or d.cluster = $3)
              and ($5::timestamptz is null or d.created_at >= $5)
              and ($6::timestamptz is null or d.created_at < $6)
              and ($11::text is null or coalesce(d.function_name, d.function_ref) = $11)
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
            filter.function,
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows)
    }

    /// Applies a [`Transition`] if one of its moves starts at the row's
    /// current state, appending its event and any shipped output in the same
    /// statement. `None` means nothing was written: no move applies (the
    /// event is a no-op or illegal here), a condition did not hold, the
    /// output does not fit, or the dispatch does not exist.
    #[tracing::instrument(skip_all, fields(dispatch_id = %change.dispatch_id))]
    pub async fn dispatch_transition(&self, change: &Transition) -> Result<Option<DispatchRow>> {
        let mut hot = self.hot.acquire().await?;
        let row = transitions_on(hot.conn(), &[change]).await.map(|mut rows| rows.pop().flatten());
        Ok(hot.finished(row)?)
    }

    /// Applies several changes in one transaction and one commit (group
    /// commit), one statement for each run of changes to distinct dispatches;
    /// one result per change, in order, each as
    /// [`DataStore::dispatch_transition`] gives it.
    ///
    /// If any statement or the commit fails, each change is applied again on
    /// its own: a change that did commit then finds its row moved and writes
    /// nothing, which its caller already handles as a repeat.
    pub async fn dispatch_transition_group(&self, changes: &[Transition]) -> Vec<Result<Option<DispatchRow>>> {
        let grouped = async {
            let mut hot = self.hot.acquire().await?;
            let written = async {
                let mut tx = sqlx::Connection::begin(hot.conn()).await?;
                let mut rows = Vec::with_capacity(changes.len());
                for run in distinct_runs(changes) {
                    rows.extend(transitions_on(&mut tx, &run).await?);
                }
                tx.commit().await?;
                Ok::<_, sqlx::Error>(rows)
            }
            .await;
            Ok::<_, crate::Error>(hot.finished(written)?)
        };
        match grouped.await {
            Ok(rows) => rows.into_iter().map(Ok).collect(),
            Err(err) => {
                tracing::debug!(error = %err, items = changes.len(), "a grouped change failed; applying its items one by one");
                let mut results = Vec::with_capacity(changes.len());
                for change in changes {
                    results.push(self.dispatch_transition(change).await);
                }
                results
            }
        }
    }

    /// Places up to `max` queued dispatches of `cluster`, oldest first, each
    /// on a free slot of a ready node, filling every node's first slot before
    /// any node's second, in one statement and one commit. Slots and
    /// dispatches are claimed with `SKIP LOCKED`, so replicas never place one
    /// dispatch twice or overfill a node, and never wait on each other.
    #[tracing::instrument(skip_all, fields(cluster))]
    pub async fn dispatch_place_batch(&self, cluster: &ClusterKey, max: usize) -> Result<Vec<Placed>> {
        // On a hot connection: this statement finds every row it writes by key (see `hot::options`).
        let mut hot = self.hot.acquire().await?;
        let rows = sqlx::query_as!(
            PlacedRow,
            r#"
            with free as (
                select s.node_id, s.slot
                from node_slot s
                join node n on n.node_id = s.node_id
                where s.project = $2 and s.cluster = $1 and n.state = 'ready'
                  and s.dispatch_id is null and s.object_id is null and s.slot < n.max_concurrent
                  and (n.unreachable_until is null or n.unreachable_until < now())
                order by s.slot, s.node_id
                limit $3
                for update of s skip locked
            ),
            slots as (
                select node_id, slot, row_number() over (order by slot, node_id) as rank from free
            ),
            waiting as (
                -- Walked in the narrow row's index, each locked on its dispatch row
                -- (and checked again there, in case it moved since the snapshot).
                -- Row by row, so the walk stops at the limit: as a join, the
                -- planner merged it with a scan of every dispatch id below the
                -- queue's oldest (135 ms with 100,000 queued, instead of 2 ms).
                select d.dispatch_id from dispatch_index q
                cross join lateral (
                    select d.dispatch_id from dispatch d
                    where d.dispatch_id = q.dispatch_id and d.state = 'queued' and d.cached_from is null
                    for update skip locked
                ) d
                where q.state = 'queued' and q.cluster_project = $2 and q.cluster = $1 and not q.is_method
                  and q.cached_from is null
                order by q.dispatch_id
                limit (select count(*) from slots)
            ),
            pairs as (
                select w.dispatch_id, s.node_id, s.slot
                from (select dispatch_id, row_number() over (order by dispatch_id) as rank from waiting) w
                join slots s on s.rank = w.rank
            ),
            -- Both rows by key: the planner guesses 10 % of the queue for a
            -- limit it cannot see (`waiting`'s), and as joins these became
            -- hash joins over scans of both whole tables (56 ms a statement
            -- with 100,000 queued).
            updated as (
                update dispatch d set state = 'running', generation = d.generation + 1,
                                      node_id = (select p.node_id from pairs p where p.dispatch_id = d.dispatch_id),
                                      started_at = now(), updated_at = now()
                where d.dispatch_id = any(array(select dispatch_id from pairs))
                returning d.*
            ),
            indexed as (
                update dispatch_index q set state = u.state, node_id = u.node_id, updated_at = u.updated_at
                from updated u
                where q.dispatch_id = any(array(select dispatch_id from pairs)) and q.dispatch_id = u.dispatch_id
            ),
            occupied as (
                update node_slot s set dispatch_id = u.dispatch_id
                from updated u join pairs p on p.dispatch_id = u.dispatch_id
                where s.node_id = p.node_id and s.slot = p.slot
            ),
            event as (
                insert into dispatch_event (dispatch_id, from_state, to_state, generation, actor, reason)
                select u.dispatch_id, 'queued', u.state, u.generation, 'gateway', 'placed on node ' || n.name
                from updated u join node n on n.node_id = u.node_id
            )
            select
                u.dispatch_id as "dispatch_id!", u.project as "project!", u.function_ref as "function_ref!",
                u.function_name, u.bundle, u.requirements as "requirements!",
                u.args as "args!", u.kwargs as "kwargs!", u.cluster as "cluster!", u.node_id,
                u.state as "state!: DispatchState", u.generation as "generation!",
                u.idempotency_key, u.request_hash as "request_hash!", u.requester as "requester!",
                u.labels as "labels!", u.timeout_s, u.result, u.failure, u.cancelled_by, u.cancel_reason,
                u.created_at as "created_at!", u.started_at, u.cancel_requested_at, u.finished_at,
                u.updated_at as "updated_at!", u.log_bytes as "log_bytes!", u.log_truncated as "log_truncated!",
                u.cluster_project as "cluster_project!", u.acked_at, u.requeues as "requeues!", u.object_id, u.method, u.cache_key, u.cached_from,
                n.name as "node_name?", n.address as "node_address?", n.api_secret as "node_api_secret?",
                n.forward_failures > 0 as "node_failing?", n.link_replica as "node_link_replica?"
            from updated u
            join node n on n.node_id = u.node_id
            order by u.dispatch_id
            "#,
            cluster.name,
            cluster.project,
            max as i64,
        )
        .fetch_all(hot.conn())
        .await;
        let rows = hot.finished(rows)?;
        Ok(rows.into_iter().map(PlacedRow::split).filter_map(|(row, node)| node.map(|node| (row, node))).collect())
    }

    /// Places up to `max` queued method calls of object `object_id`, oldest
    /// first, each on a free slot of the object (on its node), as
    /// [`Self::dispatch_place_batch`] does for a cluster.
    #[tracing::instrument(skip_all, fields(object_id = %object_id))]
    pub async fn dispatch_place_object_batch(&self, object_id: Uuid, max: usize) -> Result<Vec<Placed>> {
        let mut placed = Vec::new();
        while placed.len() < max {
            let row = sqlx::query_as!(
                PlacedRow,
                r#"
                with slot as (
                    select o.node_id, s.slot
                    from object_slot s
                    join object o on o.object_id = s.object_id
                    join node n on n.node_id = o.node_id
                    where s.object_id = $1 and o.state = 'ready' and n.state = 'ready'
                      and s.dispatch_id is null and s.slot < o.max_concurrency
                    order by s.slot
                    limit 1
                    for update of s skip locked
                ),
                next as (
                    -- Row by row, as in `dispatch_place_batch`.
                    select d.dispatch_id from dispatch_index q
                    cross join lateral (
                        select d.dispatch_id from dispatch d
                        where d.dispatch_id = q.dispatch_id and d.state = 'queued'
                        for update skip locked
                    ) d
                    where q.state = 'queued' and q.object_id = $1 and q.is_method and exists (select 1 from slot)
                    order by q.dispatch_id
                    limit 1
                ),
                updated as (
                    update dispatch d set state = 'running', generation = d.generation + 1, node_id = slot.node_id,
                                          started_at = now(), updated_at = now()
                    from slot
                    where d.dispatch_id = (select dispatch_id from next)
                    returning d.*
                ),
                indexed as (
                    update dispatch_index q set state = u.state, node_id = u.node_id, updated_at = u.updated_at
                    from updated u where q.dispatch_id = u.dispatch_id
                ),
                occupied as (
                    update object_slot s set dispatch_id = u.dispatch_id
                    from updated u, slot
                    where s.object_id = $1 and s.slot = slot.slot
                ),
                event as (
                    insert into dispatch_event (dispatch_id, from_state, to_state, generation, actor, reason)
                    select u.dispatch_id, 'queued', u.state, u.generation, 'gateway', 'placed on its instance on node ' || n.name
                    from updated u join node n on n.node_id = u.node_id
                )
                select
                    u.dispatch_id as "dispatch_id!", u.project as "project!", u.function_ref as "function_ref!",
                    u.function_name, u.bundle, u.requirements as "requirements!",
                    u.args as "args!", u.kwargs as "kwargs!", u.cluster as "cluster!", u.node_id,
                    u.state as "state!: DispatchState", u.generation as "generation!",
                    u.idempotency_key, u.request_hash as "request_hash!", u.requester as "requester!",
                    u.labels as "labels!", u.timeout_s, u.result, u.failure, u.cancelled_by, u.cancel_reason,
                    u.created_at as "created_at!", u.started_at, u.cancel_requested_at, u.finished_at,
                    u.updated_at as "updated_at!", u.log_bytes as "log_bytes!", u.log_truncated as "log_truncated!",
                    u.cluster_project as "cluster_project!", u.acked_at, u.requeues as "requeues!", u.object_id, u.method, u.cache_key, u.cached_from,
                    n.name as "node_name?", n.address as "node_address?", n.api_secret as "node_api_secret?",
                n.forward_failures > 0 as "node_failing?", n.link_replica as "node_link_replica?"
                from updated u
                join node n on n.node_id = u.node_id
                "#,
                object_id,
            )
            .fetch_optional(self.pool())
            .await?;
            match row.map(PlacedRow::split) {
                Some((row, Some(node))) => placed.push((row, node)),
                _ => break,
            }
        }
        Ok(placed)
    }

    /// Ready objects that have queued method calls and a free slot.
    pub async fn dispatch_placeable_objects(&self) -> Result<Vec<Uuid>> {
        let ids = sqlx::query_scalar!(
            r#"
            select o.object_id from object o
            join node n on n.node_id = o.node_id
            where o.state = 'ready' and n.state = 'ready'
              and exists (select 1 from dispatch_index q where q.state = 'queued' and q.object_id = o.object_id
                                                           and q.is_method)
              and exists (select 1 from object_slot s where s.object_id = o.object_id and s.dispatch_id is null
                                                        and s.slot < o.max_concurrency)
            "#
        )
        .fetch_all(self.pool())
        .await?;
        Ok(ids)
    }

    /// The calls of `object_id` (its constructors and method calls) in one of `states`, oldest first.
    pub async fn dispatch_of_object(
        &self,
        object_id: Uuid,
        states: &[DispatchState],
        limit: i64,
    ) -> Result<Vec<DispatchRow>> {
        let rows = sqlx::query_as!(
            DispatchRow,
            r#"
            select dispatch_id, project, function_ref, function_name, bundle, requirements,
                   args, kwargs, cluster, node_id,
                   state as "state: DispatchState", generation, idempotency_key, request_hash,
                   requester, labels, timeout_s, result, failure, cancelled_by, cancel_reason,
                   created_at, started_at, cancel_requested_at, finished_at, updated_at,
                   log_bytes, log_truncated, cluster_project, acked_at, requeues, object_id, method, cache_key, cached_from
            from dispatch
            where object_id = $1 and state = any($2::dispatch_state[])
            order by dispatch_id
            limit $3
            "#,
            object_id,
            states as &[DispatchState],
            limit
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows)
    }

    /// Waits for the cache lock of (project, key): a transaction-scoped
    /// advisory lock, so creates of one key on every replica take turns, and
    /// Postgres releases it if this replica dies.
    pub async fn cache_lock(&self, project: &str, cache_key: &str) -> Result<CacheLock> {
        let mut tx = self.pool.begin().await?;
        let name = format!("cache:{project}:{cache_key}");
        sqlx::query!("select pg_advisory_xact_lock(hashtextextended($1, 0))", name).execute(&mut *tx).await?;
        Ok(CacheLock { tx, project: project.to_owned(), cache_key: cache_key.to_owned() })
    }

    /// Records a dispatch answered from the cache: `succeeded` at once with
    /// `result` (from `cached_from`), or, without a result, `queued` behind
    /// `cached_from` (a follower, never placed). `None` on an idempotency-key conflict.
    pub async fn dispatch_insert_cached(
        &self,
        new: &NewDispatch,
        cached_from: Uuid,
        result: Option<&Value>,
    ) -> Result<Option<DispatchRow>> {
        let row = sqlx::query_as!(
            DispatchRow,
            r#"
            with inserted as (
                insert into dispatch (
                    dispatch_id, project, function_ref, args, kwargs, cluster,
                    idempotency_key, request_hash, requester, labels, timeout_s,
                    function_name, bundle, requirements, cluster_project, cache_key, cached_from,
                    state, generation, result, started_at, finished_at
                )
                values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17,
                        case when $18::jsonb is null then 'queued' else 'succeeded' end::dispatch_state,
                        case when $18::jsonb is null then 1 else 2 end,
                        $18, case when $18::jsonb is null then null else now() end,
                        case when $18::jsonb is null then null else now() end)
                on conflict (project, idempotency_key) where idempotency_key is not null do nothing
                returning *
            ),
            indexed as (
                insert into dispatch_index (dispatch_id, project, cluster_project, cluster, object_id, is_method,
                                            cache_key, state, node_id, cached_from, updated_at, finished_at)
                select dispatch_id, project, cluster_project, cluster, object_id, method is not null,
                       cache_key, state, node_id, cached_from, updated_at, finished_at
                from inserted
            ),
            event as (
                insert into dispatch_event (dispatch_id, from_state, to_state, generation, actor, reason)
                select dispatch_id, null::dispatch_state, 'queued'::dispatch_state, 1::bigint, requester,
                       case when state = 'queued' then 'created; waits for the identical dispatch ' || $17::text
                            else 'created' end
                from inserted
                union all
                select dispatch_id, 'queued'::dispatch_state, 'succeeded'::dispatch_state, 2::bigint, 'gateway',
                       'result cached from dispatch ' || $17::text
                from inserted where state = 'succeeded'
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
                updated_at as "updated_at!", log_bytes as "log_bytes!", log_truncated as "log_truncated!",
                cluster_project as "cluster_project!", acked_at, requeues as "requeues!", object_id, method,
                cache_key, cached_from
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
            new.cluster_project,
            new.cache_key,
            cached_from,
            result,
        )
        .fetch_optional(self.pool())
        .await?;
        Ok(row)
    }

    /// The queued dispatches waiting for `leader`'s result.
    pub async fn dispatch_followers(&self, leader: Uuid) -> Result<Vec<DispatchRow>> {
        let rows = sqlx::query_as!(
            DispatchRow,
            r#"
            select dispatch_id, project, function_ref, function_name, bundle, requirements,
                   args, kwargs, cluster, node_id,
                   state as "state: DispatchState", generation, idempotency_key, request_hash,
                   requester, labels, timeout_s, result, failure, cancelled_by, cancel_reason,
                   created_at, started_at, cancel_requested_at, finished_at, updated_at,
                   log_bytes, log_truncated, cluster_project, acked_at, requeues, object_id, method, cache_key, cached_from
            from dispatch
            -- The ids first (an InitPlan), then each row by its key: as a
            -- semi-join the planner may scan the whole table instead.
            where dispatch_id = any(array(select dispatch_id from dispatch_index where cached_from = $1 and state = 'queued'))
            order by dispatch_id
            "#,
            leader
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows)
    }

    /// `leader` ended without a result to share: its oldest follower becomes
    /// the one that runs (placeable from now on), and the others wait for it.
    /// Returns the new leader, if there was a follower.
    pub async fn dispatch_promote_follower(&self, leader: Uuid) -> Result<Option<Uuid>> {
        let promoted = sqlx::query_scalar!(
            r#"
            with followers as (
                select d.dispatch_id from dispatch_index q
                cross join lateral (
                    select d.dispatch_id from dispatch d
                    where d.dispatch_id = q.dispatch_id and d.cached_from = $1 and d.state = 'queued'
                    for update
                ) d
                where q.cached_from = $1 and q.state = 'queued'
            ),
            next as (select dispatch_id from followers order by dispatch_id limit 1),
            promoted as (
                update dispatch set cached_from = null, updated_at = now()
                where dispatch_id = (select dispatch_id from next)
                returning dispatch_id, updated_at
            ),
            others as (
                update dispatch set cached_from = (select dispatch_id from promoted)
                where dispatch_id in (select dispatch_id from followers)
                  and dispatch_id <> (select dispatch_id from next)
                returning dispatch_id, cached_from
            ),
            indexed as (
                update dispatch_index q set cached_from = null, updated_at = p.updated_at
                from promoted p where q.dispatch_id = p.dispatch_id
            ),
            others_indexed as (
                update dispatch_index q set cached_from = o.cached_from
                from others o where q.dispatch_id = o.dispatch_id
            )
            select dispatch_id as "dispatch_id!" from promoted
            "#,
            leader
        )
        .fetch_optional(self.pool())
        .await?;
        Ok(promoted)
    }

    /// Leaders that ended while dispatches still wait on them (a gateway
    /// stopped before settling them): the cache step settles them.
    pub async fn dispatch_cache_leaders_ended(&self) -> Result<Vec<Uuid>> {
        let ids = sqlx::query_scalar!(
            r#"
            select distinct f.cached_from as "leader!"
            from dispatch_index f join dispatch_index l on l.dispatch_id = f.cached_from
            where f.cached_from is not null and f.state = 'queued'
              and l.state in ('succeeded', 'failed', 'cancelled', 'timed_out')
              and l.finished_at < now() - interval '2 seconds'
            limit 100
            "#
        )
        .fetch_all(self.pool())
        .await?;
        Ok(ids)
    }

    /// Those of `ids` that were placed on `node_id`: what a node's writes
    /// about its calls (run records, artifacts) check and need, without the
    /// arguments and result.
    pub async fn dispatches_on_node(&self, ids: &[Uuid], node_id: Uuid) -> Result<Vec<OnNodeRow>> {
        let rows = sqlx::query_as!(
            OnNodeRow,
            r#"
            select dispatch_id, project, cluster_project, cluster, bundle, state as "state: DispatchState"
            from dispatch
            where dispatch_id = any($1) and node_id = $2
            "#,
            ids,
            node_id
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows)
    }

    /// Which of `clusters` have queued dispatches.
    pub async fn dispatch_clusters_with_queued(&self, clusters: &[ClusterKey]) -> Result<Vec<ClusterKey>> {
        let projects: Vec<String> = clusters.iter().map(|c| c.project.clone()).collect();
        let names: Vec<String> = clusters.iter().map(|c| c.name.clone()).collect();
        // One probe per cluster, and "its oldest queued dispatch", which only
        // the queue's own index answers in order: stale statistics cannot turn
        // it into a scan of every dispatch the cluster ever ran.
        let rows = sqlx::query!(
            r#"
            select c.project as "project!", c.name as "name!" from unnest($1::text[], $2::text[]) as c (project, name)
            where (
                select q.dispatch_id from dispatch_index q
                where q.state = 'queued' and q.cluster_project = c.project and q.cluster = c.name
                  and not q.is_method and q.cached_from is null
                order by q.dispatch_id
                limit 1
            ) is not null
            "#,
            &projects,
            &names
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|r| ClusterKey { project: r.project, name: r.name }).collect())
    }

    /// Clusters that have dispatches queued to place and a ready node; free
    /// slots are the placing statement's to find.
    pub async fn dispatch_placeable_clusters(&self) -> Result<Vec<ClusterKey>> {
        let ready = sqlx::query!(
            r#"
            select distinct project, cluster from node
            where state = 'ready' and (unreachable_until is null or unreachable_until < now())
            "#
        )
        .fetch_all(self.pool())
        .await?;
        let ready: Vec<ClusterKey> =
            ready.into_iter().map(|r| ClusterKey { project: r.project, name: r.cluster }).collect();
        if ready.is_empty() {
            return Ok(ready);
        }
        self.dispatch_clusters_with_queued(&ready).await
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
                   log_bytes, log_truncated, cluster_project, acked_at, requeues, object_id, method, cache_key, cached_from
            from dispatch
            where dispatch_id = any(array(
                select dispatch_id from dispatch_index where node_id = $1 and state in ('running', 'cancelling')
            ))
            "#,
            node_id
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows)
    }

    /// Dispatches still waiting in `queued` for `cluster`.
    pub async fn dispatch_queued_in_cluster(&self, cluster: &ClusterKey, limit: i64) -> Result<Vec<DispatchRow>> {
        let rows = sqlx::query_as!(
            DispatchRow,
            r#"
            select dispatch_id, project, function_ref, function_name, bundle, requirements,
                   args, kwargs, cluster, node_id,
                   state as "state: DispatchState", generation, idempotency_key, request_hash,
                   requester, labels, timeout_s, result, failure, cancelled_by, cancel_reason,
                   created_at, started_at, cancel_requested_at, finished_at, updated_at,
                   log_bytes, log_truncated, cluster_project, acked_at, requeues, object_id, method, cache_key, cached_from
            from dispatch
            where dispatch_id = any(array(
                select dispatch_id from dispatch_index
                where cluster_project = $1 and cluster = $2 and state = 'queued'
                order by dispatch_id
                limit $3
            ))
            order by dispatch_id
            "#,
            cluster.project,
            cluster.name,
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
                   log_bytes, log_truncated, cluster_project, acked_at, requeues, object_id, method, cache_key, cached_from
            from dispatch
            where dispatch_id = any(array(
                select dispatch_id from dispatch_index
                where state = 'cancelling' and updated_at < now() - make_interval(secs => $1)
                order by updated_at
                limit 100
            ))
            order by updated_at
            "#,
            older_than_s
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows)
    }

    /// Clusters among `names` (profile names) that some project has dispatches queued for.
    pub async fn dispatch_clusters_wanted(&self, names: &[String]) -> Result<Vec<ClusterKey>> {
        let rows = sqlx::query!(
            r#"
            select distinct cluster_project, cluster from dispatch_index
            where state = 'queued' and cluster = any($1)
            "#,
            names
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|r| ClusterKey { project: r.cluster_project, name: r.cluster }).collect())
    }

    /// Marks as acknowledged the dispatches on `node_id` its heartbeat
    /// listed: the node had them, so from now on they are never requeued.
    /// A call is acknowledged only this way, and only once (a call that ends
    /// before its node's next heartbeat is never written to for it).
    ///
    /// It skips rows another transaction holds: those are being reported or
    /// changed right now (waiting for them made heartbeats take ~140 ms each
    /// while 100 nodes drained a backlog, and held up the reports queued
    /// behind them), and the node's next heartbeat lists any still running.
    pub async fn dispatch_ack_listed(&self, node_id: Uuid, listed: &[Uuid]) -> Result<()> {
        sqlx::query!(
            r#"
            update dispatch set acked_at = now()
            where dispatch_id in (
                select dispatch_id from dispatch
                where dispatch_id = any($2) and node_id = $1 and acked_at is null
                  and state in ('running', 'cancelling')
                for update skip locked
            )
            "#,
            node_id,
            listed
        )
        .execute(self.pool())
        .await?;
        Ok(())
    }

    /// True if a dispatch using bundle `sha256` is running (or cancelling) on `node_id`.
    pub async fn bundle_placed_on(&self, sha256: &str, node_id: Uuid) -> Result<bool> {
        let placed = sqlx::query_scalar!(
            r#"
            select exists(
                select 1 from dispatch_index q
                cross join lateral (select d.bundle from dispatch d where d.dispatch_id = q.dispatch_id offset 0) d
                where q.node_id = $1 and q.state in ('running', 'cancelling') and d.bundle = $2
            ) as "placed!"
            "#,
            node_id,
            sha256
        )
        .fetch_one(self.pool())
        .await?;
        Ok(placed)
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
            r#"select state as "state: DispatchState", count(*) as "count!" from dispatch_index group by state"#
        )
        .fetch_all(self.pool())
        .await?;
        Ok(rows.into_iter().map(|r| (r.state, r.count)).collect())
    }
}

/// The cache lock of one (project, key), held until dropped; its queries run
/// in the transaction that holds it.
pub struct CacheLock {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    project: String,
    cache_key: String,
}

impl CacheLock {
    /// The project's latest succeeded dispatch with `cache_key`, finished
    /// within `ttl_s` seconds (any age without one).
    pub async fn hit(&mut self, ttl_s: Option<f64>) -> Result<Option<DispatchRow>> {
        let row = sqlx::query_as!(
            DispatchRow,
            r#"
            select dispatch_id, project, function_ref, function_name, bundle, requirements,
                   args, kwargs, cluster, node_id,
                   state as "state: DispatchState", generation, idempotency_key, request_hash,
                   requester, labels, timeout_s, result, failure, cancelled_by, cancel_reason,
                   created_at, started_at, cancel_requested_at, finished_at, updated_at,
                   log_bytes, log_truncated, cluster_project, acked_at, requeues, object_id, method, cache_key, cached_from
            from dispatch
            where dispatch_id = (
                select dispatch_id from dispatch_index
                where project = $1 and cache_key = $2 and state = 'succeeded'
                  and ($3::float8 is null or finished_at > now() - make_interval(secs => $3))
                order by finished_at desc
                limit 1
            )
            "#,
            self.project,
            self.cache_key,
            ttl_s
        )
        .fetch_optional(&mut *self.tx)
        .await?;
        Ok(row)
    }

    /// The project's queued or running dispatch with `cache_key` that runs for its key (not a follower).
    pub async fn leader(&mut self) -> Result<Option<DispatchRow>> {
        let row = sqlx::query_as!(
            DispatchRow,
            r#"
            select dispatch_id, project, function_ref, function_name, bundle, requirements,
                   args, kwargs, cluster, node_id,
                   state as "state: DispatchState", generation, idempotency_key, request_hash,
                   requester, labels, timeout_s, result, failure, cancelled_by, cancel_reason,
                   created_at, started_at, cancel_requested_at, finished_at, updated_at,
                   log_bytes, log_truncated, cluster_project, acked_at, requeues, object_id, method, cache_key, cached_from
            from dispatch
            where dispatch_id = (
                select dispatch_id from dispatch_index
                where project = $1 and cache_key = $2 and cached_from is null
                  and state in ('queued', 'running', 'cancelling')
                order by dispatch_id
                limit 1
            )
            "#,
            self.project,
            self.cache_key
        )
        .fetch_optional(&mut *self.tx)
        .await?;
        Ok(row)
    }
}

/// The statement behind [`DataStore::dispatch_transition`] and its group:
/// applies `changes` in one statement on `conn` and gives one result per
/// change, in order. No dispatch may appear twice in `changes` (one
/// statement updates a row once); [`distinct_runs`] splits a group so.
async fn transitions_on(
    conn: &mut PgConnection,
    changes: &[&Transition],
) -> Result<Vec<Option<DispatchRow>>, sqlx::Error> {
    fn each<T>(changes: &[&Transition], field: impl Fn(&Transition) -> T) -> Vec<T> {
        changes.iter().map(|c| field(c)).collect()
    }
    let ids = each(changes, |c| c.dispatch_id);
    let generations = each(changes, |c| c.expected_generation);
    let actors = each(changes, |c| c.actor.clone());
    let reasons = each(changes, |c| c.reason.clone());
    let cancelled_by = each(changes, |c| c.cancelled_by.clone());
    let results = each(changes, |c| c.result.as_ref().map(Value::to_string));
    let failures = each(changes, |c| c.failure.as_ref().map(Value::to_string));
    let projects = each(changes, |c| c.project.clone());
    let nodes = each(changes, |c| c.node);
    let log_bytes = each(changes, |c| c.logs.iter().map(|e| e.2.len() as i64).sum::<i64>());
    let log_limits = each(changes, |c| c.log_limit);
    let has_logs = each(changes, |c| !c.logs.is_empty());
    // Moves and shipped output, a row each, keyed by their dispatch.
    let (mut move_ids, mut from, mut to) = (Vec::new(), Vec::new(), Vec::new());
    let (mut log_ids, mut seqs, mut streams, mut texts, mut escaped) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for change in changes {
        for (f, t) in &change.moves {
            move_ids.push(change.dispatch_id);
            from.push(f.to_string());
            to.push(t.to_string());
        }
        let (stored, escapes) = super::log::stored_texts(&change.logs);
        for ((entry, text), escapes) in change.logs.iter().zip(stored).zip(escapes) {
            log_ids.push(change.dispatch_id);
            seqs.push(entry.0);
            streams.push(entry.1.as_str().to_owned());
            texts.push(text);
            escaped.push(escapes);
        }
    }
    let rows = sqlx::query_as!(
        DispatchRow,
        r#"
        with items as (
            select * from unnest($1::uuid[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[],
                                 $7::text[], $8::text[], $9::uuid[], $10::bigint[], $11::bigint[], $12::bool[])
                as i (dispatch_id, expected_generation, actor, reason, cancelled_by, result,
                      failure, project, node, log_bytes, log_limit, has_logs)
        ),
        moves as (
            select * from unnest($13::uuid[], $14::text[], $15::text[]) as m (dispatch_id, from_state, to_state)
        ),
        updated as (
            update dispatch d set
                state = m.to_state::dispatch_state,
                generation = d.generation + 1,
                updated_at = now(),
                started_at = case when m.to_state = 'running' then now() else d.started_at end,
                cancel_requested_at = case when i.cancelled_by is not null then now() else d.cancel_requested_at end,
                finished_at = case when m.to_state in ('succeeded', 'failed', 'cancelled', 'timed_out')
                                   then now() else d.finished_at end,
                -- As JSON text, never through jsonb, which cannot hold a NUL.
                result = coalesce(i.result::json, d.result),
                failure = coalesce(i.failure::json, d.failure),
                cancelled_by = coalesce(i.cancelled_by, d.cancelled_by),
                cancel_reason = case when i.cancelled_by is not null then i.reason else d.cancel_reason end,
                -- Back in the queue means on no node.
                node_id = case when m.to_state = 'queued' then null else d.node_id end,
                requeues = d.requeues + case when m.to_state = 'queued' then 1 else 0 end,
                log_bytes = d.log_bytes + i.log_bytes
            from items i join moves m on m.dispatch_id = i.dispatch_id
            -- `any($1)`: by key, whatever the planner guesses of the items.
            where d.dispatch_id = any($1::uuid[]) and d.dispatch_id = i.dispatch_id
              and d.state = m.from_state::dispatch_state
              and (i.expected_generation is null or d.generation = i.expected_generation)
              and (i.project is null or d.project = i.project)
              and (i.node is null or d.node_id = i.node)
              and (not i.has_logs or (not d.log_truncated and d.log_bytes + i.log_bytes <= i.log_limit))
            returning d.*, m.from_state, i.actor, i.reason
        ),
        indexed as (
            update dispatch_index q set state = u.state, node_id = u.node_id, updated_at = u.updated_at,
                                        finished_at = u.finished_at
            from updated u where q.dispatch_id = any($1::uuid[]) and q.dispatch_id = u.dispatch_id
        ),
        event as (
            insert into dispatch_event (dispatch_id, from_state, to_state, generation, actor, reason)
            select dispatch_id, from_state::dispatch_state, state, generation, actor, reason from updated
        ),
        logged as (
            insert into dispatch_log (dispatch_id, seq, stream, text, escaped)
            select u.dispatch_id, l.seq, l.stream::log_stream, l.text, l.escaped
            from updated u
            join unnest($16::uuid[], $17::bigint[], $18::text[], $19::text[], $20::bool[])
                as l (dispatch_id, seq, stream, text, escaped) on l.dispatch_id = u.dispatch_id
            on conflict (dispatch_id, seq) do nothing
        )
        select
            dispatch_id as "dispatch_id!", project as "project!", function_ref as "function_ref!",
            function_name, bundle, requirements as "requirements!",
            args as "args!", kwargs as "kwargs!", cluster as "cluster!", node_id,
            state as "state!: DispatchState", generation as "generation!",
            idempotency_key, request_hash as "request_hash!", requester as "requester!",
            labels as "labels!", timeout_s, result, failure, cancelled_by, cancel_reason,
            created_at as "created_at!", started_at, cancel_requested_at, finished_at,
            updated_at as "updated_at!", log_bytes as "log_bytes!", log_truncated as "log_truncated!",
            cluster_project as "cluster_project!", acked_at, requeues as "requeues!", object_id, method, cache_key, cached_from
        from updated
        "#,
        &ids,
        &generations as &[Option<i64>],
        &actors,
        &reasons as &[Option<String>],
        &cancelled_by as &[Option<String>],
        &results as &[Option<String>],
        &failures as &[Option<String>],
        &projects as &[Option<String>],
        &nodes as &[Option<Uuid>],
        &log_bytes,
        &log_limits,
        &has_logs,
        &move_ids,
        &from,
        &to,
        &log_ids,
        &seqs,
        &streams,
        &texts,
        &escaped,
    )
    .fetch_all(conn)
    .await?;
    let mut by_id: std::collections::HashMap<Uuid, DispatchRow> =
        rows.into_iter().map(|r| (r.dispatch_id, r)).collect();
    Ok(changes.iter().map(|c| by_id.remove(&c.dispatch_id)).collect())
}

/// Splits `changes` into runs, in order, in which no dispatch appears twice,
/// so each run can be one statement and a later change to a dispatch sees
/// the earlier one's effect.
fn distinct_runs(changes: &[Transition]) -> Vec<Vec<&Transition>> {
    let mut runs: Vec<Vec<&Transition>> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for change in changes {
        if runs.is_empty() || !seen.insert(change.dispatch_id) {
            // The first change, or a dispatch this run already changes: a new run.
            seen.clear();
            seen.insert(change.dispatch_id);
            runs.push(Vec::new());
        }
        runs.last_mut().expect("a run was just made").push(change);
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(id: Uuid) -> Transition {
        Transition {
            dispatch_id: id,
            project: None,
            node: None,
            moves: vec![(DispatchState::Queued, DispatchState::Running)],
            expected_generation: None,
            actor: "tester".into(),
            reason: None,
            result: None,
            failure: None,
            cancelled_by: None,
            logs: Vec::new(),
            log_limit: 0,
        }
    }

    #[test]
    fn a_group_splits_into_runs_of_distinct_dispatches_in_order() {
        let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let group: Vec<Transition> = [a, b, a, c, b, b].into_iter().map(change).collect();
        let runs: Vec<Vec<Uuid>> =
            distinct_runs(&group).iter().map(|run| run.iter().map(|c| c.dispatch_id).collect()).collect();
        assert_eq!(runs, [vec![a, b], vec![a, c, b], vec![b]]);
        assert!(distinct_runs(&[]).is_empty());
    }
}
