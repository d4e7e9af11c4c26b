//! `tend`: the host agent and its command line.

fn main() -> std::process::ExitCode {
    malloc::cap_arenas();
    let code = tend::cli::main();
    std::process::ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// The allocator's one setting, made before any thread exists.
///
/// glibc gives each thread that allocates an arena of its own, up to eight
/// per core, and an arena keeps the pages it once held. The agent's dozen
/// threads (the runtime's workers, its blocking pool, the submit's threads)
/// each left one behind: at 1,000 running tasks its RSS was 30-38 MB, of which
/// 11 MB in use. Two arenas hold the same tasks in 26-28 MB at the same start
/// speed (bench/run, figure 3; docs/agent.md, "Memory"). `MALLOC_ARENA_MAX`
/// or `GLIBC_TUNABLES=glibc.malloc.arena_max=N` in the agent's environment
/// still wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
mod malloc {
    /// The arenas the agent keeps: the main one and one more.
    const ARENAS: libc::c_int = 2;

    pub fn cap_arenas() {
        let tuned = std::env::var_os("GLIBC_TUNABLES")
            .is_some_and(|t| t.to_string_lossy().contains("glibc.malloc.arena_max"));
        if tuned || std::env::var_os("MALLOC_ARENA_MAX").is_some_and(|v| !v.is_empty()) {
            return;
        }
        // SAFETY: mallopt only sets a parameter of glibc's allocator; it is
        // called once, first thing in main, before any thread is started.
        // It returns 0 only for a parameter this glibc does not know: then
        // the allocator keeps its default, as before.
        let _ = unsafe { libc::mallopt(libc::M_ARENA_MAX, ARENAS) };
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod malloc {
    /// Only glibc's allocator keeps an arena per thread.
    pub fn cap_arenas() {}
}
