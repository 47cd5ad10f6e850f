//! The provisioner and the orphan sweep: reconcilers that take no input.
//!
//! Desired state comes from the cluster rows, actual state from the
//! providers. Every machine is first recorded as an intent (an instance row
//! with a fresh key); only then is the provider asked, with that key as its
//! idempotency token. A gateway killed anywhere in between finds the row on
//! restart, asks the provider for the key again, and adopts what it finds.

use std::collections::{BTreeSet, HashSet};

use chrono::Utc;
use serde_json::json;

use super::dispatch::{Actor, Outcome};
use super::App;
use crate::compute::{Bootstrap, InstanceRequest, Provider, ProviderError};
use crate::db::{ClusterRow, ClusterState, InstanceRow, InstanceState};
use crate::dispatch::Event;
use crate::Result;

impl App {
    /// One pass over every live cluster: create missing machines, mark
    /// clusters ready once their nodes joined, fail those whose provider
    /// refused or whose machines never joined, stop idle ones, and terminate
    /// the machines of stopping ones. Then bring up profiles that have work waiting.
    pub async fn provision_step(&self) -> Result<serde_json::Value> {
        let mut summary = json!({});
        for listed in self.db.cluster_list(None, false).await? {
            let name = listed.key().to_string();
            // One replica at a time works on a cluster: two reconciling it at
            // once could both create its missing machines.
            let Some(_lease) = self.db.lease(&format!("cluster:{}", listed.cluster_id)).await? else {
                summary[name] = json!("busy on another replica");
                continue;
            };
            // Read again under the lease: another replica may have moved it.
            let Some(cluster) =
                self.db.cluster_by_name(&listed.key()).await?.filter(|c| c.cluster_id == listed.cluster_id)
            else {
                continue;
            };
            let outcome = match cluster.state {
                ClusterState::Provisioning | ClusterState::Ready => self.reconcile_running(cluster).await,
                ClusterState::Stopping => self.reconcile_stopping(cluster).await,
                ClusterState::Terminated | ClusterState::Failed => Ok("ended"),
            };
            let outcome = match outcome {
                Ok(what) => json!(what),
                Err(err) => {
                    tracing::warn!(cluster = %name, error = ?anyhow::Error::new(err), "cluster reconcile failed");
                    json!("error; see the gateway log")
                }
            };
            summary[name] = outcome;
        }
        let profiles: Vec<String> = self.settings.profiles.keys().cloned().collect();
        for wanted in self.db.dispatch_clusters_wanted(&profiles).await? {
            self.cluster_ensure_for_dispatch(&wanted, "gateway").await?;
        }
        Ok(summary)
    }

    async fn reconcile_running(&self, cluster: ClusterRow) -> Result<&'static str> {
        let spec: wire::ClusterSpec = serde_json::from_value(cluster.spec.clone()).unwrap_or_default();
        let provider = match cluster.provider.as_str() {
            "static" => None,
            name => match self.providers.get(name) {
                Some(provider) => Some(provider.clone()),
                None => {
                    let reason = format!("provider `{name}` is no longer configured on this gateway");
                    self.cluster_fail(&cluster, &reason).await?;
                    return Ok("failed");
                }
            },
        };
        let ready_nodes = self.db.cluster_ready_nodes(&cluster.key()).await?;
        let mut instances = self.db.instances_of(cluster.cluster_id).await?;
        if let Some(provider) = &provider {
            // A ready cluster only looks at its machines when a node is missing.
            if cluster.state == ClusterState::Provisioning
                || ready_nodes < i64::from(spec.count)
                || provider.cheap_to_watch()
            {
                self.replace_vanished(&cluster, &spec, provider.as_ref(), &instances).await?;
                instances = self.ensure_intents(&cluster, &spec).await?;
                for instance in instances.iter().filter(|i| i.state == InstanceState::Requested) {
                    let request = self.instance_request(&cluster, &spec, instance);
                    let created = match provider.find(&request).await {
                        Ok(Some(found)) => Ok(found.provider_id),
                        Ok(None) => provider.create(&request).await,
                        Err(err) => Err(err),
                    };
                    match created {
                        Ok(id) => {
                            self.db.instance_update(&instance.instance_key, InstanceState::Created, Some(&id)).await?;
                            tracing::info!(cluster = %cluster.name, node = %instance.node_name, provider_id = %id, "machine created");
                        }
                        Err(ProviderError::Rejected(message)) => {
                            self.cluster_fail(&cluster, &message).await?;
                            return Ok("failed");
                        }
                        Err(ProviderError::Unavailable(message)) => {
                            tracing::warn!(cluster = %cluster.name, %message, "provider unavailable; will retry");
                        }
                    }
                }
            }
        }
        if cluster.state == ClusterState::Provisioning {
            if ready_nodes >= i64::from(spec.count) {
                if self
                    .db
                    .cluster_transition(cluster.cluster_id, cluster.generation, ClusterState::Ready, None)
                    .await?
                    .is_some()
                {
                    tracing::info!(cluster = %cluster.name, "cluster ready");
                    self.placement.notify_one();
                }
                return Ok("ready");
            }
            let now = Utc::now();
            if let Some(late) = instances
                .iter()
                .find(|i| i.state != InstanceState::Terminated && i.joined_at.is_none() && i.join_expires_at < now)
            {
                let reason = format!(
                    "node {} did not join within {}s; check that the machine can reach {} (see the README's network requirements)",
                    late.node_name,
                    self.settings.compute.join_timeout_s,
                    self.public_url()
                );
                self.cluster_fail(&cluster, &reason).await?;
                return Ok("failed");
            }
            return Ok("provisioning");
        }
        if let (Some(minutes), Some(at)) =
            (spec.autostop_idle_minutes, self.cluster_autostop_at(&cluster, &spec).await?)
        {
            if Utc::now() >= at {
                let reason = format!("idle for {minutes} min (autostop)");
                if self
                    .db
                    .cluster_transition(cluster.cluster_id, cluster.generation, ClusterState::Stopping, Some(&reason))
                    .await?
                    .is_some()
                {
                    tracing::info!(cluster = %cluster.name, %reason, "cluster stopping");
                    self.provisioner.notify_one();
                }
                return Ok("stopping");
            }
        }
        Ok("ready")
    }

    /// Writes the missing intents so that `count` machines are open.
    async fn ensure_intents(&self, cluster: &ClusterRow, spec: &wire::ClusterSpec) -> Result<Vec<InstanceRow>> {
        let instances = self.db.instances_of(cluster.cluster_id).await?;
        let open = instances.iter().filter(|i| i.state != InstanceState::Terminated).count();
        let next = instances.iter().map(|i| i.ordinal + 1).max().unwrap_or(0);
        if open >= spec.count as usize {
            return Ok(instances);
        }
        for ordinal in next..next + (spec.count as usize - open) as i32 {
            self.db.instance_insert(&self.new_instance(cluster, ordinal)).await?;
        }
        self.db.instances_of(cluster.cluster_id).await
    }

    /// Machines the provider no longer has (terminated behind our back, a
    /// local node that died with a previous gateway) are written off; the
    /// next `ensure_intents` asks for replacements.
    async fn replace_vanished(
        &self,
        cluster: &ClusterRow,
        spec: &wire::ClusterSpec,
        provider: &dyn Provider,
        instances: &[InstanceRow],
    ) -> Result<()> {
        for instance in instances.iter().filter(|i| i.state == InstanceState::Created) {
            let request = self.instance_request(cluster, spec, instance);
            if let Ok(None) = provider.find(&request).await {
                tracing::warn!(cluster = %cluster.name, node = %instance.node_name, "machine vanished; replacing it");
                self.db.instance_update(&instance.instance_key, InstanceState::Terminated, None).await?;
                self.revoke_node_token(instance).await?;
                // Its node cannot be running anything now; the reaper fails its work at once.
                self.db.node_gone(&cluster.key(), &instance.node_name).await?;
            }
        }
        Ok(())
    }

    async fn reconcile_stopping(&self, cluster: ClusterRow) -> Result<&'static str> {
        let spec: wire::ClusterSpec = serde_json::from_value(cluster.spec.clone()).unwrap_or_default();
        let lost = self.db.cluster_nodes_gone(&cluster.key()).await?;
        if !lost.is_empty() {
            // Work still on those nodes fails with node_lost through the reaper.
            tracing::info!(cluster = %cluster.name, nodes = lost.len(), "nodes of a stopping cluster marked lost");
        }
        let provider = self.providers.get(&cluster.provider).cloned();
        let mut remaining = 0;
        for instance in self.db.instances_of(cluster.cluster_id).await? {
            if instance.state == InstanceState::Terminated {
                continue;
            }
            let done = match &provider {
                None => Ok(()),
                Some(provider) => {
                    let request = self.instance_request(&cluster, &spec, &instance);
                    let location = provider.location(&spec);
                    match (&instance.provider_id, provider.find(&request).await) {
                        (_, Ok(Some(found))) => provider.terminate(&found.provider_id, &location).await,
                        (_, Ok(None)) => Ok(()),
                        (Some(id), Err(_)) => provider.terminate(id, &location).await,
                        (None, Err(err)) => Err(err),
                    }
                }
            };
            match done {
                Ok(()) => {
                    self.db.instance_update(&instance.instance_key, InstanceState::Terminated, None).await?;
                    self.revoke_node_token(&instance).await?;
                    tracing::info!(cluster = %cluster.name, node = %instance.node_name, provider_id = ?instance.provider_id, "machine terminated");
                }
                Err(err) => {
                    remaining += 1;
                    tracing::warn!(cluster = %cluster.name, node = %instance.node_name, error = %err, "terminate failed; will retry");
                }
            }
        }
        if remaining > 0 {
            return Ok("stopping");
        }
        if !self.settings.profiles.contains_key(&cluster.name) {
            let reason = cluster.state_reason.clone().unwrap_or_else(|| "stopped".into());
            self.fail_queued(
                &cluster.key(),
                "cluster_terminated",
                &format!("cluster `{}` was stopped: {reason}", cluster.name),
            )
            .await?;
        }
        if self
            .db
            .cluster_transition(cluster.cluster_id, cluster.generation, ClusterState::Terminated, None)
            .await?
            .is_some()
        {
            tracing::info!(cluster = %cluster.name, "cluster terminated");
        }
        Ok("terminated")
    }

    /// Fails a cluster with the provider's message, fails the dispatches
    /// waiting for it, and leaves its machines to the orphan sweep.
    async fn cluster_fail(&self, cluster: &ClusterRow, reason: &str) -> Result<()> {
        if self
            .db
            .cluster_transition(cluster.cluster_id, cluster.generation, ClusterState::Failed, Some(reason))
            .await?
            .is_none()
        {
            return Ok(());
        }
        tracing::warn!(cluster = %cluster.name, %reason, "cluster failed");
        self.db.cluster_nodes_gone(&cluster.key()).await?;
        self.fail_queued(&cluster.key(), "cluster_failed", &format!("cluster `{}` failed: {reason}", cluster.name))
            .await?;
        self.orphan_sweep.notify_one();
        Ok(())
    }

    async fn fail_queued(&self, cluster: &crate::db::ClusterKey, code: &str, message: &str) -> Result<()> {
        loop {
            let rows = self.db.dispatch_queued_in_cluster(cluster, 256).await?;
            if rows.is_empty() {
                return Ok(());
            }
            for row in rows {
                let outcome = Outcome::failed(code, message);
                // A concurrent cancel wins; either way it leaves `queued`.
                let _ = self.dispatch_apply(Actor::Gateway, row.dispatch_id, Event::Fail, outcome).await;
            }
        }
    }

    async fn revoke_node_token(&self, instance: &InstanceRow) -> Result<()> {
        if let Some(jti) = &instance.node_token_jti {
            self.db.token_revoke(jti, Some("its machine was terminated")).await?;
        }
        Ok(())
    }

    fn instance_request(
        &self,
        cluster: &ClusterRow,
        spec: &wire::ClusterSpec,
        instance: &InstanceRow,
    ) -> InstanceRequest {
        let gateway_url = self.public_url();
        InstanceRequest {
            cluster_id: cluster.cluster_id,
            cluster_name: cluster.name.clone(),
            instance_key: instance.instance_key.clone(),
            node_name: instance.node_name.clone(),
            spec: spec.clone(),
            bootstrap: Bootstrap {
                node_binary_url: self
                    .settings
                    .compute
                    .node_binary_url
                    .clone()
                    .unwrap_or_else(|| format!("{gateway_url}/v1/node-binary")),
                gateway_url,
                join_token: instance.join_token.clone(),
                commands: spec.bootstrap.clone(),
            },
        }
    }

    /// Terminates every machine carrying our tags that no live cluster owns.
    /// The provider is listed *before* the owned keys are read: an intent is
    /// committed before its machine is asked for, so a machine seen here whose
    /// key is not owned afterwards really is an orphan.
    pub async fn orphan_sweep_step(&self) -> Result<serde_json::Value> {
        let Some(_lease) = self.db.lease("orphan_sweep").await? else {
            return Ok(json!("busy on another replica"));
        };
        let specs = self.db.cluster_specs_in_use().await?;
        let mut terminated = Vec::new();
        for (name, provider) in self.providers.iter() {
            let locations: BTreeSet<String> = specs
                .iter()
                .filter(|(p, _)| p == name)
                .filter_map(|(_, spec)| serde_json::from_value::<wire::ClusterSpec>(spec.clone()).ok())
                .map(|spec| provider.location(&spec))
                .chain([provider.location(&wire::ClusterSpec::default())])
                .filter(|l| !l.is_empty() || name == "local")
                .collect();
            let locations: Vec<String> = locations.into_iter().collect();
            let found = match provider.list_managed(&locations).await {
                Ok(found) => found,
                Err(err) => {
                    tracing::warn!(provider = name, error = %err, "cannot list machines for the orphan sweep");
                    continue;
                }
            };
            if found.is_empty() {
                continue;
            }
            let owned: HashSet<String> = self.db.instance_keys_owned().await?.into_iter().collect();
            for machine in found {
                if machine.instance_key.as_ref().is_some_and(|k| owned.contains(k)) {
                    continue;
                }
                tracing::warn!(provider = name, provider_id = %machine.provider_id, cluster_id = ?machine.cluster_id, "terminating an orphaned machine");
                match provider.terminate(&machine.provider_id, &machine.location).await {
                    Ok(()) => terminated.push(machine.provider_id),
                    Err(err) => tracing::warn!(provider = name, error = %err, "orphan terminate failed; will retry"),
                }
            }
        }
        Ok(json!({ "terminated": terminated }))
    }
}
