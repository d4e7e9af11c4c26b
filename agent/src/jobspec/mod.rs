//! Job files: HCL shaped like Nomad's jobspec (or the same document as JSON),
//! parsed and validated into a [`model::Job`], with every error located.

pub mod model;

pub use model::*;

/// Parse a job file (placeholder until the located parser lands).
pub fn parse_file(path: &std::path::Path) -> Result<Job, String> {
    #[derive(serde::Deserialize)]
    struct F {
        job: std::collections::BTreeMap<String, J>,
    }
    #[derive(serde::Deserialize)]
    struct J {
        group: std::collections::BTreeMap<String, G>,
    }
    #[derive(serde::Deserialize)]
    struct G {
        task: std::collections::BTreeMap<String, T>,
    }
    #[derive(serde::Deserialize)]
    struct T {
        config: C,
        #[serde(default)]
        env: std::collections::BTreeMap<String, String>,
    }
    #[derive(serde::Deserialize)]
    struct C {
        command: String,
        #[serde(default)]
        args: Vec<String>,
    }
    let src = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let f: F = hcl::from_str(&src).map_err(|e| e.to_string())?;
    let (name, j) = f.job.into_iter().next().ok_or("no job")?;
    Ok(Job {
        name,
        datacenters: vec![],
        meta: Default::default(),
        groups: j
            .group
            .into_iter()
            .map(|(gn, g)| Group {
                name: gn,
                count: 1,
                restart: Default::default(),
                meta: Default::default(),
                tasks: g
                    .task
                    .into_iter()
                    .map(|(tn, t)| Task {
                        name: tn,
                        driver: Driver::RawExec,
                        user: None,
                        config: TaskConfig {
                            command: Some(t.config.command),
                            args: t.config.args,
                            ..Default::default()
                        },
                        env: t.env,
                        meta: Default::default(),
                        resources: Default::default(),
                        logs: Default::default(),
                        kill_timeout: std::time::Duration::from_secs(5),
                        kill_signal: 15,
                        chroot_env: None,
                    })
                    .collect(),
            })
            .collect(),
    })
}

/// Parse job text (placeholder until the located parser lands).
pub fn parse_str(src: &str, _name: &str) -> Result<Job, Vec<PlaceholderDiag>> {
    let dir = std::env::temp_dir().join(format!("tend-job-{}", std::process::id()));
    std::fs::write(&dir, src).map_err(|e| vec![PlaceholderDiag { file: String::new(), line: 0, column: 0, path: String::new(), message: e.to_string() }])?;
    let r = parse_file(&dir).map_err(|e| vec![PlaceholderDiag { file: String::new(), line: 0, column: 0, path: String::new(), message: e }]);
    let _ = std::fs::remove_file(&dir);
    r
}

/// Placeholder diagnostic.
#[derive(Debug)]
pub struct PlaceholderDiag {
    /// f
    pub file: String,
    /// l
    pub line: usize,
    /// c
    pub column: usize,
    /// p
    pub path: String,
    /// m
    pub message: String,
}
