//! Linux capability names as job files and the agent's config write them:
//! `NET_ADMIN`, `net_admin` and `CAP_NET_ADMIN` are one capability.

/// Every capability Linux defines (`linux/capability.h`), without its `CAP_`
/// prefix; the index is the capability's bit.
pub const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

/// The name that stands for every capability.
pub const ALL: &str = "ALL";

/// The canonical form of a capability name: upper case, without `CAP_`.
pub fn canonical(name: &str) -> String {
    let up = name.trim().to_ascii_uppercase();
    match up.strip_prefix("CAP_") {
        Some(rest) => rest.to_string(),
        None => up,
    }
}

/// The canonical name of a capability Linux defines, or [`ALL`]; None for
/// any other name.
pub fn known(name: &str) -> Option<String> {
    let c = canonical(name);
    (c == ALL || CAPABILITIES.contains(&c.as_str())).then_some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_capability_has_three_spellings() {
        for s in ["NET_ADMIN", "net_admin", "CAP_NET_ADMIN", " cap_net_admin "] {
            assert_eq!(known(s).as_deref(), Some("NET_ADMIN"), "{s}");
        }
        assert_eq!(known("all").as_deref(), Some(ALL));
        assert_eq!(known("NET_ADMN"), None);
        assert_eq!(CAPABILITIES[0], "CHOWN");
        assert_eq!(CAPABILITIES[12], "NET_ADMIN");
        assert_eq!(CAPABILITIES[40], "CHECKPOINT_RESTORE");
    }
}
