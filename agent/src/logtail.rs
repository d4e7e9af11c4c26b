//! Following a task's rotating log file: `<task>.<stream>` is the current file and
//! `.1`, `.2`, ... the older ones. A follower keeps its file open, so bytes written
//! just before a rotation are still read, and after a rotation it reads the files
//! that were rotated past it before it moves on to the new current file.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use tend_proto::names;

/// Follows one stream of one task.
#[derive(Debug)]
pub struct LogFollower {
    dir: PathBuf,
    base: String,
    max_files: u32,
    file: Option<(File, u64)>,
}

impl LogFollower {
    /// Follow `<dir>/<task>.<stream>` from its start; `max_files` bounds the search
    /// for rotated files.
    pub fn new(dir: &Path, task: &str, stream: &str, max_files: u32) -> LogFollower {
        LogFollower {
            dir: dir.to_path_buf(),
            base: names::log_file(task, stream),
            max_files: max_files.max(1),
            file: None,
        }
    }

    fn current(&self) -> PathBuf {
        self.dir.join(&self.base)
    }

    fn rotated(&self, n: u32) -> PathBuf {
        self.dir.join(format!("{}.{n}", self.base))
    }

    /// Append to `out` every byte written since the last call.
    pub fn read_available(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        loop {
            if self.file.is_none() {
                match File::open(self.current()) {
                    Ok(f) => {
                        let ino = f.metadata()?.ino();
                        self.file = Some((f, ino));
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                    Err(e) => return Err(e),
                }
            }
            let Some((file, ino)) = self.file.as_mut() else {
                return Ok(());
            };
            file.read_to_end(out)?;
            let ino = *ino;
            match std::fs::metadata(self.current()) {
                Ok(m) if m.ino() == ino => return Ok(()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            // Rotated: our file is now `.k` (or gone); the files newer than it come
            // first, oldest to newest, then the new current file.
            let k = (1..=self.max_files)
                .find(|n| std::fs::metadata(self.rotated(*n)).is_ok_and(|m| m.ino() == ino));
            if let Some(k) = k {
                for j in (1..k).rev() {
                    match File::open(self.rotated(j)) {
                        Ok(mut f) => {
                            f.read_to_end(out)?;
                        }
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            self.file = None;
            if !self.current().exists() {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn follows_across_rotations() {
        let dir = tempfile::tempdir().unwrap();
        let cur = dir.path().join("t.stdout");
        let mut f = LogFollower::new(dir.path(), "t", "stdout", 5);
        let mut out = Vec::new();
        f.read_available(&mut out).unwrap();
        assert!(out.is_empty());
        std::fs::write(&cur, b"one ").unwrap();
        f.read_available(&mut out).unwrap();
        // Two rotations before the follower looks again.
        let mut w = std::fs::OpenOptions::new().append(true).open(&cur).unwrap();
        w.write_all(b"two ").unwrap();
        std::fs::rename(&cur, dir.path().join("t.stdout.1")).unwrap();
        std::fs::write(&cur, b"three ").unwrap();
        std::fs::rename(dir.path().join("t.stdout.1"), dir.path().join("t.stdout.2")).unwrap();
        std::fs::rename(&cur, dir.path().join("t.stdout.1")).unwrap();
        std::fs::write(&cur, b"four").unwrap();
        f.read_available(&mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "one two three four");
    }
}
