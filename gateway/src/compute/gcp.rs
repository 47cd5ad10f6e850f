//! The `gcp` provider: Compute Engine instances through `google-cloud-compute-v1`.
//!
//! The instance name is derived from the instance key and the insert carries
//! the key as its `requestId`, so a repeated insert after a crash either
//! returns the same operation or reports the instance as existing.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use google_cloud_compute_v1::client::Instances;
use google_cloud_compute_v1::model::{
    access_config, metadata, operation, scheduling, AcceleratorConfig, AccessConfig, AttachedDisk,
    AttachedDiskInitializeParams, Instance as GceInstance, Metadata, NetworkInterface, Operation, Scheduling,
    ServiceAccount,
};
use google_cloud_gax::exponential_backoff::ExponentialBackoffBuilder;
use google_cloud_gax::paginator::ItemPaginator;
use google_cloud_gax::retry_policy::NeverRetry;
use google_cloud_lro::Poller;
use uuid::Uuid;

use super::bootstrap::MetadataService;
use super::{Instance, InstanceRequest, Provider, ProviderError, TAG_CLUSTER, TAG_INSTANCE, TAG_MANAGED};
use crate::config::GcpSettings;

/// Compute Engine in one project.
pub struct GcpProvider {
    settings: GcpSettings,
    client: Instances,
}

impl GcpProvider {
    /// Builds the client: Application Default Credentials unless `anonymous`
    /// (a local test endpoint), no automatic retries (the reconciler retries),
    /// and zone operations polled every `operation_poll_s`.
    pub async fn new(settings: GcpSettings) -> anyhow::Result<GcpProvider> {
        let poll = Duration::from_secs_f64(settings.operation_poll_s.max(0.05));
        let backoff = ExponentialBackoffBuilder::new()
            .with_initial_delay(poll)
            .with_maximum_delay(poll * 4)
            .with_scaling(2.0)
            .build()?;
        let mut builder = Instances::builder().with_retry_policy(NeverRetry).with_polling_backoff_policy(backoff);
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if settings.anonymous {
            builder = builder.with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build());
        }
        let client = builder.build().await?;
        Ok(GcpProvider { settings, client })
    }

    fn instance_body(&self, request: &InstanceRequest, zone: &str) -> Result<GceInstance, ProviderError> {
        let spec = &request.spec;
        let machine_type = spec.instance_type.clone().unwrap_or_else(|| self.settings.default_machine_type.clone());
        let image = spec.image.clone().unwrap_or_else(|| self.settings.default_image.clone());
        let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
        labels.insert(TAG_MANAGED.into(), "true".into());
        labels.insert(TAG_CLUSTER.into(), request.cluster_id.to_string());
        labels.insert(TAG_INSTANCE.into(), request.instance_key.clone());
        let startup = request.bootstrap.script(MetadataService::Gcp);
        let mut body = GceInstance::new()
            .set_name(instance_name(&request.instance_key))
            .set_machine_type(format!("zones/{zone}/machineTypes/{machine_type}"))
            .set_labels(labels)
            .set_disks([AttachedDisk::new()
                .set_boot(true)
                .set_auto_delete(true)
                .set_initialize_params(AttachedDiskInitializeParams::new().set_source_image(image))])
            .set_network_interfaces([NetworkInterface::new()
                .set_network(self.settings.network.clone().unwrap_or_else(|| "global/networks/default".into()))
                .set_access_configs([AccessConfig::new()
                    .set_name("External NAT")
                    .set_type(access_config::Type::OneToOneNat)])])
            .set_metadata(
                Metadata::new().set_items([metadata::Items::new().set_key("startup-script").set_value(startup)]),
            );
        if spec.gpus > 0 {
            let accelerator = spec.gpu_type.clone().ok_or_else(|| {
                ProviderError::Rejected("spec.gpus needs spec.gpu_type (e.g. nvidia-tesla-t4) on gcp".into())
            })?;
            body = body
                .set_guest_accelerators([AcceleratorConfig::new()
                    .set_accelerator_count(spec.gpus as i32)
                    .set_accelerator_type(format!("zones/{zone}/acceleratorTypes/{accelerator}"))])
                .set_scheduling(Scheduling::new().set_on_host_maintenance(scheduling::OnHostMaintenance::Terminate));
        }
        if let Some(email) = &self.settings.service_account {
            body = body.set_service_accounts([ServiceAccount::new()
                .set_email(email)
                .set_scopes(["https://www.googleapis.com/auth/cloud-platform"])]);
        }
        Ok(body)
    }
}

/// GCE names must start with a letter; the key is a UUID.
fn instance_name(instance_key: &str) -> String {
    format!("rh-{instance_key}")
}

#[async_trait]
impl Provider for GcpProvider {
    async fn create(&self, request: &InstanceRequest) -> Result<String, ProviderError> {
        let zone = self.location(&request.spec);
        let body = self.instance_body(request, &zone)?;
        let name = instance_name(&request.instance_key);
        let done = self
            .client
            .insert()
            .set_project(&self.settings.project)
            .set_zone(&zone)
            .set_request_id(&request.instance_key)
            .set_body(body)
            .poller()
            .until_done()
            .await;
        match done {
            Ok(op) => operation_result(op).map(|_| name),
            // Created by an earlier attempt whose answer we never saw.
            Err(err) if err.http_status_code() == Some(409) => Ok(name),
            Err(err) => Err(classify(err)),
        }
    }

    async fn find(&self, request: &InstanceRequest) -> Result<Option<Instance>, ProviderError> {
        let zone = self.location(&request.spec);
        let name = instance_name(&request.instance_key);
        match self.client.get().set_project(&self.settings.project).set_zone(&zone).set_instance(&name).send().await {
            Ok(instance) => Ok(Some(to_instance(instance, &zone))),
            Err(err) if err.http_status_code() == Some(404) => Ok(None),
            Err(err) => Err(classify(err)),
        }
    }

    async fn terminate(&self, provider_id: &str, location: &str) -> Result<(), ProviderError> {
        let done = self
            .client
            .delete()
            .set_project(&self.settings.project)
            .set_zone(location)
            .set_instance(provider_id)
            .poller()
            .until_done()
            .await;
        match done {
            Ok(op) => operation_result(op),
            Err(err) if err.http_status_code() == Some(404) => Ok(()),
            Err(err) => Err(classify(err)),
        }
    }

    async fn list_managed(&self, locations: &[String]) -> Result<Vec<Instance>, ProviderError> {
        let mut found = Vec::new();
        for zone in locations {
            let mut items = self
                .client
                .list()
                .set_project(&self.settings.project)
                .set_zone(zone)
                .set_filter(format!("labels.{TAG_MANAGED}=true"))
                .by_item();
            while let Some(item) = items.next().await {
                let instance = item.map_err(classify)?;
                if instance.labels.get(TAG_MANAGED).map(String::as_str) == Some("true") {
                    found.push(to_instance(instance, zone));
                }
            }
        }
        Ok(found)
    }

    fn location(&self, spec: &wire::ClusterSpec) -> String {
        spec.zone.clone().or_else(|| self.settings.zone.clone()).unwrap_or_default()
    }
}

fn to_instance(instance: GceInstance, zone: &str) -> Instance {
    Instance {
        provider_id: instance.name.clone().unwrap_or_default(),
        cluster_id: instance.labels.get(TAG_CLUSTER).and_then(|v| v.parse::<Uuid>().ok()),
        instance_key: instance.labels.get(TAG_INSTANCE).cloned(),
        location: zone.to_owned(),
    }
}

/// A finished zone operation's outcome: its `error` means the cloud refused.
fn operation_result(op: Operation) -> Result<(), ProviderError> {
    if let Some(error) = op.error.filter(|e| !e.errors.is_empty()) {
        let messages: Vec<String> = error
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.code.as_deref().unwrap_or("ERROR"), e.message.as_deref().unwrap_or("")))
            .collect();
        return Err(ProviderError::Rejected(format!("Compute Engine: {}", messages.join("; "))));
    }
    if op.status != Some(operation::Status::Done) {
        return Err(ProviderError::Unavailable("the zone operation did not finish".into()));
    }
    Ok(())
}

fn classify(err: google_cloud_compute_v1::Error) -> ProviderError {
    let message = err.status().map(|s| s.message.clone()).unwrap_or_else(|| err.to_string());
    match err.http_status_code() {
        Some(code @ (400 | 401 | 403 | 404 | 409 | 412)) => {
            ProviderError::Rejected(format!("Compute Engine {code}: {message}"))
        }
        _ if err.is_authentication() => ProviderError::Rejected(format!("no usable GCP credentials: {message}")),
        Some(code) => ProviderError::Unavailable(format!("Compute Engine {code}: {message}")),
        None => ProviderError::Unavailable(format!("Compute Engine unreachable: {message}")),
    }
}
