//! The agent's configuration: HCL, every field optional, an embedded default.
//!
//! ```hcl
//! data_dir      = "/var/lib/tend"
//! run_dir       = "/run/tend"
//! spawn_bin     = "/usr/lib/tend/tend-spawn"
//! log_level     = "info"
//! log_format    = "json"            # or "text"
//! cgroup_parent = "tend"
//! cpu_total_compute = 8000          # MHz of all cores; default: cores x cpuinfo MHz
//! env_allowlist = ["PATH", "LANG"]  # agent variables a task may ask for with ${NAME}
//! gc_retention  = "4h"              # dead allocations kept this long, then removed
//! gc_interval   = "1m"              # how often the agent looks for them
//! ports {
//!   min = 20000
//!   max = 32000
//! }
//! chroot_env = {               # an attribute: HCL block bodies take no quoted keys
//!   "/bin" = "/bin"
//!   "/usr" = "/usr"
//! }
//! plugin "raw_exec" {
//!   enabled = true
//! }
//! plugin "exec" {
//!   allow_root = false                 # user = "root" in exec tasks
//! }
//! plugin "oci" {
//!   allow_root       = false           # process.user uid 0, user = "root"
//!   allow_host_binds = false           # a bundle's read-write binds
//! }
//! plugin "docker" {
//!   endpoint           = "/var/run/docker.sock"
//!   allow_privileged   = false
//!   allow_host_network = false
//!   allow_host_binds   = false         # volumes outside the alloc dir
//!   allow_devices      = false
//!   allowed_caps       = ["NET_ADMIN"] # what cap_add may ask for
//! }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The agent's log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line of text per event.
    #[default]
    Text,
    /// One JSON object per event.
    Json,
}

/// `ports { min, max }`: the dynamic port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortRange {
    /// Lowest dynamic port.
    pub min: u16,
    /// Highest dynamic port.
    pub max: u16,
}

impl Default for PortRange {
    fn default() -> Self {
        PortRange {
            min: 20000,
            max: 32000,
        }
    }
}

/// `plugin "NAME" { ... }`: options of one driver.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// Whether tasks may use the driver (default true).
    pub enabled: Option<bool>,
    /// docker: the engine's socket (default /var/run/docker.sock).
    pub endpoint: Option<PathBuf>,
    /// docker: whether a task may ask for a privileged container.
    #[serde(default)]
    pub allow_privileged: bool,
    /// docker: whether a task may ask for network_mode = "host".
    #[serde(default)]
    pub allow_host_network: bool,
    /// docker: capabilities a task may add (`NET_ADMIN` or `CAP_NET_ADMIN`).
    /// Nomad's spelling `allow_caps` is read too.
    #[serde(default, alias = "allow_caps")]
    pub allowed_caps: Vec<String>,
    /// docker: whether a task may ask for host devices.
    #[serde(default)]
    pub allow_devices: bool,
    /// docker: whether a task may bind host paths outside its alloc dir;
    /// oci: whether a bundle may bind host paths read-write.
    #[serde(default)]
    pub allow_host_binds: bool,
    /// exec: whether a task may run as root (`user = "root"` or uid 0).
    #[serde(default)]
    pub allow_root: bool,
}

/// The agent's configuration file, as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Data dir.
    pub data_dir: Option<PathBuf>,
    /// Run dir.
    pub run_dir: Option<PathBuf>,
    /// The tend-spawn binary.
    pub spawn_bin: Option<PathBuf>,
    /// error, warn, info, debug, trace.
    pub log_level: Option<String>,
    /// text or json.
    pub log_format: Option<LogFormat>,
    /// cgroup parent of every task, relative to each hierarchy's root.
    pub cgroup_parent: Option<String>,
    /// The host's CPU in MHz, all cores together, which `cpu_hard_limit`
    /// divides; None reads it from /proc/cpuinfo.
    pub cpu_total_compute: Option<u64>,
    /// Dynamic port range.
    pub ports: Option<PortRange>,
    /// Host path -> task path, bound read-only into exec tasks.
    pub chroot_env: Option<BTreeMap<String, String>>,
    /// Agent environment variables a task may ask for with `${NAME}`.
    #[serde(default)]
    pub env_allowlist: Vec<String>,
    /// Driver options by driver name.
    #[serde(default)]
    pub plugin: BTreeMap<String, PluginConfig>,
    /// How long a dead allocation (every task dead) is kept, records, logs
    /// and exit files, before the agent removes it (default "4h", as Nomad's
    /// job_gc_threshold); "0s" keeps nothing dead past the next collection.
    pub gc_retention: Option<String>,
    /// How often the agent looks for dead allocations to remove (default "1m").
    pub gc_interval: Option<String>,
}

/// The defaults of `gc_retention` and `gc_interval`.
pub const GC_RETENTION: std::time::Duration = std::time::Duration::from_secs(4 * 3600);
/// See [`GC_RETENTION`].
pub const GC_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

impl AgentConfig {
    /// `gc_retention` and `gc_interval`, or their defaults (checked at load).
    pub fn gc(&self) -> (std::time::Duration, std::time::Duration) {
        let d = |v: &Option<String>, dflt| {
            v.as_deref()
                .and_then(crate::jobspec::duration::parse_duration)
                .unwrap_or(dflt)
        };
        (
            d(&self.gc_retention, GC_RETENTION),
            d(&self.gc_interval, GC_INTERVAL),
        )
    }
}

/// Why the configuration file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// It could not be read.
    #[error("agent config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// It is not valid.
    #[error("agent config {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Its cgroup_parent would leave the hierarchy's root.
    #[error("agent config {path}: cgroup_parent: {source}")]
    CgroupParent {
        /// The file.
        path: PathBuf,
        /// Why.
        source: CgroupParentError,
    },
}

/// The drivers the agent knows.
pub const DRIVERS: [&str; 4] = ["raw_exec", "exec", "docker", "oci"];

impl AgentConfig {
    /// Parse the text of a configuration file; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<AgentConfig, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let cfg: AgentConfig = hcl::from_str(text).map_err(|e| invalid(e.to_string()))?;
        for name in cfg.plugin.keys() {
            if !DRIVERS.contains(&name.as_str()) {
                return Err(invalid(format!(
                    "plugin {name:?}: unknown driver (expected one of: {})",
                    DRIVERS.join(", ")
                )));
            }
        }
        if let Some(p) = cfg.ports {
            if p.min == 0 || p.min > p.max {
                return Err(invalid(format!(
                    "ports: min {} and max {} do not make a range",
                    p.min, p.max
                )));
            }
        }
        if let Some(level) = &cfg.log_level {
            if !["error", "warn", "info", "debug", "trace"].contains(&level.as_str()) {
                return Err(invalid(format!(
                    "log_level: {level:?} (expected error, warn, info, debug or trace)"
                )));
            }
        }
        if let Some(parent) = &cfg.cgroup_parent {
            check_cgroup_parent(parent).map_err(|source| ConfigError::CgroupParent {
                path: path.to_path_buf(),
                source,
            })?;
        }
        for (name, v) in [
            ("gc_retention", &cfg.gc_retention),
            ("gc_interval", &cfg.gc_interval),
        ] {
            if let Some(text) = v {
                match crate::jobspec::duration::parse_duration(text) {
                    None => {
                        return Err(invalid(format!(
                            "{name}: {text:?} is not a duration (e.g. \"4h\", \"30m\")"
                        )))
                    }
                    Some(d) if name == "gc_interval" && d.is_zero() => {
                        return Err(invalid("gc_interval: must be more than 0s".into()))
                    }
                    Some(_) => {}
                }
            }
        }
        if cfg.cpu_total_compute == Some(0) {
            return Err(invalid(
                "cpu_total_compute: must be more than 0 (MHz)".into(),
            ));
        }
        if let Some(env) = &cfg.chroot_env {
            for (src, dst) in env {
                if !src.starts_with('/') || !dst.starts_with('/') {
                    return Err(invalid(format!(
                        "chroot_env: {src:?} = {dst:?}: both sides must be absolute paths"
                    )));
                }
            }
        }
        Ok(cfg)
    }

    /// Read and parse a configuration file.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        AgentConfig::parse(&text, path)
    }

    /// Whether exec tasks may run as root (`plugin "exec" { allow_root = true }`).
    pub fn exec_allows_root(&self) -> bool {
        self.plugin.get("exec").is_some_and(|p| p.allow_root)
    }

    /// Whether tasks of `driver` may run as root (`plugin "exec" { allow_root
    /// = true }`, `plugin "oci" { allow_root = true }`).
    pub fn allows_root(&self, driver: &str) -> bool {
        self.plugin.get(driver).is_some_and(|p| p.allow_root)
    }

    /// Whether an oci task's bundle may bind host paths read-write
    /// (`plugin "oci" { allow_host_binds = true }`).
    pub fn oci_allows_host_binds(&self) -> bool {
        self.plugin.get("oci").is_some_and(|p| p.allow_host_binds)
    }

    /// Whether tasks may use `driver`.
    pub fn driver_enabled(&self, driver: &str) -> bool {
        self.plugin
            .get(driver)
            .and_then(|p| p.enabled)
            .unwrap_or(true)
    }
}

/// A cgroup parent that would leave the hierarchy's root.
#[derive(Debug, thiserror::Error)]
#[error("{parent:?} must be a relative path without '..'")]
pub struct CgroupParentError {
    /// The parent given.
    pub parent: String,
}

/// A cgroup parent is a relative path of plain names: never absolute, never
/// `..`, so that it stays under the hierarchy's root.
pub fn check_cgroup_parent(parent: &str) -> Result<String, CgroupParentError> {
    let p = Path::new(parent);
    if parent.is_empty()
        || p.is_absolute()
        || p.components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(CgroupParentError {
            parent: parent.to_string(),
        });
    }
    Ok(parent.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_shape() {
        let text = r#"
data_dir   = "/tmp/d"
log_format = "json"
env_allowlist = ["PATH"]
ports {
  min = 30000
  max = 30100
}
chroot_env = {
  "/bin" = "/bin"
}
plugin "raw_exec" {
  enabled = false
}
plugin "docker" {
  allow_privileged = true
  allowed_caps     = ["NET_ADMIN", "cap_sys_time"]
}
"#;
        let c = AgentConfig::parse(text, Path::new("a.hcl")).unwrap();
        assert_eq!(c.data_dir.as_deref(), Some(Path::new("/tmp/d")));
        assert_eq!(c.log_format, Some(LogFormat::Json));
        assert_eq!(
            c.ports,
            Some(PortRange {
                min: 30000,
                max: 30100
            })
        );
        assert!(!c.driver_enabled("raw_exec"));
        assert!(c.driver_enabled("exec"));
        assert!(c.plugin["docker"].allow_privileged);
        assert_eq!(
            c.plugin["docker"].allowed_caps,
            ["NET_ADMIN", "cap_sys_time"]
        );
        let nomad = "plugin \"docker\" {\n  allow_caps = [\"NET_ADMIN\"]\n}\n";
        let c = AgentConfig::parse(nomad, Path::new("a.hcl")).unwrap();
        assert_eq!(c.plugin["docker"].allowed_caps, ["NET_ADMIN"]);
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        let e = AgentConfig::parse("colour = \"red\"\n", Path::new("a.hcl")).unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
        let e = AgentConfig::parse("plugin \"lxc\" {\n}\n", Path::new("a.hcl")).unwrap_err();
        assert!(e.to_string().contains("unknown driver"), "{e}");
        let e =
            AgentConfig::parse("ports {\n min = 9\n max = 1\n}\n", Path::new("a.hcl")).unwrap_err();
        assert!(e.to_string().contains("range"), "{e}");
        let e = AgentConfig::parse("cgroup_parent = \"../x\"\n", Path::new("a.hcl")).unwrap_err();
        assert!(e.to_string().contains("cgroup_parent"), "{e}");
    }

    #[test]
    fn a_cgroup_parent_outside_the_root_is_named_with_the_file() {
        let e = AgentConfig::parse("cgroup_parent = \"/x\"\n", Path::new("a.hcl")).unwrap_err();
        assert!(matches!(&e, ConfigError::CgroupParent { source, .. } if source.parent == "/x"));
        assert_eq!(
            e.to_string(),
            "agent config a.hcl: cgroup_parent: \"/x\" must be a relative path without '..'"
        );
        assert!(check_cgroup_parent("tend/jobs").is_ok());
    }

    #[test]
    fn the_example_parses() {
        let text = include_str!("../../../examples/agent.hcl");
        let c = AgentConfig::parse(text, Path::new("examples/agent.hcl")).unwrap();
        let docker = &c.plugin["docker"];
        assert!(!docker.allow_host_binds && docker.allowed_caps.is_empty());
    }

    #[test]
    fn the_empty_file_is_the_default() {
        assert_eq!(
            AgentConfig::parse("", Path::new("a.hcl")).unwrap(),
            AgentConfig::default()
        );
    }
}
