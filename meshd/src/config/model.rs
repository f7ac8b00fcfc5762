//! The Kubernetes side of the config as meshd uses it: Deployments,
//! Services and Namespaces converted from their serde mirrors into domain
//! types, with typed errors.

use super::api::{self, Resource};
use super::load::{ConfigError, Located, Origin};
use crate::snapshot::{Labels, ServicePort, TargetPort};

/// Name, namespace and origin of an object.
#[derive(Debug, Clone)]
pub struct Meta {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace` (default `default`).
    pub namespace: String,
    /// File and line.
    pub origin: Origin,
}

/// A container of a Deployment's pod template.
#[derive(Debug, Clone, Hash)]
pub struct ContainerDef {
    /// Container name.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Arguments.
    pub args: Vec<String>,
    /// Environment.
    pub env: Vec<(String, String)>,
    /// Declared ports (name, number).
    pub ports: Vec<(Option<String>, u16)>,
}

/// A Deployment.
#[derive(Debug, Clone)]
pub struct DeploymentDef {
    /// Identity.
    pub meta: Meta,
    /// `spec.replicas` (default 1).
    pub replicas: u32,
    /// Pod template labels.
    pub labels: Labels,
    /// Pod template annotations.
    pub annotations: Labels,
    /// Service account (default `default`).
    pub service_account: String,
    /// Containers.
    pub containers: Vec<ContainerDef>,
}

/// A Service.
#[derive(Debug, Clone)]
pub struct ServiceDef {
    /// Identity.
    pub meta: Meta,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// Pod selector.
    pub selector: Labels,
}

fn meta(m: &api::ObjectMeta, origin: &Origin) -> Meta {
    Meta { name: m.name.clone().unwrap_or_default(), namespace: m.ns().to_string(), origin: origin.clone() }
}

fn port_u16(n: i64, origin: &Origin, field: &str) -> Result<u16, ConfigError> {
    u16::try_from(n).ok().filter(|p| *p > 0).ok_or_else(|| ConfigError {
        file: origin.file.clone(),
        line: origin.line,
        field: field.to_string(),
        message: format!("port {n} is out of range 1-65535"),
    })
}

impl DeploymentDef {
    /// Converts a Deployment resource.
    pub fn from_resource(d: &api::Object<api::DeploymentSpec>, origin: &Origin) -> Result<DeploymentDef, ConfigError> {
        let spec = &d.spec;
        let tmeta = &spec.template.metadata;
        let pod = &spec.template.spec;
        let mut containers = Vec::new();
        for (i, c) in pod.containers.iter().enumerate() {
            let mut ports = Vec::new();
            for (j, p) in c.ports.iter().enumerate() {
                let field = format!("spec.template.spec.containers[{i}].ports[{j}].containerPort");
                ports.push((p.name.clone(), port_u16(p.container_port, origin, &field)?));
            }
            containers.push(ContainerDef {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                args: c.args.clone(),
                env: c.env.iter().map(|e| (e.name.clone(), e.value.clone().unwrap_or_default())).collect(),
                ports,
            });
        }
        Ok(DeploymentDef {
            meta: meta(&d.metadata, origin),
            replicas: spec.replicas.map(|r| r.max(0) as u32).unwrap_or(1),
            labels: tmeta.labels.clone(),
            annotations: tmeta.annotations.clone(),
            service_account: pod
                .service_account_name
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".to_string()),
            containers,
        })
    }
}

impl ServiceDef {
    /// Converts a Service resource.
    pub fn from_resource(s: &api::Object<api::ServiceSpec>, origin: &Origin) -> Result<ServiceDef, ConfigError> {
        let spec = &s.spec;
        let mut ports = Vec::new();
        for (i, p) in spec.ports.iter().enumerate() {
            let port = port_u16(p.port, origin, &format!("spec.ports[{i}].port"))?;
            let target_port = match &p.target_port {
                None => TargetPort::Number(port),
                Some(api::IntOrString::Int(n)) => {
                    TargetPort::Number(port_u16(*n, origin, &format!("spec.ports[{i}].targetPort"))?)
                }
                Some(api::IntOrString::String(s)) => match s.parse::<i64>() {
                    Ok(n) => TargetPort::Number(port_u16(n, origin, &format!("spec.ports[{i}].targetPort"))?),
                    Err(_) => TargetPort::Name(s.clone()),
                },
            };
            let name = p.name.clone().unwrap_or_default();
            let tcp = crate::snapshot::is_tcp_port(&name, p.app_protocol.as_deref());
            ports.push(ServicePort { name, port, target_port, tcp });
        }
        Ok(ServiceDef { meta: meta(&s.metadata, origin), ports, selector: spec.selector.clone() })
    }
}

/// The Kubernetes objects of a config, converted.
#[derive(Debug, Clone, Default)]
pub struct Workloads {
    /// Namespaces declared in the folder, with their labels.
    pub namespaces: std::collections::BTreeMap<String, Labels>,
    /// Deployments.
    pub deployments: Vec<DeploymentDef>,
    /// Services.
    pub services: Vec<ServiceDef>,
}

impl Workloads {
    /// Converts the Kubernetes kinds among `resources`, collecting every error.
    pub fn from_resources(resources: &[Located]) -> Result<Workloads, Vec<ConfigError>> {
        let mut out = Workloads::default();
        let mut errors = Vec::new();
        for r in resources {
            match &r.resource {
                Resource::Namespace(n) => {
                    out.namespaces.insert(n.metadata.name.clone().unwrap_or_default(), n.metadata.labels.clone());
                }
                Resource::Deployment(d) => match DeploymentDef::from_resource(d, &r.origin) {
                    Ok(d) => out.deployments.push(d),
                    Err(e) => errors.push(e),
                },
                Resource::Service(s) => match ServiceDef::from_resource(s, &r.origin) {
                    Ok(s) => out.services.push(s),
                    Err(e) => errors.push(e),
                },
                _ => {}
            }
        }
        if errors.is_empty() {
            Ok(out)
        } else {
            Err(errors)
        }
    }
}
