//! Signal names of job files ("SIGTERM" or "TERM") and their Linux numbers.

use std::str::FromStr;

use nix::sys::signal::Signal;

/// The signal number of a name: "SIGTERM" or "TERM" (upper case, as in Nomad).
pub fn parse_signal(name: &str) -> Option<i32> {
    if name.is_empty() || name != name.to_ascii_uppercase() {
        return None;
    }
    let full = if name.starts_with("SIG") {
        name.to_string()
    } else {
        format!("SIG{name}")
    };
    Signal::from_str(&full).ok().map(|s| s as i32)
}

/// The name of a signal number ("SIGTERM"), for summaries and messages.
pub fn signal_name(signo: i32) -> Option<&'static str> {
    Signal::try_from(signo).ok().map(Signal::as_str)
}

/// Every accepted name, for error messages.
pub fn signal_names() -> Vec<&'static str> {
    Signal::iterator().map(Signal::as_str).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(parse_signal("SIGTERM"), Some(15));
        assert_eq!(parse_signal("TERM"), Some(15));
        assert_eq!(parse_signal("SIGKILL"), Some(9));
        assert_eq!(parse_signal("SIGINT"), Some(2));
        assert_eq!(parse_signal("SIGHUP"), Some(1));
        assert_eq!(parse_signal("SIGUSR1"), Some(10));
        assert_eq!(parse_signal("SIGUSR2"), Some(12));
        assert_eq!(parse_signal("SIGQUIT"), Some(3));
        assert_eq!(parse_signal("SIGTREM"), None);
        assert_eq!(parse_signal("sigterm"), None);
        assert_eq!(parse_signal(""), None);
        assert_eq!(parse_signal("SIG"), None);
        assert_eq!(signal_name(15), Some("SIGTERM"));
        assert_eq!(signal_name(0), None);
    }
}
