//! Durable writes of the state store, made together: a group commit.
//!
//! Writes handed here wait to be made durable together. The first writer to
//! come while no sync runs leads: it takes every write waiting (its own among
//! them) and makes them durable in one go; writers that come meanwhile wait
//! for the next batch, which one of them leads. A batch of [`SYNCFS_FROM`]
//! writes or more is made durable by one `syncfs` of the store's file system:
//! one cache flush for the batch, where two fsyncs each (file and dir) flushed
//! the disk's cache once each. A smaller batch is fsynced file by file.
//!
//! The store uses it for a new job's records (a thousand allocations: one
//! `syncfs`, not four thousand fsyncs). A task's changes keep their own
//! fsyncs: at a burst of exits, one `syncfs` per batch also waits for every
//! daemon's exit file and every log being written, and measured slower.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Condvar, Mutex};

use tend_proto::atomic::{AtomicError, Pending};

/// A batch this large is made durable by one `syncfs`.
pub const SYNCFS_FROM: usize = 4;

/// The group commit of one file system (the store's).
#[derive(Debug)]
pub struct GroupSync {
    /// A dir of the file system, for `syncfs`.
    fs: OwnedFd,
    queue: Mutex<Queue>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct Queue {
    /// The writes of the next batch.
    waiting: Vec<Pending>,
    /// The number of the next batch; batches run one at a time, in order.
    next: u64,
    /// The last batch done (batches are numbered from 1).
    finished: u64,
    running: bool,
    /// Each batch's outcome until its last writer has read it: how many
    /// writers have still to read, and the errno of each write that failed
    /// (by its place in the batch).
    outcomes: HashMap<u64, Outcome>,
}

#[derive(Debug, Default)]
struct Outcome {
    unread: usize,
    failed: HashMap<usize, (String, &'static str, i32)>,
}

impl GroupSync {
    /// The group commit of the file system `fs` (a dir fd) is on.
    pub fn new(fs: OwnedFd) -> GroupSync {
        GroupSync {
            fs,
            queue: Mutex::new(Queue {
                next: 1,
                ..Queue::default()
            }),
            done: Condvar::new(),
        }
    }

    /// Write `data` to `dir/name` atomically and make it durable, in a batch
    /// with whatever other writes are waiting.
    #[cfg(test)]
    fn write_at(
        &self,
        dir: &OwnedFd,
        name: &str,
        data: &[u8],
        mode: u32,
    ) -> Result<(), AtomicError> {
        tend_proto::atomic::write_at_with(dir.as_fd(), name, data, mode, &mut |p, _stage| {
            self.durable(p)
        })
    }

    /// `syncfs` of the file system: every write made before it is durable.
    pub fn sync_fs(&self) -> io::Result<()> {
        nix::unistd::syncfs(self.fs.as_fd()).map_err(io::Error::from)
    }

    /// Make `p` durable with the batch it joins; returns once it is.
    pub fn durable(&self, p: Pending) -> Result<(), AtomicError> {
        self.durable_all(vec![p])
    }

    /// Make every write of `ps` durable with the batch they join; returns
    /// once they are, with the first that failed.
    pub fn durable_all(&self, ps: Vec<Pending>) -> Result<(), AtomicError> {
        if ps.is_empty() {
            return Ok(());
        }
        let mut q = self.queue.lock().expect("sync queue");
        let batch = q.next;
        let places = q.waiting.len()..q.waiting.len() + ps.len();
        q.waiting.extend(ps);
        q.outcomes.entry(batch).or_default().unread += 1;
        loop {
            if q.finished >= batch {
                let outcome = q.outcomes.get_mut(&batch).expect("a batch's outcome");
                outcome.unread -= 1;
                let failed = places.clone().find_map(|i| outcome.failed.remove(&i));
                if outcome.unread == 0 {
                    q.outcomes.remove(&batch);
                }
                return match failed {
                    None => Ok(()),
                    Some((name, step, errno)) => Err(AtomicError::Step {
                        name,
                        step,
                        source: io::Error::from_raw_os_error(errno),
                    }),
                };
            }
            if !q.running {
                let writes = std::mem::take(&mut q.waiting);
                let number = q.next;
                q.next += 1;
                q.running = true;
                drop(q);
                let failed = self.sync_batch(writes);
                q = self.queue.lock().expect("sync queue");
                q.running = false;
                q.finished = number;
                q.outcomes.entry(number).or_default().failed = failed;
                self.done.notify_all();
                continue;
            }
            q = self.done.wait(q).expect("sync queue");
        }
    }

    /// Make a batch durable; the writes that failed, by place.
    fn sync_batch(&self, writes: Vec<Pending>) -> HashMap<usize, (String, &'static str, i32)> {
        let errno = |e: &io::Error| e.raw_os_error().unwrap_or(EIO);
        if writes.len() >= SYNCFS_FROM {
            return match self.sync_fs() {
                Ok(()) => HashMap::new(),
                Err(e) => writes
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (i, (p.name().to_string(), "syncfs", errno(&e))))
                    .collect(),
            };
        }
        writes
            .into_iter()
            .enumerate()
            .filter_map(|(i, p)| {
                let name = p.name().to_string();
                match p.sync() {
                    Ok(()) => None,
                    Err(AtomicError::Step { step, source, .. }) => {
                        Some((i, (name, step, errno(&source))))
                    }
                    Err(_) => Some((i, (name, "fsync", EIO))),
                }
            })
            .collect()
    }
}

const EIO: i32 = nix::errno::Errno::EIO as i32;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tend_proto::atomic;

    #[test]
    fn writers_at_once_all_get_their_file_whole_and_durable() {
        let d = tempfile::tempdir().unwrap();
        let fs = atomic::open_dir(d.path()).unwrap();
        let sync = Arc::new(GroupSync::new(fs));
        let dir = Arc::new(atomic::open_dir(d.path()).unwrap());
        let writers: Vec<_> = (0..32)
            .map(|i| {
                let (sync, dir) = (Arc::clone(&sync), Arc::clone(&dir));
                std::thread::spawn(move || {
                    for round in 0..3 {
                        let text = format!("{i} {round}");
                        sync.write_at(&dir, &format!("f{i}"), text.as_bytes(), 0o600)
                            .unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        for i in 0..32 {
            let text = std::fs::read_to_string(d.path().join(format!("f{i}"))).unwrap();
            assert_eq!(text, format!("{i} 2"));
        }
        // No temp file is left, and no batch's outcome is kept.
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 32);
        let q = sync.queue.lock().unwrap();
        assert!(q.outcomes.is_empty() && q.waiting.is_empty() && !q.running);
        assert_eq!(q.finished + 1, q.next);
    }
}
