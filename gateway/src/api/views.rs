//! Database rows to API views.

use std::collections::BTreeMap;

use crate::db::{DispatchRow, EventRow};

impl From<DispatchRow> for wire::Dispatch {
    fn from(row: DispatchRow) -> Self {
        let cancellation = row.cancelled_by.map(|by| wire::Cancellation {
            by,
            reason: row.cancel_reason,
            at: row.cancel_requested_at.unwrap_or(row.updated_at),
        });
        // A cluster another project shares is named as that project names it.
        let cluster = if row.cluster_project == row.project {
            row.cluster
        } else {
            format!("{}/{}", row.cluster_project, row.cluster)
        };
        wire::Dispatch {
            id: wire::DispatchId(row.dispatch_id),
            project: row.project,
            function: row.function_ref,
            function_name: row.function_name,
            bundle: row.bundle,
            requirements: serde_json::from_value(row.requirements).unwrap_or_default(),
            node_id: row.node_id,
            log_truncated: row.log_truncated,
            args: serde_json::from_value(row.args).unwrap_or_default(),
            kwargs: serde_json::from_value(row.kwargs).unwrap_or_default(),
            cluster,
            instance_id: row.object_id,
            method: row.method,
            cached_from: row.cached_from.map(wire::DispatchId),
            state: row.state.into(),
            queued_reason: None,
            generation: row.generation,
            idempotency_key: row.idempotency_key,
            labels: serde_json::from_value::<BTreeMap<String, String>>(row.labels).unwrap_or_default(),
            requester: row.requester,
            timeout_s: row.timeout_s.map(|t| t as u32),
            result: row.result,
            failure: row.failure.and_then(|f| serde_json::from_value(f).ok()),
            cancellation,
            created_at: row.created_at,
            started_at: row.started_at,
            finished_at: row.finished_at,
            updated_at: row.updated_at,
        }
    }
}

impl From<EventRow> for wire::DispatchEvent {
    fn from(row: EventRow) -> Self {
        wire::DispatchEvent {
            seq: row.event_id,
            dispatch_id: wire::DispatchId(row.dispatch_id),
            from_state: row.from_state.map(Into::into),
            to_state: row.to_state.into(),
            generation: row.generation,
            actor: row.actor,
            reason: row.reason,
            at: row.created_at,
        }
    }
}

impl From<crate::db::NodeRow> for wire::Node {
    /// The view a node gets of itself (its address included).
    fn from(row: crate::db::NodeRow) -> Self {
        node_view(row, true)
    }
}

/// A node as the API shows it; its address only to those allowed (admins of its project).
pub(crate) fn node_view(row: crate::db::NodeRow, with_address: bool) -> wire::Node {
    wire::Node {
        id: wire::NodeId(row.node_id),
        name: row.name,
        cluster: row.cluster,
        address: with_address.then_some(row.address),
        state: match row.state {
            crate::db::NodeState::Ready => wire::NodeState::Ready,
            crate::db::NodeState::Lost => wire::NodeState::Lost,
            crate::db::NodeState::Unreachable => wire::NodeState::Unreachable,
        },
        max_concurrent: row.max_concurrent.max(0) as u32,
        running: row.running.max(0) as u32,
        resources: serde_json::from_value(row.resources).unwrap_or_default(),
        labels: serde_json::from_value(row.labels).unwrap_or_default(),
        registered_at: row.registered_at,
        last_heartbeat_at: row.last_heartbeat_at,
        warm_workers: row.warm_workers.map(|w| w.max(0) as u32),
    }
}

impl From<crate::db::BundleRow> for wire::Bundle {
    fn from(row: crate::db::BundleRow) -> Self {
        wire::Bundle {
            sha256: row.sha256,
            size_bytes: row.size_bytes,
            unpacked_bytes: row.unpacked_bytes,
            files: row.files,
            created_at: row.created_at,
        }
    }
}

impl From<crate::db::FunctionRow> for wire::Function {
    fn from(row: crate::db::FunctionRow) -> Self {
        wire::Function {
            name: row.name,
            project: row.project,
            function: row.function_ref,
            bundle: row.bundle,
            requirements: serde_json::from_value(row.requirements).unwrap_or_default(),
            cluster: row.cluster,
            created_by: row.created_by,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// An object row (and its latest events) as `wire::Instance`.
pub fn instance_view(row: crate::db::ObjectRow, events: Vec<crate::db::ObjectEventRow>) -> wire::Instance {
    use crate::db::ObjectState;
    let cluster = if row.cluster_project == row.project {
        row.cluster
    } else {
        format!("{}/{}", row.cluster_project, row.cluster)
    };
    wire::Instance {
        id: row.object_id,
        project: row.project,
        name: row.name,
        class: row.class_ref,
        bundle: row.bundle,
        requirements: serde_json::from_value(row.requirements).unwrap_or_default(),
        args: serde_json::from_value(row.init_args).unwrap_or_default(),
        kwargs: serde_json::from_value(row.init_kwargs).unwrap_or_default(),
        cluster,
        max_concurrency: row.max_concurrency as u32,
        idle_stop_minutes: row.idle_stop_minutes,
        restart: if row.restart == "on_lost" { wire::InstanceRestart::OnLost } else { wire::InstanceRestart::Never },
        state: match row.state {
            ObjectState::Starting => wire::InstanceState::Starting,
            ObjectState::Ready => wire::InstanceState::Ready,
            ObjectState::Failed => wire::InstanceState::Failed,
            ObjectState::Lost => wire::InstanceState::Lost,
            ObjectState::Deleted => wire::InstanceState::Deleted,
        },
        state_reason: row.state_reason,
        failure: row.failure.and_then(|f| serde_json::from_value(f).ok()),
        node_id: row.node_id,
        constructor_id: row.constructor_id.map(wire::DispatchId),
        restarts: row.restarts,
        created_by: row.created_by,
        created_at: row.created_at,
        updated_at: row.updated_at,
        ready_at: row.ready_at,
        events: events
            .into_iter()
            .map(|e| wire::InstanceEvent { seq: e.event_id, kind: e.kind, message: e.message, at: e.created_at })
            .collect(),
    }
}
