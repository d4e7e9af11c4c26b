//! Names that become paths: task names, alloc ids, and the files derived from them.

/// Why a name cannot be used as a single path component.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("is empty")]
    Empty,
    /// The name is `.` or `..`.
    #[error("{0:?} is not a plain file name")]
    Dots(String),
    /// The name holds a `/` or NUL.
    #[error("{0:?} holds '/' or NUL: it must be a plain file name")]
    Separator(String),
    /// The name is longer than a file name may be once suffixed.
    #[error("{0:?} is longer than 200 bytes")]
    TooLong(String),
    /// The name holds a character outside its alphabet.
    #[error("{0:?} holds {1:?}: only letters, digits, '-' and '_' are allowed")]
    Alphabet(String, char),
}

/// Check that `name` is one plain path component (no `/`, NUL, `.` or `..`), short
/// enough that `<name>_exit_status.<run>` and `<name>.stdout.<n>` still fit.
pub fn check_file_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name == "." || name == ".." {
        return Err(NameError::Dots(name.to_string()));
    }
    if name.contains('/') || name.contains('\0') {
        return Err(NameError::Separator(name.to_string()));
    }
    if name.len() > 200 {
        return Err(NameError::TooLong(name.to_string()));
    }
    Ok(())
}

/// Check an allocation id: letters, digits, `-` and `_` only.
pub fn check_id(id: &str) -> Result<(), NameError> {
    if id.is_empty() {
        return Err(NameError::Empty);
    }
    if id.len() > 64 {
        return Err(NameError::TooLong(id.to_string()));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(NameError::Alphabet(id.to_string(), c));
    }
    Ok(())
}

/// Name of a task's exit status file inside its alloc dir.
pub fn exit_status_file(task: &str) -> String {
    format!("{task}{EXIT_STATUS_SUFFIX}")
}

/// What follows the task's name in its exit status files.
const EXIT_STATUS_SUFFIX: &str = "_exit_status";

/// Name of the alloc's dir shared by its tasks, inside the alloc dir.
pub const SHARED_DIR: &str = "alloc";

/// What follows the task's name in the file where the copy of a container's
/// logs keeps its cursor.
pub const DOCKER_LOG_CURSOR_SUFFIX: &str = "_docker_log_cursor";

/// Name an earlier run's exit status file is moved to.
pub fn exit_status_file_of_run(task: &str, run: u32) -> String {
    format!("{task}{EXIT_STATUS_SUFFIX}.{run}")
}

/// Name of the alloc's log dir inside the alloc dir.
pub const LOG_DIR: &str = "logs";

/// Name of the current log file of one stream (`stdout` or `stderr`).
pub fn log_file(task: &str, stream: &str) -> String {
    format!("{task}.{stream}")
}

/// Why `task` cannot be a task's name: its dir (`<alloc_dir>/<task>`) would be,
/// or would sit beside, one of tend's own entries of the alloc dir: `alloc/`,
/// `logs/`, the exit status files, the docker log cursors, the temp names of
/// atomic writes (a leading `.`). None when the name is free.
pub fn reserved_in_alloc_dir(task: &str) -> Option<&'static str> {
    if task == SHARED_DIR {
        return Some("is the alloc's shared dir (alloc/)");
    }
    if task == LOG_DIR {
        return Some("is the alloc's log dir (logs/)");
    }
    if task.starts_with('.') {
        return Some("starts with '.', which tend keeps for its temp files");
    }
    if task.contains(EXIT_STATUS_SUFFIX) {
        return Some("holds \"_exit_status\", which names tend's exit status files");
    }
    if task.contains(DOCKER_LOG_CURSOR_SUFFIX) {
        return Some("holds \"_docker_log_cursor\", which names tend's log cursors");
    }
    None
}

/// Lowercase hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Bytes of a hex string, None when it is not hex.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names() {
        assert!(check_file_name("web").is_ok());
        assert!(check_file_name("a.b-c_d").is_ok());
        assert_eq!(check_file_name(""), Err(NameError::Empty));
        assert!(matches!(check_file_name(".."), Err(NameError::Dots(_))));
        assert!(matches!(
            check_file_name("a/b"),
            Err(NameError::Separator(_))
        ));
        assert!(matches!(
            check_file_name("a\0b"),
            Err(NameError::Separator(_))
        ));
        assert!(check_file_name(&"x".repeat(201)).is_err());
    }

    #[test]
    fn tend_s_own_names_in_the_alloc_dir_are_reserved() {
        for name in [
            "alloc",
            "logs",
            ".x",
            "..hidden",
            "web_exit_status",
            "web_exit_status.3",
            "web_docker_log_cursor",
        ] {
            assert!(reserved_in_alloc_dir(name).is_some(), "{name}");
        }
        for name in ["web", "alloc2", "my-logs", "exit_status", "web.x"] {
            assert_eq!(reserved_in_alloc_dir(name), None, "{name}");
        }
        // Every name tend derives from a task's lands on a reserved one.
        for derived in [
            exit_status_file("t"),
            exit_status_file_of_run("t", 2),
            format!("t{DOCKER_LOG_CURSOR_SUFFIX}"),
        ] {
            assert!(reserved_in_alloc_dir(&derived).is_some(), "{derived}");
        }
    }

    #[test]
    fn ids() {
        assert!(check_id("3f2a-01_b").is_ok());
        assert!(matches!(check_id("a b"), Err(NameError::Alphabet(_, ' '))));
        assert!(check_id("").is_err());
    }

    #[test]
    fn hex_round_trip() {
        let b = [0u8, 1, 0xab, 0xff];
        assert_eq!(from_hex(&to_hex(&b)).unwrap(), b);
        assert!(from_hex("abc").is_none());
        assert!(from_hex("zz").is_none());
    }
}
