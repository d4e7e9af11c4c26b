//! The task environment (placeholder until the full builder lands).

use std::collections::BTreeMap;
use std::path::Path;

use crate::jobspec::Task;

/// Inputs of the task environment.
#[derive(Debug)]
pub struct Input<'a> {
    /// Allocation id.
    pub alloc_id: &'a str,
    /// Job name.
    pub job: &'a str,
    /// Group name.
    pub group: &'a str,
    /// Allocation index.
    pub index: u32,
    /// The task.
    pub task: &'a Task,
    /// Shared alloc dir.
    pub alloc_dir: &'a Path,
    /// Task dir.
    pub task_dir: &'a Path,
    /// Job meta.
    pub job_meta: &'a BTreeMap<String, String>,
    /// Group meta.
    pub group_meta: &'a BTreeMap<String, String>,
}

/// Build the environment.
pub fn build(i: &Input<'_>) -> Vec<(String, String)> {
    let mut env = vec![
        (
            "TEND_ALLOC_DIR".to_string(),
            i.alloc_dir.display().to_string(),
        ),
        (
            "TEND_TASK_DIR".to_string(),
            i.task_dir.display().to_string(),
        ),
        ("TEND_ALLOC_ID".to_string(), i.alloc_id.to_string()),
        ("TEND_TASK_NAME".to_string(), i.task.name.clone()),
    ];
    for (k, v) in &i.task.env {
        let v = interpolate(v, &env);
        env.push((k.clone(), v));
    }
    env
}

/// Replace `${NAME}`.
pub fn interpolate(s: &str, env: &[(String, String)]) -> String {
    let mut out = s.to_string();
    for (k, v) in env {
        out = out.replace(&format!("${{{k}}}"), v);
    }
    out
}
