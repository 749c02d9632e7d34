//! Where received files go: the directory, its temporaries, and the rule that nothing
//! incomplete ever appears under a file's name.
//!
//! Content is written to a temporary file in `DIR/.resound-partial/` (named by a counter, never
//! by the client's name) and moved to `DIR/NAME` only when the transfer is complete, with a
//! rename that refuses to replace an existing file (`renameat2(RENAME_NOREPLACE)`). An
//! [`Upload`] that is dropped without being committed — a reset, a timeout, a short transfer, a
//! full disk — deletes its temporary. Temporaries left by a crash are removed at the next start.
//!
//! This file does blocking disk I/O on the event loop's thread. Writes land in the page cache
//! and return in microseconds; when the kernel throttles a writer because too much is dirty, the
//! whole loop waits for that one write. We accept this: each write is at most one read (64 KiB),
//! so a stall is bounded by one write's latency, and the alternative (a thread pool or io_uring)
//! would cost more complexity than this teaching server should carry. `done` means the file is
//! complete and in place in the page cache; it is not `fsync`ed.

use std::cell::RefCell;
use std::collections::HashSet;
use std::ffi::CString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use log::info;

/// The subdirectory of `--dir` that holds transfers in progress. No received file can take
/// this name: the directory is in the way, and the name is refused up front anyway.
pub const PARTIAL_DIR: &str = ".resound-partial";

/// Why a file cannot be stored.
#[derive(Debug)]
pub enum StoreError {
    /// `DIR/NAME` exists: the policy is to refuse, never to replace or rename.
    Exists,
    /// Another transfer of the same name is in progress.
    Busy,
    Io(io::Error),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Exists => f.write_str("file exists"),
            StoreError::Busy => f.write_str("a transfer of that name is in progress"),
            StoreError::Io(e) => write!(f, "cannot store file: {e}"),
        }
    }
}

/// The receiving directory.
pub struct Store {
    dir: PathBuf,
    partial: PathBuf,
    /// Names with a transfer in progress, so a second upload of the same name is refused at
    /// once instead of after all its bytes. Shared with each [`Upload`], which removes its
    /// name when it ends.
    active: Rc<RefCell<HashSet<String>>>,
    next_tmp: u64,
}

impl Store {
    /// Create `dir` (and its partial subdirectory) if missing, and remove temporaries that a
    /// previous run left behind.
    pub fn open(dir: &Path) -> io::Result<Store> {
        let partial = dir.join(PARTIAL_DIR);
        fs::create_dir_all(&partial)?;
        let mut stale = 0;
        for entry in fs::read_dir(&partial)? {
            let entry = entry?;
            if fs::remove_file(entry.path()).is_ok() {
                stale += 1;
            }
        }
        if stale > 0 {
            info!(
                "removed {stale} incomplete file(s) left in {}",
                partial.display()
            );
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            partial,
            active: Rc::default(),
            next_tmp: 1,
        })
    }

    /// Start receiving `name` (already validated as a base name).
    pub fn begin(&mut self, name: &str) -> Result<Upload, StoreError> {
        let target = self.dir.join(name);
        if target.symlink_metadata().is_ok() {
            return Err(StoreError::Exists);
        }
        if !self.active.borrow_mut().insert(name.to_string()) {
            return Err(StoreError::Busy);
        }
        let tmp = self
            .partial
            .join(format!("{}-{}", std::process::id(), self.next_tmp));
        self.next_tmp += 1;
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp);
        match file {
            Ok(file) => Ok(Upload {
                file,
                tmp,
                target,
                name: name.to_string(),
                active: self.active.clone(),
                committed: false,
            }),
            Err(e) => {
                self.active.borrow_mut().remove(name);
                Err(StoreError::Io(e))
            }
        }
    }
}

/// One file being received. Dropping it without [`Upload::commit`] deletes what was written.
pub struct Upload {
    file: File,
    tmp: PathBuf,
    target: PathBuf,
    name: String,
    active: Rc<RefCell<HashSet<String>>>,
    committed: bool,
}

impl Upload {
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.file.write_all(data)
    }

    /// Put the file under its name, unless something took the name meanwhile.
    pub fn commit(mut self) -> Result<(), StoreError> {
        rename_noreplace(&self.tmp, &self.target).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                StoreError::Exists
            } else {
                StoreError::Io(e)
            }
        })?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
        self.active.borrow_mut().remove(&self.name);
    }
}

/// Rename `from` to `to`, failing with `AlreadyExists` rather than replacing `to`. Uses
/// `renameat2(RENAME_NOREPLACE)`; on a filesystem without it, a hard link (which also refuses
/// to replace) followed by removing the temporary.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    let c_from = CString::new(from.as_os_str().as_bytes())?;
    let c_to = CString::new(to.as_os_str().as_bytes())?;
    // SAFETY: two valid NUL-terminated paths; AT_FDCWD for both directory descriptors.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            c_from.as_ptr(),
            libc::AT_FDCWD,
            c_to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if !matches!(e.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOSYS)) {
        return Err(e);
    }
    fs::hard_link(from, to)?;
    fs::remove_file(from)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fresh directory under the system temp dir, removed on drop.
    pub struct TempDir(pub PathBuf);

    impl TempDir {
        pub fn new(tag: &str) -> TempDir {
            let path = std::env::temp_dir().join(format!(
                "resound-{tag}-{}-{:?}",
                std::process::id(),
                std::thread::current().id()
            ));
            let _ = fs::remove_dir_all(&path);
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn test_committed_upload_appears_under_its_name_only_then() {
        let tmp = TempDir::new("store-commit");
        let mut store = Store::open(&tmp.0).unwrap();
        let mut up = store.begin("a.txt").unwrap();
        up.write(b"hello").unwrap();
        assert_eq!(
            names_in(&tmp.0),
            [PARTIAL_DIR],
            "nothing under the name yet"
        );
        up.commit().unwrap();
        assert_eq!(fs::read(tmp.0.join("a.txt")).unwrap(), b"hello");
        assert!(names_in(&tmp.0.join(PARTIAL_DIR)).is_empty());
    }

    #[test]
    fn test_dropped_upload_leaves_nothing() {
        let tmp = TempDir::new("store-drop");
        let mut store = Store::open(&tmp.0).unwrap();
        let mut up = store.begin("b.txt").unwrap();
        up.write(b"partial").unwrap();
        drop(up);
        assert_eq!(names_in(&tmp.0), [PARTIAL_DIR]);
        assert!(names_in(&tmp.0.join(PARTIAL_DIR)).is_empty());
        // The name is free again.
        assert!(store.begin("b.txt").is_ok());
    }

    #[test]
    fn test_existing_file_is_never_replaced() {
        let tmp = TempDir::new("store-exists");
        let mut store = Store::open(&tmp.0).unwrap();
        fs::write(tmp.0.join("c.txt"), b"original").unwrap();
        assert!(matches!(store.begin("c.txt"), Err(StoreError::Exists)));
        // A file that appears during the transfer is not replaced either.
        let mut up = store.begin("d.txt").unwrap();
        up.write(b"new").unwrap();
        fs::write(tmp.0.join("d.txt"), b"someone else's").unwrap();
        assert!(matches!(up.commit(), Err(StoreError::Exists)));
        assert_eq!(fs::read(tmp.0.join("d.txt")).unwrap(), b"someone else's");
        assert!(names_in(&tmp.0.join(PARTIAL_DIR)).is_empty());
    }

    #[test]
    fn test_concurrent_upload_of_one_name_is_refused() {
        let tmp = TempDir::new("store-busy");
        let mut store = Store::open(&tmp.0).unwrap();
        let _first = store.begin("e.txt").unwrap();
        assert!(matches!(store.begin("e.txt"), Err(StoreError::Busy)));
    }

    #[test]
    fn test_open_removes_stale_temporaries() {
        let tmp = TempDir::new("store-stale");
        fs::create_dir_all(tmp.0.join(PARTIAL_DIR)).unwrap();
        fs::write(tmp.0.join(PARTIAL_DIR).join("123-4"), b"left by a crash").unwrap();
        Store::open(&tmp.0).unwrap();
        assert!(names_in(&tmp.0.join(PARTIAL_DIR)).is_empty());
    }
}
