//! The boot script a new machine runs (EC2 user-data, GCE startup-script):
//! fetch `rh-node`, learn the instance id, and join with a single-use token.

/// Where the machine can learn its own instance id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataService {
    /// EC2's IMDSv2.
    Aws,
    /// GCE's metadata server.
    Gcp,
    /// No metadata service; the node joins without an instance id.
    None,
}

/// Everything a machine needs to become a node.
#[derive(Debug, Clone)]
pub struct Bootstrap {
    /// How the machine reaches the gateway.
    pub gateway_url: String,
    /// Where `rh-node` is downloaded from.
    pub node_binary_url: String,
    /// Single-use, short-lived; traded for a node token at `POST /v1/nodes/join`.
    pub join_token: String,
    /// Extra commands from the cluster spec, run before the node starts.
    pub commands: Vec<String>,
}

impl Bootstrap {
    /// The bash script for a machine on `metadata`'s cloud. The node runs
    /// under systemd, so it comes back after a reboot with the token it saved.
    pub fn script(&self, metadata: MetadataService) -> String {
        let instance_id = match metadata {
            MetadataService::Aws => concat!(
                "imds_token=$(curl -fsS -X PUT http://169.254.169.254/latest/api/token ",
                "-H 'X-aws-ec2-metadata-token-ttl-seconds: 300')\n",
                "instance_id=$(curl -fsS -H \"X-aws-ec2-metadata-token: $imds_token\" ",
                "http://169.254.169.254/latest/meta-data/instance-id)\n"
            ),
            MetadataService::Gcp => concat!(
                "instance_id=$(curl -fsS -H 'Metadata-Flavor: Google' ",
                "http://metadata.google.internal/computeMetadata/v1/instance/name)\n"
            ),
            MetadataService::None => "instance_id=\n",
        };
        let mut script = String::from(
            "#!/bin/bash\n# Runhouse Gateway node bootstrap.\nset -euo pipefail\ninstall -d -m 0700 /opt/runhouse\n",
        );
        for command in &self.commands {
            script.push_str(command);
            script.push('\n');
        }
        script.push_str(&format!(
            "curl -fsSL --retry 20 --retry-connrefused --retry-delay 3 -H {auth} {url} -o /opt/runhouse/rh-node\n",
            auth = quote(&format!("Authorization: Bearer {}", self.join_token)),
            url = quote(&self.node_binary_url),
        ));
        script.push_str("chmod 0755 /opt/runhouse/rh-node\n");
        script.push_str(instance_id);
        script.push_str(&format!(
            "cat > /etc/systemd/system/rh-node.service <<UNIT\n[Unit]\nDescription=Runhouse Gateway node\n\
             After=network-online.target\n[Service]\nExecStart=/opt/runhouse/rh-node run --gateway {gateway} \
             --join {join} --instance-id $instance_id --listen 0.0.0.0:7070 --work-dir /opt/runhouse/work\n\
             Restart=always\nRestartSec=2\n[Install]\nWantedBy=multi-user.target\nUNIT\n",
            gateway = quote(&self.gateway_url),
            join = quote(&self.join_token),
        ));
        script.push_str("systemctl daemon-reload\nsystemctl enable --now rh-node.service\n");
        script
    }
}

/// Single-quotes `value` for bash.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// Pulls the join token back out of a boot script (for tests and operators
/// debugging a machine that did not join).
pub fn join_token_of(script: &str) -> Option<&str> {
    let start = script.find("--join '")? + "--join '".len();
    let end = script[start..].find('\'')?;
    Some(&script[start..start + end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bootstrap() -> Bootstrap {
        Bootstrap {
            gateway_url: "http://10.0.0.5:8080".into(),
            node_binary_url: "http://10.0.0.5:8080/v1/node-binary".into(),
            join_token: "rhj_abc".into(),
            commands: vec!["pip install 'torch==2.5.1'".into()],
        }
    }

    #[test]
    fn the_script_downloads_the_node_and_joins_with_the_token_and_instance_id() {
        let script = bootstrap().script(MetadataService::Aws);
        assert!(script.starts_with("#!/bin/bash\n"));
        assert!(script.contains("'http://10.0.0.5:8080/v1/node-binary' -o /opt/runhouse/rh-node"));
        assert!(script.contains("--gateway 'http://10.0.0.5:8080' --join 'rhj_abc' --instance-id $instance_id"));
        assert!(script.contains("latest/meta-data/instance-id"));
        assert_eq!(join_token_of(&script), Some("rhj_abc"));
    }

    #[test]
    fn extra_commands_run_before_the_node_is_fetched() {
        let script = bootstrap().script(MetadataService::Gcp);
        let extra = script.find("pip install 'torch==2.5.1'").unwrap();
        assert!(extra < script.find("curl -fsSL").unwrap());
        assert!(script.contains("computeMetadata/v1/instance/name"));
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
