//! The daemon's own log: a tiny `tracing` subscriber writing one line per event,
//! `<time> <LEVEL> alloc_id=<id> task=<name> <message> <field>=<value>...`, to
//! `<alloc_dir>/logs/<task>.tend-spawn.log`, and to stderr until the handshake
//! is done. Small on purpose: tend-spawn must stay tiny in memory.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// The subscriber. Install it with [`DaemonLog::install`].
#[derive(Debug)]
pub struct DaemonLog {
    prefix: String,
    file: Mutex<Option<File>>,
    to_stderr: AtomicBool,
    next_span: AtomicU64,
}

static STDERR_ON: AtomicBool = AtomicBool::new(true);
static ALL_OFF: AtomicBool = AtomicBool::new(false);

impl DaemonLog {
    /// A log for `alloc_id`/`task`, writing to `file` when there is one.
    pub fn new(alloc_id: &str, task: &str, file: Option<File>) -> DaemonLog {
        DaemonLog {
            prefix: format!("alloc_id={alloc_id} task={task}"),
            file: Mutex::new(file),
            to_stderr: AtomicBool::new(true),
            next_span: AtomicU64::new(1),
        }
    }

    /// Make it the global default; a second call is a no-op.
    pub fn install(self) {
        let _ = tracing::subscriber::set_global_default(self);
    }

    /// Stop copying lines to stderr (called once stdio goes to /dev/null).
    pub fn stderr_off() {
        STDERR_ON.store(false, Ordering::Relaxed);
    }

    /// Log nothing more, anywhere: for a forked process that closes the log's
    /// fds (a reused fd number must never receive a log line).
    pub fn all_off() {
        ALL_OFF.store(true, Ordering::Relaxed);
    }

    /// The line for an event (without the newline).
    pub fn format(&self, time: &str, level: &Level, fields: &str) -> String {
        format!("{time} {level:>5} {}{fields}", self.prefix)
    }
}

struct Fields(String);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
}

impl Subscriber for DaemonLog {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= Level::INFO
    }

    fn new_span(&self, _span: &Attributes<'_>) -> Id {
        // Every line carries alloc_id and task already; spans add nothing here.
        Id::from_u64(self.next_span.fetch_add(1, Ordering::Relaxed).max(1))
    }

    fn record(&self, _span: &Id, _values: &Record<'_>) {}

    fn record_follows_from(&self, _span: &Id, _follows: &Id) {}

    fn event(&self, event: &Event<'_>) {
        if ALL_OFF.load(Ordering::Relaxed) {
            return;
        }
        let mut fields = Fields(String::new());
        event.record(&mut fields);
        let mut line = self.format(
            &tend_proto::time::now(),
            event.metadata().level(),
            &fields.0,
        );
        line.push('\n');
        if let Ok(mut f) = self.file.lock() {
            if let Some(f) = f.as_mut() {
                let _ = f.write_all(line.as_bytes());
            }
        }
        if self.to_stderr.load(Ordering::Relaxed) && STDERR_ON.load(Ordering::Relaxed) {
            let _ = std::io::stderr().write_all(line.as_bytes());
        }
    }

    fn enter(&self, _span: &Id) {}

    fn exit(&self, _span: &Id) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_carry_alloc_and_task() {
        let l = DaemonLog::new("a1", "web", None);
        assert_eq!(
            l.format("T", &Level::WARN, " disk full dropped=3"),
            "T  WARN alloc_id=a1 task=web disk full dropped=3"
        );
    }
}
