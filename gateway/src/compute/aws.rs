//! The `aws` provider: EC2 instances through `aws-sdk-ec2`.
//!
//! RunInstances carries the instance key as its `ClientToken` (EC2's own
//! idempotency) and as a tag, so a gateway that dies mid-call finds the
//! instance again instead of starting a second one.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{
    Filter, IamInstanceProfileSpecification, InstanceStateName, InstanceType, ResourceType, Tag, TagSpecification,
};
use aws_sdk_ec2::Client;
use base64::Engine;
use secrecy::ExposeSecret;
use uuid::Uuid;

use super::bootstrap::MetadataService;
use super::{Instance, InstanceRequest, Provider, ProviderError, TAG_CLUSTER, TAG_INSTANCE, TAG_MANAGED};
use crate::config::AwsSettings;

/// Error codes EC2 returns for conditions that pass on their own.
const TRANSIENT_CODES: [&str; 6] = [
    "RequestLimitExceeded",
    "InsufficientInstanceCapacity",
    "InternalError",
    "ServiceUnavailable",
    "Unavailable",
    "Throttling",
];

/// EC2 through one SDK config, with a client per region.
pub struct AwsProvider {
    settings: AwsSettings,
    sdk: SdkConfig,
    clients: Mutex<HashMap<String, Client>>,
}

impl AwsProvider {
    /// Loads the SDK config. With static keys in the settings neither the
    /// credential chain nor IMDS is consulted, so start-up never stalls offline.
    pub async fn new(settings: AwsSettings) -> AwsProvider {
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        if let Some(region) = &settings.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(url) = &settings.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let (Some(id), Some(secret)) = (&settings.access_key_id, &settings.secret_access_key) {
            loader = loader.credentials_provider(Credentials::new(
                id,
                secret.expose_secret(),
                None,
                None,
                "rh-gateway-config",
            ));
        }
        let sdk = loader.load().await;
        AwsProvider { settings, sdk, clients: Mutex::new(HashMap::new()) }
    }

    fn client(&self, region: &str) -> Client {
        let mut clients = self.clients.lock().expect("client cache lock poisoned");
        clients
            .entry(region.to_owned())
            .or_insert_with(|| {
                let config =
                    aws_sdk_ec2::config::Builder::from(&self.sdk).region(Region::new(region.to_owned())).build();
                Client::from_conf(config)
            })
            .clone()
    }

    async fn describe(&self, region: &str, filters: Vec<Filter>) -> Result<Vec<Instance>, ProviderError> {
        let live = Filter::builder()
            .name("instance-state-name")
            .set_values(Some(vec!["pending".into(), "running".into(), "stopping".into(), "stopped".into()]))
            .build();
        let mut pages = self
            .client(region)
            .describe_instances()
            .set_filters(Some(filters.into_iter().chain([live]).collect()))
            .into_paginator()
            .send();
        let mut found = Vec::new();
        while let Some(page) = pages.next().await {
            let page = page.map_err(classify)?;
            for instance in page.reservations().iter().flat_map(|r| r.instances()) {
                let state = instance.state().and_then(|s| s.name());
                if matches!(state, Some(InstanceStateName::Terminated | InstanceStateName::ShuttingDown)) {
                    continue;
                }
                let tag = |key: &str| instance.tags().iter().find(|t| t.key() == Some(key)).and_then(|t| t.value());
                found.push(Instance {
                    provider_id: instance.instance_id().unwrap_or_default().to_owned(),
                    cluster_id: tag(TAG_CLUSTER).and_then(|v| v.parse::<Uuid>().ok()),
                    instance_key: tag(TAG_INSTANCE).map(str::to_owned),
                    location: region.to_owned(),
                });
            }
        }
        Ok(found)
    }
}

#[async_trait]
impl Provider for AwsProvider {
    async fn create(&self, request: &InstanceRequest) -> Result<String, ProviderError> {
        let spec = &request.spec;
        let region = self.location(spec);
        let image =
            spec.image.clone().or_else(|| self.settings.default_image.clone()).ok_or_else(|| {
                ProviderError::Rejected("no image: set spec.image or compute.aws.default_image".into())
            })?;
        let instance_type = spec
            .instance_type
            .clone()
            .or_else(|| self.settings.default_instance_type.clone())
            .ok_or_else(|| ProviderError::Rejected("no instance type: set spec.instance_type".into()))?;
        let tag = |k: &str, v: &str| Tag::builder().key(k).value(v).build();
        let mut tags = TagSpecification::builder()
            .resource_type(ResourceType::Instance)
            .tags(tag("Name", &format!("rh-{}-{}", request.cluster_name, request.node_name)))
            .tags(tag(TAG_MANAGED, "true"))
            .tags(tag(TAG_CLUSTER, &request.cluster_id.to_string()))
            .tags(tag(TAG_INSTANCE, &request.instance_key));
        for (key, value) in &spec.labels {
            tags = tags.tags(tag(key, value));
        }
        let user_data =
            base64::engine::general_purpose::STANDARD.encode(request.bootstrap.script(MetadataService::Aws).as_bytes());
        let mut run = self
            .client(&region)
            .run_instances()
            .image_id(image)
            .instance_type(InstanceType::from(instance_type.as_str()))
            .min_count(1)
            .max_count(1)
            .client_token(&request.instance_key)
            .user_data(user_data)
            .tag_specifications(tags.build())
            .set_subnet_id(self.settings.subnet_id.clone())
            .set_key_name(self.settings.key_name.clone());
        if !self.settings.security_group_ids.is_empty() {
            run = run.set_security_group_ids(Some(self.settings.security_group_ids.clone()));
        }
        if let Some(profile) = &self.settings.instance_profile {
            run = run.iam_instance_profile(IamInstanceProfileSpecification::builder().name(profile).build());
        }
        let output = run.send().await.map_err(classify)?;
        output
            .instances()
            .first()
            .and_then(|i| i.instance_id())
            .map(str::to_owned)
            .ok_or_else(|| ProviderError::Unavailable("RunInstances returned no instance".into()))
    }

    async fn find(&self, request: &InstanceRequest) -> Result<Option<Instance>, ProviderError> {
        let by_key = Filter::builder().name(format!("tag:{TAG_INSTANCE}")).values(&request.instance_key).build();
        Ok(self.describe(&self.location(&request.spec), vec![by_key]).await?.into_iter().next())
    }

    async fn terminate(&self, provider_id: &str, location: &str) -> Result<(), ProviderError> {
        match self.client(location).terminate_instances().instance_ids(provider_id).send().await {
            Ok(_) => Ok(()),
            Err(err) if err.code() == Some("InvalidInstanceID.NotFound") => Ok(()),
            Err(err) => Err(classify(err)),
        }
    }

    async fn list_managed(&self, locations: &[String]) -> Result<Vec<Instance>, ProviderError> {
        let mut found = Vec::new();
        for region in locations {
            let managed = Filter::builder().name(format!("tag:{TAG_MANAGED}")).values("true").build();
            found.extend(self.describe(region, vec![managed]).await?);
        }
        Ok(found)
    }

    fn location(&self, spec: &wire::ClusterSpec) -> String {
        spec.region.clone().or_else(|| self.settings.region.clone()).unwrap_or_default()
    }
}

/// Sorts an SDK error into "the cluster fails with this message" and "try again later".
fn classify<E, R>(err: SdkError<E, R>) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    match &err {
        SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("Unknown");
            let message = service.err().message().unwrap_or("no message");
            if TRANSIENT_CODES.contains(&code) {
                ProviderError::Unavailable(format!("EC2 {code}: {message}"))
            } else {
                ProviderError::Rejected(format!("EC2 {code}: {message}"))
            }
        }
        _ => {
            let text = DisplayErrorContext(&err).to_string();
            if text.contains("credentials") || text.contains("Credentials") {
                ProviderError::Rejected(format!("no usable AWS credentials: {text}"))
            } else {
                ProviderError::Unavailable(format!("EC2 unreachable: {text}"))
            }
        }
    }
}
