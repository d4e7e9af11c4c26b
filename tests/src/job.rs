//! Job files for the tests, built rather than written out by hand:
//!
//! ```
//! use tend_tests::job::{JobFile, Task, NO_RESTART};
//! let hcl = JobFile::new("web")
//!     .count(2)
//!     .group_hcl(NO_RESTART)
//!     .task(Task::sh("t", "echo hi; exit 3"))
//!     .task(Task::sh("x", "exec sleep 1").driver("exec").hcl("      user = \"nobody\""))
//!     .to_string();
//! assert!(hcl.starts_with("job \"web\" {"));
//! ```
//!
//! What the builder has no method for goes in as HCL lines (`group_hcl`,
//! `Task::hcl`), as the job file would say it.

use std::fmt;

/// A group `restart` block that never restarts a task.
pub const NO_RESTART: &str = "    restart {\n      attempts = 0\n      mode     = \"fail\"\n    }";

/// A job of one group, `g`.
#[derive(Debug, Clone)]
pub struct JobFile {
    name: String,
    count: Option<u32>,
    group: Vec<String>,
    tasks: Vec<String>,
}

impl JobFile {
    /// A job named `name` with an empty group.
    pub fn new(name: &str) -> JobFile {
        JobFile {
            name: name.to_string(),
            count: None,
            group: Vec::new(),
            tasks: Vec::new(),
        }
    }

    /// `count` allocations of the group.
    pub fn count(mut self, count: u32) -> JobFile {
        self.count = Some(count);
        self
    }

    /// HCL lines inside the group block (`restart`, `network`, ...).
    pub fn group_hcl(mut self, hcl: &str) -> JobFile {
        self.group.push(hcl.to_string());
        self
    }

    /// A task of the group.
    pub fn task(self, task: Task) -> JobFile {
        self.tasks_hcl(&task.to_string())
    }

    /// Tasks of the group, as HCL.
    pub fn tasks_hcl(mut self, hcl: &str) -> JobFile {
        self.tasks.push(hcl.to_string());
        self
    }
}

impl fmt::Display for JobFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "job \"{}\" {{\n  group \"g\" {{", self.name)?;
        if let Some(n) = self.count {
            writeln!(f, "    count = {n}")?;
        }
        for hcl in self.group.iter().chain(&self.tasks) {
            writeln!(f, "{hcl}")?;
        }
        writeln!(f, "  }}\n}}")
    }
}

/// One task block.
#[derive(Debug, Clone)]
pub struct Task {
    name: String,
    driver: String,
    command: String,
    args: Vec<String>,
    image: Option<String>,
    body: Vec<String>,
}

impl Task {
    /// A raw_exec task running `command args...`.
    pub fn command(name: &str, command: &str, args: &[&str]) -> Task {
        Task {
            name: name.to_string(),
            driver: "raw_exec".to_string(),
            command: command.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
            image: None,
            body: Vec::new(),
        }
    }

    /// A raw_exec task running `/bin/sh -c script`.
    pub fn sh(name: &str, script: &str) -> Task {
        Task::command(name, "/bin/sh", &["-c", script])
    }

    /// Run under `driver` instead.
    pub fn driver(mut self, driver: &str) -> Task {
        self.driver = driver.to_string();
        self
    }

    /// A docker task of `image`, running the command in it.
    pub fn docker(mut self, image: &str) -> Task {
        self.driver = "docker".to_string();
        self.image = Some(image.to_string());
        self
    }

    /// HCL lines inside the task block (`user`, `env`, `resources`, ...).
    pub fn hcl(mut self, hcl: &str) -> Task {
        self.body.push(hcl.to_string());
        self
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // JSON strings are HCL strings: the script needs no escaping of its own.
        let args = serde_json::to_string(&self.args).map_err(|_| fmt::Error)?;
        let command = serde_json::to_string(&self.command).map_err(|_| fmt::Error)?;
        writeln!(f, "    task \"{}\" {{", self.name)?;
        writeln!(f, "      driver = \"{}\"", self.driver)?;
        writeln!(f, "      config {{")?;
        if let Some(image) = &self.image {
            writeln!(
                f,
                "        image   = {}",
                serde_json::to_string(image).map_err(|_| fmt::Error)?
            )?;
        }
        writeln!(f, "        command = {command}")?;
        if !self.args.is_empty() {
            writeln!(f, "        args    = {args}")?;
        }
        writeln!(f, "      }}")?;
        for hcl in &self.body {
            writeln!(f, "{hcl}")?;
        }
        writeln!(f, "    }}")
    }
}

/// A job of one group: `count` allocations of the tasks given as HCL, the
/// group's own HCL first.
pub fn job(name: &str, count: u32, group_hcl: &str, tasks_hcl: &str) -> String {
    JobFile::new(name)
        .count(count)
        .group_hcl(group_hcl)
        .tasks_hcl(tasks_hcl)
        .to_string()
}

/// One raw_exec task running `/bin/sh -c script`, with `extra` HCL inside it.
pub fn sh_task(name: &str, script: &str, extra: &str) -> String {
    Task::sh(name, script).hcl(extra).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_built_job_parses_as_the_agent_reads_it() {
        let hcl = JobFile::new("web")
            .count(2)
            .group_hcl(NO_RESTART)
            .task(Task::sh("t", "echo \"hi\" $HOME; exit 3"))
            .task(
                Task::command("x", "/bin/true", &[])
                    .driver("exec")
                    .hcl("      user = \"nobody\""),
            )
            .to_string();
        let job =
            tend::jobspec::parse_str(&hcl, "web.hcl").unwrap_or_else(|d| panic!("{d}\n{hcl}"));
        assert_eq!(job.name, "web");
        let g = &job.groups[0];
        assert_eq!((g.name.as_str(), g.count), ("g", 2));
        assert_eq!(g.tasks.len(), 2);
        assert_eq!(g.tasks[0].driver.name(), "raw_exec");
        assert_eq!(g.tasks[1].driver.name(), "exec");
    }
}
