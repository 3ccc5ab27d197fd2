//! What the Kubernetes backend is told by the operator: where users' pods run and how big
//! they are. Built from the CLI by the gateway; nothing here knows clap.

use std::path::PathBuf;
use std::time::Duration;

/// A resource's request and, optionally, its limit (`250m:2`, `768Mi:2Gi`, `1Gi`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Amount {
    pub request: String,
    pub limit: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{value:?} is not a Kubernetes quantity (like 500m, 2, 768Mi or 10Gi)")]
pub struct QuantityError {
    value: String,
}

impl Amount {
    /// `REQUEST[:LIMIT]`, each a Kubernetes quantity.
    pub fn parse(text: &str) -> Result<Self, QuantityError> {
        let (request, limit) = match text.split_once(':') {
            Some((request, limit)) => (request, Some(limit)),
            None => (text, None),
        };
        Ok(Self {
            request: quantity(request)?,
            limit: limit.map(quantity).transpose()?,
        })
    }
}

/// A Kubernetes quantity: a decimal number and one of the suffixes the API server accepts.
/// Checked here so that a typo is an error at start-up, not a refused pod at a user's start.
pub fn quantity(text: &str) -> Result<String, QuantityError> {
    const SUFFIXES: &[&str] = &[
        "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    let error = || QuantityError {
        value: text.to_owned(),
    };
    let digits_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(digits_end);
    let valid_number = !number.is_empty()
        && number.matches('.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    if valid_number && SUFFIXES.contains(&suffix) {
        Ok(text.to_owned())
    } else {
        Err(error())
    }
}

/// Where and how users' pods run.
#[derive(Clone, Debug)]
pub struct Settings {
    pub namespace: String,
    /// The image of users' pods: the gateway's own (it holds OpenCode and the probe).
    pub image: String,
    /// The service account of users' pods; its token is never mounted.
    pub service_account: String,
    pub storage_class: Option<String>,
    pub home_size: String,
    pub cpu: Amount,
    pub memory: Amount,
    /// OpenCode in the image, and the arguments after `serve`'s own.
    pub opencode: PathBuf,
    pub opencode_args: Vec<String>,
    /// What OpenCode's garbage collector plans for (`--opencode-gc-ram`), if anything.
    pub gc_ram: Option<u64>,
    /// The gateway's executable in the image: the readiness probe and the home's layout.
    pub chamberlain: PathBuf,
    /// The uid and gid users' pods run as (never root).
    pub uid: i64,
    /// The port OpenCode listens on in a pod.
    pub port: u16,
    /// How long a pod gets between SIGTERM and SIGKILL when it is deleted.
    pub stop_grace: Duration,
    /// Bound on each API request of a start, and on a health check.
    pub request_timeout: Duration,
    /// Most users' pods in the cluster at once (`--max-instances`, every replica's).
    pub max_pods: usize,
    /// A pod no replica has seen used for this long is deleted by the sweep (twice the idle
    /// timeout), and the sweep runs this often (the idle timeout, at most a minute).
    pub sweep_after: Duration,
    pub sweep_every: Duration,
    /// A start's secret without its pod for this long is deleted (twice the start timeout).
    pub orphan_after: Duration,
    /// Use of a pod is told to the other replicas when it is this much newer than what this
    /// replica told them last (at most once per health check): a bound on the API server's
    /// load, well under the idle timeout.
    pub share_step: Duration,
}

impl Settings {
    /// `stop_grace` as a pod deletion's grace period.
    pub fn grace_seconds(&self) -> u32 {
        u32::try_from(self.stop_grace.as_secs()).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_a_request_and_an_optional_limit() {
        assert_eq!(
            Amount::parse("250m:2").unwrap(),
            Amount {
                request: "250m".into(),
                limit: Some("2".into())
            }
        );
        assert_eq!(Amount::parse("1Gi").unwrap().limit, None);
        for bad in ["", "1GB", "m", "1..5", "-1", "1:", "1 Gi", "1:2:3"] {
            assert!(Amount::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(quantity("0.5").is_ok() && quantity("10Gi").is_ok());
    }
}
