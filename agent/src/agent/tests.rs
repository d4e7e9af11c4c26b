//! Tests of the agent.
use super::*;

/// The agent's settings with its data and run dirs under `dir`.
fn settings_in(dir: &std::path::Path) -> Settings {
    Settings::resolve(
        AgentConfig::default(),
        Some(dir.join("data")),
        Some(dir.join("run")),
        None,
    )
    .unwrap()
}

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
    let settings = settings_in(d.path());
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

/// What the API shows of a task is on disk already: while one thread
/// changes a task's record 200 times, every run number read from memory is
/// at most the one the store holds (the write came first, then the show).
#[test]
fn a_task_change_is_on_disk_before_it_is_shown() {
    let d = tempfile::tempdir().unwrap();
    let settings = settings_in(d.path());
    let agent = Agent::new(settings).unwrap();
    let inner = Arc::clone(&agent.inner);
    let alloc = AllocRecord {
        schema: crate::state::SCHEMA,
        alloc_id: "a1".into(),
        job: Arc::new(crate::jobspec::Job {
            name: "j".into(),
            datacenters: vec![],
            meta: Default::default(),
            groups: vec![],
        }),
        group: "g".into(),
        index: 0,
        desired: Desired::Run,
        created_at: tend_proto::time::now(),
        ports: Default::default(),
        adopted: None,
    };
    inner.store.put_alloc(&alloc).unwrap();
    let record = TaskRecord::new("a1", "web");
    inner.store.put_task(&record).unwrap();
    let (ctl, _rx) = mpsc::unbounded_channel();
    let task = TaskSlot {
        record: Arc::new(record),
        ctl,
        writing: Arc::default(),
    };
    inner.allocs.lock().unwrap().insert(
        "a1".into(),
        AllocSlot {
            record: Arc::new(alloc),
            tasks: [("web".to_string(), Box::new(task))].into_iter().collect(),
        },
    );
    let writer = {
        let inner = Arc::clone(&inner);
        std::thread::spawn(move || {
            for run in 1..=200 {
                inner.update_task("a1", "web", |r| {
                    r.run = run;
                    None
                });
            }
        })
    };
    let on_disk = || {
        let path = d.path().join("data/state/a1/web.json");
        let text = std::fs::read_to_string(&path).unwrap();
        serde_json::from_str::<TaskRecord>(&text).unwrap().run
    };
    let mut shown = 0;
    while shown < 200 {
        shown = inner.task_record("a1", "web").unwrap().run;
        let stored = on_disk();
        assert!(stored >= shown, "shown run {shown}, on disk {stored}");
    }
    writer.join().unwrap();
}

/// A job is taken whole or not at all: the second of five allocations
/// cannot have its static port (the first holds it), and the first, made
/// already, goes again: no record, no dir, no port is left.
#[test]
fn a_job_refused_midway_leaves_no_allocation_behind() {
    let d = tempfile::tempdir().unwrap();
    let settings = settings_in(d.path());
    let agent = Agent::new(settings.clone()).unwrap();
    let job = crate::jobspec::parse_str(
        r#"
job "j" {
  group "g" {
    count = 5
    task "t" {
      driver = "raw_exec"
      config {
        command = "/bin/true"
      }
      resources {
        network {
          port "p" {
            static = 47219
          }
        }
      }
    }
  }
}
"#,
        "j.hcl",
    )
    .unwrap();
    let e = agent.submit(job).unwrap_err();
    assert!(e.to_string().contains("47219"), "{e}");
    assert!(agent.inner.ports.reserved().is_empty());
    assert!(agent.inner.allocs.lock().unwrap().is_empty());
    let (loaded, errors) = agent.inner.store.load().unwrap();
    assert!(
        loaded.is_empty() && errors.is_empty(),
        "{loaded:?} {errors:?}"
    );
    let allocs_dir = settings
        .dirs
        .alloc("x")
        .root
        .parent()
        .unwrap()
        .to_path_buf();
    let left: Vec<_> = std::fs::read_dir(&allocs_dir)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?} in {}", allocs_dir.display());
}

/// What every task keeps for its whole life is its runner's future (one per
/// task: a thousand tasks keep a thousand). Its start and the paths taken
/// once in a while (a signal, a reconnection, a lost daemon, the docker
/// driver's wait) are boxed, and so is the wait itself, on which the loop
/// keeps nothing else (1 kB in the unoptimised build the tests run, with a
/// wait of about 2 kB beside it; 5.9 kB in all when the wait was inline
/// behind two async layers that each kept a copy of the run).
#[test]
fn a_waiting_task_keeps_a_small_future() {
    let d = tempfile::tempdir().unwrap();
    let agent = Agent::new(settings_in(d.path())).unwrap();
    let (_ctl, rx) = mpsc::unbounded_channel();
    let fut = runner::task_loop(
        Arc::clone(&agent.inner),
        "a1".into(),
        "web".into(),
        rx,
        Start::Fresh,
        None,
    );
    let size = std::mem::size_of_val(&fut);
    // Its wait is boxed apart (the spawn driver's, about 2 kB): what the
    // loop itself keeps around it stays small.
    assert!(size <= 2048, "a task's future is {size} bytes");
}

/// The allocations of one job, read back from the store each with its own
/// copy, share one again; a job of another content is kept apart.
#[test]
fn loaded_allocations_of_one_job_share_it() {
    let job = |name: &str, dc: &str| {
        Arc::new(crate::jobspec::Job {
            name: name.into(),
            datacenters: vec![dc.into()],
            meta: Default::default(),
            groups: vec![],
        })
    };
    let mut jobs = SharedJobs::default();
    let first = jobs.share(&job("j", "dc1"));
    let again = jobs.share(&job("j", "dc1"));
    assert!(Arc::ptr_eq(&first, &again));
    let other = jobs.share(&job("j", "dc2"));
    assert!(!Arc::ptr_eq(&first, &other));
    assert_eq!(other.datacenters, ["dc2"]);
    let named = jobs.share(&job("k", "dc1"));
    assert!(!Arc::ptr_eq(&first, &named));
}
