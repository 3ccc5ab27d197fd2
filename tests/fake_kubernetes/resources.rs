//! The resource types the fake serves: their URL names, kinds and API groups.
//!
//! Only namespaced resources exist here; an unknown plural is a 404 like on a real server.

/// One resource type of the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    Pods,
    Secrets,
    PersistentVolumeClaims,
    Events,
    Services,
    ConfigMaps,
    Leases,
}

impl Resource {
    pub const ALL: [Resource; 7] = [
        Resource::Pods,
        Resource::Secrets,
        Resource::PersistentVolumeClaims,
        Resource::Events,
        Resource::Services,
        Resource::ConfigMaps,
        Resource::Leases,
    ];

    /// The resource for a URL's group path (`""` for core) and plural name.
    pub fn find(group: &str, plural: &str) -> Option<Resource> {
        Resource::ALL
            .into_iter()
            .find(|r| r.group_version() == group && r.plural() == plural)
    }

    pub fn plural(self) -> &'static str {
        match self {
            Resource::Pods => "pods",
            Resource::Secrets => "secrets",
            Resource::PersistentVolumeClaims => "persistentvolumeclaims",
            Resource::Events => "events",
            Resource::Services => "services",
            Resource::ConfigMaps => "configmaps",
            Resource::Leases => "leases",
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            Resource::Pods => "Pod",
            Resource::Secrets => "Secret",
            Resource::PersistentVolumeClaims => "PersistentVolumeClaim",
            Resource::Events => "Event",
            Resource::Services => "Service",
            Resource::ConfigMaps => "ConfigMap",
            Resource::Leases => "Lease",
        }
    }

    /// `apiVersion` as written in objects; also the URL segment after `/api` or `/apis`.
    pub fn group_version(self) -> &'static str {
        match self {
            Resource::Leases => "coordination.k8s.io/v1",
            _ => "v1",
        }
    }

    /// Whether `status` belongs to a subresource, so writes to the object keep the old one.
    pub fn has_status(self) -> bool {
        matches!(
            self,
            Resource::Pods | Resource::PersistentVolumeClaims | Resource::Services
        )
    }

    /// Field labels a `fieldSelector` may use, beyond `metadata.name`/`metadata.namespace`.
    pub fn field_labels(self) -> &'static [&'static str] {
        match self {
            Resource::Pods => &[
                "spec.nodeName",
                "spec.restartPolicy",
                "spec.schedulerName",
                "spec.serviceAccountName",
                "status.phase",
                "status.podIP",
                "status.nominatedNodeName",
            ],
            Resource::Events => &[
                "involvedObject.kind",
                "involvedObject.namespace",
                "involvedObject.name",
                "involvedObject.uid",
                "involvedObject.apiVersion",
                "involvedObject.resourceVersion",
                "involvedObject.fieldPath",
                "reason",
                "reportingComponent",
                "source",
                "type",
            ],
            Resource::Secrets => &["type"],
            _ => &[],
        }
    }
}
