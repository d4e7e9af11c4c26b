//! Tests of the agent.
use super::*;

#[test]
fn a_second_agent_on_the_same_data_dir_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let settings = || {
        Settings::resolve(
            AgentConfig::default(),
            Some(d.path().join("data")),
            Some(d.path().join("run")),
            None,
        )
        .unwrap()
    };
    let first = Agent::new(settings()).unwrap();
    let second = Agent::new(settings());
    assert!(
        matches!(&second, Err(e @ AgentError::DataDirLocked { .. })
            if e.status() == 409 && e.to_string().contains("another agent")),
        "{:?}",
        second.as_ref().err()
    );
    drop(first);
    Agent::new(settings()).unwrap();
}

#[test]
fn a_lock_held_for_a_moment_is_waited_for() {
    let d = tempfile::tempdir().unwrap();
    let settings = Settings::resolve(
        AgentConfig::default(),
        Some(d.path().join("data")),
        Some(d.path().join("run")),
        None,
    )
    .unwrap();
    // The lock as a dying agent's forked child holds it: on another open
    // file description, let go 300 ms later.
    let first = Agent::new(settings.clone()).unwrap();
    let lock_path = settings.dirs.state_dir().join("agent.lock");
    drop(first);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&lock_path)
        .unwrap();
    let held = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|(_, e)| e)
        .unwrap();
    let t0 = std::time::Instant::now();
    let holder = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(held);
    });
    let agent = Agent::new(settings);
    holder.join().unwrap();
    assert!(agent.is_ok(), "{:?}", agent.err());
    assert!(t0.elapsed() >= std::time::Duration::from_millis(250));
}
