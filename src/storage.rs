//! Where received files go: the directory, its temporaries, and the rule that nothing
//! incomplete ever appears under a file's name — with any number of resound processes on one
//! `--dir`, and with a directory that other people can write into.
//!
//! # Temporaries without a name
//!
//! A transfer's content goes into an `O_TMPFILE` file opened in `--dir` itself: an inode with
//! no name at all. No one can open, replace or delete it, and no one has to clean it up: when a
//! transfer fails (a reset, a timeout, a short transfer, a size limit, a full disk), closing the
//! descriptor frees it, and when the process crashes the kernel frees it. So nothing is cleaned
//! at start — which is what makes N processes on one `--dir` safe (`serve --reuseport`): no
//! process has anything of another's to remove. A complete file is published with `linkat`,
//! which gives the inode its name and refuses to replace an existing one (EEXIST): two
//! transfers of one name, in one process or in two, never overwrite each other; the later is
//! told `file exists`. After every transfer, `--dir` holds exactly the stored files.
//!
//! Because the temporary lives in `--dir`, creating it before the `ok` finds a missing,
//! read-only or full directory at the header, and the final link can never cross a file system.
//!
//! # The fallback: named temporaries
//!
//! A file system without `O_TMPFILE` (some network and FUSE file systems; the kernel answers
//! EOPNOTSUPP, or EISDIR on kernels before 3.11) gets named temporaries instead:
//! `DIR/.resound-tmp-<PID>-<16 random hex digits>`, created with `O_EXCL` (so never someone
//! else's file), published with `renameat2(RENAME_NOREPLACE)` (or a hard link and an unlink
//! where that flag is unsupported), and removed on failure by the process that created it, and
//! only while the name still leads to the very file it created. A crash leaves its temporary
//! behind, and resound never removes one at start: on a shared file system a PID says nothing
//! about whether its owner is alive. `.resound-tmp-*` files whose process is gone can be removed
//! by hand. The environment variable [`NAMED_TEMPORARIES_ENV`]`=1` forces this path (for tests).
//!
//! # Never leaving `--dir`
//!
//! `--dir` is opened once, with `O_DIRECTORY | O_NOFOLLOW`, and the server refuses to start,
//! naming the path, if it is a symbolic link or not a directory. Every operation after that is
//! relative to the directory descriptor (`openat`, `linkat`, `renameat2`, `unlinkat`, `fstatat`
//! with `AT_SYMLINK_NOFOLLOW`) on a base name the files service validated: nothing inside DIR
//! is resolved through a path, so a link planted there is never followed, and the only names
//! this code ever removes are its own named temporaries.
//!
//! The `DIR/.resound-partial/` directory of earlier versions is no longer used: it is not
//! created, read, emptied or followed. If it exists it is reported once at start and left
//! alone — it may be a link planted to make the server delete files elsewhere (the attack of
//! issue 15), or still be in use by an older resound on the same DIR.
//!
//! # DIR removed while serving
//!
//! The descriptor keeps the removed directory alive, but no file can be created in it. A
//! transfer then gets `error: cannot store file: DIR: the directory was removed while the
//! server was running`. If someone creates DIR again, the next transfer adopts the new
//! directory (opened with the same rules). The server never creates it again itself: a DIR that
//! vanished may be an unmounted disk, and filling the empty mount point underneath would be the
//! worse surprise.
//!
//! # Disk I/O on the loop's thread
//!
//! This file does blocking disk I/O on the event loop's thread. Writes land in the page cache
//! and return in microseconds; when the kernel throttles a writer because too much is dirty, the
//! whole loop waits for that one write. We accept this: each write is at most one read (up to
//! 1 MiB, `server.rs`'s `BULK_BUDGET`, when an upload is alone in its loop turn; down to 64 KiB
//! when many connections share it), so a stall is bounded by one write's latency, and the
//! alternative (a thread pool or io_uring) would cost more complexity than this teaching server
//! should carry. `done` means the file is
//! complete and in place in the page cache; it is not `fsync`ed, so the promise holds across a
//! crash of the process, not across a power cut (which may leave a published file short).

use std::cell::RefCell;
use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use log::{info, warn};

/// Names starting with this are the server's own (named temporaries, the old partial
/// directory): the files service refuses them as file names.
pub const RESERVED_PREFIX: &str = ".resound-";

/// The temporaries directory of earlier versions: never used, never followed (see above).
pub const LEGACY_PARTIAL_DIR: &str = ".resound-partial";

/// How named temporaries (the fallback) start: `.resound-tmp-<PID>-<RANDOM>`.
pub const NAMED_TMP_PREFIX: &str = ".resound-tmp-";

/// Set to `1`, this environment variable makes the server receive into named temporaries even
/// where `O_TMPFILE` works: the switch the tests of the binary (a server in a process of its
/// own: several on one `--dir`, a resource limit) use to exercise the fallback. Unit tests
/// choose with `Store::open_with`.
pub const NAMED_TEMPORARIES_ENV: &str = "RESOUND_NAMED_TEMPORARIES";

/// Permissions of a stored file (before the umask), as `open(2)` would give a new file.
const FILE_MODE: libc::c_uint = 0o644;

/// Why a file cannot be stored. Every variant that comes from the disk names the path.
#[derive(Debug)]
pub enum StoreError {
    /// `DIR/NAME` exists: the policy is to refuse, never to replace or rename.
    Exists,
    /// Another transfer of the same name is in progress in this process.
    Busy,
    /// No descriptor is left for the file: the client is told what a client turned away at
    /// accept is told, never `os error 24`.
    NoDescriptor,
    /// DIR was removed while the server was running, and has not been created again.
    Removed(PathBuf),
    /// Any other failure, with the path it concerns.
    Io(PathBuf, io::Error),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Exists => f.write_str("file exists"),
            StoreError::Busy => f.write_str("a transfer of that name is in progress"),
            StoreError::NoDescriptor => f.write_str("too many connections"),
            StoreError::Removed(dir) => write!(
                f,
                "cannot store file: {}: the directory was removed while the server was running",
                dir.display()
            ),
            StoreError::Io(path, e) => write!(f, "cannot store file: {}: {e}", path.display()),
        }
    }
}

/// Which kind of temporary a store creates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Temporaries {
    /// `O_TMPFILE`: no name until published.
    Unnamed,
    /// `.resound-tmp-<PID>-<RANDOM>`: the fallback.
    Named,
}

/// An open directory, and the path it was opened by. The path is for messages, and for
/// adopting a DIR created again after a removal; nothing inside the directory is ever reached
/// through it.
struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

impl Dir {
    /// Open `path` as a directory without following a link at its last component.
    fn open(path: &Path) -> io::Result<Dir> {
        let c_path = CString::new(path.as_os_str().as_bytes())?;
        // SAFETY: a valid NUL-terminated path; the flags ask for no file creation, so no mode.
        let fd = unsafe {
            libc::open(
                c_path.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        Ok(Dir {
            fd: owned(fd)?,
            path: path.to_path_buf(),
        })
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A failure about `path` (in this directory), told the way a client should hear it.
    /// Called on errors only, so the checks here cost nothing on the hot path.
    fn error(&self, path: PathBuf, e: io::Error) -> StoreError {
        if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) {
            StoreError::NoDescriptor
        } else if self.removed() {
            StoreError::Removed(self.path.clone())
        } else {
            StoreError::Io(path, e)
        }
    }

    /// Has this directory been removed? (Its link count drops to 0, though our descriptor
    /// keeps it alive.)
    fn removed(&self) -> bool {
        fstat(self.fd()).is_ok_and(|st| st.st_nlink == 0)
    }
}

/// The receiving directory.
pub struct Store {
    /// Shared with each [`Upload`], which publishes into the directory it began in.
    dir: Rc<Dir>,
    temporaries: Temporaries,
    /// Names with a transfer in progress here, so a second upload of the same name is refused
    /// at once instead of after all its bytes. Shared with each [`Upload`], which removes its
    /// name when it ends. (Across processes, `linkat`'s EEXIST is the referee.)
    active: Rc<RefCell<HashSet<String>>>,
}

impl Store {
    /// Open `dir` (creating it if missing) for receiving. Refuses a `dir` that is a symbolic
    /// link or not a directory. A directory the server cannot write into is only warned about:
    /// it may be fixed while the server runs, and every transfer is refused at its header
    /// until then.
    pub fn open(dir: &Path) -> io::Result<Store> {
        let forced = std::env::var_os(NAMED_TEMPORARIES_ENV).is_some_and(|v| v == "1");
        if forced {
            info!("{NAMED_TEMPORARIES_ENV}=1: receiving into named temporaries");
        }
        let temporaries = if forced {
            Temporaries::Named
        } else {
            Temporaries::Unnamed
        };
        Store::open_with(dir, temporaries)
    }

    pub(crate) fn open_with(path: &Path, temporaries: Temporaries) -> io::Result<Store> {
        let dir = match Dir::open(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::create_dir_all(path)?;
                // Opened again with the same rules: if something put a link there meanwhile,
                // this refuses it.
                Dir::open(path)
            }
            opened => opened,
        }
        .map_err(|e| explain_dir_error(path, e))?;
        let mut store = Store {
            dir: Rc::new(dir),
            temporaries,
            active: Rc::default(),
        };
        store.report_legacy_partial();
        // Try a temporary now, so that a directory we cannot write into is said at start,
        // and so that a file system without O_TMPFILE is found (and said) before a client.
        if let Err(e) = store.create_temp() {
            warn!(
                "{}: cannot create files here ({e}); every transfer will be refused until \
                 that changes",
                store.dir.path.display()
            );
        }
        Ok(store)
    }

    /// Which kind of temporaries this store creates now.
    #[cfg(test)]
    pub(crate) fn temporaries(&self) -> Temporaries {
        self.temporaries
    }

    /// Start receiving `name` (already validated as a base name). The temporary is created
    /// here, before the client is told `ok`, so every fault of the directory is found now.
    pub fn begin(&mut self, name: &str) -> Result<Upload, StoreError> {
        match self.try_begin(name) {
            Err(StoreError::Removed(_)) if self.adopt_recreated() => self.try_begin(name),
            result => result,
        }
    }

    fn try_begin(&mut self, name: &str) -> Result<Upload, StoreError> {
        let target = self.dir.path.join(name);
        let c_name = CString::new(name).map_err(|e| StoreError::Io(target.clone(), e.into()))?;
        match lstat_at(self.dir.fd(), &c_name) {
            Ok(Some(_)) => return Err(StoreError::Exists),
            Ok(None) => {}
            Err(e) => return Err(self.dir.error(target, e)),
        }
        if !self.active.borrow_mut().insert(name.to_string()) {
            return Err(StoreError::Busy);
        }
        match self.create_temp() {
            Ok(temp) => Ok(Upload {
                temp,
                name: c_name,
                active: self.active.clone(),
            }),
            Err(e) => {
                self.active.borrow_mut().remove(name);
                Err(self.dir.error(self.dir.path.clone(), e))
            }
        }
    }

    /// A temporary of the current kind; the first `O_TMPFILE` the file system refuses switches
    /// this store to named temporaries for good.
    fn create_temp(&mut self) -> io::Result<Temp> {
        if self.temporaries == Temporaries::Unnamed {
            match Temp::unnamed(&self.dir) {
                Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR)) => {
                    info!(
                        "{}: no O_TMPFILE on this file system ({e}); receiving into named \
                         temporaries, {NAMED_TMP_PREFIX}<pid>-<random>, instead",
                        self.dir.path.display()
                    );
                    self.temporaries = Temporaries::Named;
                }
                created => return created,
            }
        }
        Temp::named(&self.dir)
    }

    /// DIR was removed: if a directory has been created at its path since, use that one.
    fn adopt_recreated(&mut self) -> bool {
        let Ok(dir) = Dir::open(&self.dir.path) else {
            return false;
        };
        warn!(
            "{}: the directory was removed and created again while the server was running; \
             storing into the new one",
            dir.path.display()
        );
        self.dir = Rc::new(dir);
        true
    }

    /// Say what the old `.resound-partial` is, if present; never touch it.
    fn report_legacy_partial(&self) {
        let path = self.dir.path.join(LEGACY_PARTIAL_DIR);
        let c_name = CString::new(LEGACY_PARTIAL_DIR).expect("no NUL");
        let Ok(Some(st)) = lstat_at(self.dir.fd(), &c_name) else {
            return;
        };
        if st.st_mode & libc::S_IFMT == libc::S_IFLNK {
            warn!(
                "{}: a symbolic link; resound no longer uses this name and neither follows \
                 nor empties it",
                path.display()
            );
        } else {
            info!(
                "{}: left by an older resound; no longer used, and left as it is (remove it \
                 by hand once no older resound uses this directory)",
                path.display()
            );
        }
    }
}

/// One file being received. Dropping it without [`Upload::commit`] leaves nothing.
pub struct Upload {
    temp: Temp,
    name: CString,
    active: Rc<RefCell<HashSet<String>>>,
}

impl Upload {
    /// Append content. One `write` per call on the hot path, nothing else.
    pub fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        self.temp
            .file
            .write_all(data)
            .map_err(|e| self.temp.dir.error(self.target(), e))
    }

    /// Put the file under its name, unless something took the name meanwhile (another
    /// transfer here, another process, someone with a shell).
    pub fn commit(mut self) -> Result<(), StoreError> {
        self.temp.publish(&self.name).map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                StoreError::Exists
            } else {
                self.temp.dir.error(self.target(), e)
            }
        })
    }

    fn target(&self) -> PathBuf {
        let name = std::ffi::OsStr::from_bytes(self.name.as_bytes());
        self.temp.dir.path.join(name)
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        // The temporary cleans up after itself (its own Drop); the name is free again.
        if let Ok(name) = self.name.to_str() {
            self.active.borrow_mut().remove(name);
        }
    }
}

/// A temporary file: where content goes until it is published.
struct Temp {
    file: File,
    /// The directory it was created in, and will be published in.
    dir: Rc<Dir>,
    /// For a named temporary not yet published: its name and identity.
    named: Option<Named>,
}

/// A named temporary's name, and the device and inode it had when we created it, so that we
/// remove that name only while it still leads to our file.
struct Named {
    name: CString,
    dev: libc::dev_t,
    ino: libc::ino_t,
}

impl Temp {
    /// An `O_TMPFILE` in `dir`.
    fn unnamed(dir: &Rc<Dir>) -> io::Result<Temp> {
        // SAFETY: a valid directory descriptor and a NUL-terminated path ("."); O_TMPFILE
        // requires the mode argument, given.
        let fd = unsafe {
            libc::openat(
                dir.fd.as_raw_fd(),
                c".".as_ptr(),
                libc::O_TMPFILE | libc::O_WRONLY | libc::O_CLOEXEC,
                FILE_MODE,
            )
        };
        Ok(Temp {
            file: File::from(owned(fd)?),
            dir: dir.clone(),
            named: None,
        })
    }

    /// A `.resound-tmp-<PID>-<RANDOM>` in `dir`, ours alone (`O_EXCL`).
    fn named(dir: &Rc<Dir>) -> io::Result<Temp> {
        // 64 random bits: a clash is a matter of eight tries at most in theory, never in
        // practice; the PID alone would not do across hosts or PID namespaces.
        for _ in 0..8 {
            let name = format!(
                "{NAMED_TMP_PREFIX}{}-{:016x}",
                std::process::id(),
                random_u64()?
            );
            let name = CString::new(name).expect("no NUL");
            // SAFETY: a valid directory descriptor, a NUL-terminated name, the mode given for
            // O_CREAT. O_EXCL fails on any existing name, a symbolic link included.
            let fd = unsafe {
                libc::openat(
                    dir.fd.as_raw_fd(),
                    name.as_ptr(),
                    libc::O_WRONLY
                        | libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_NOFOLLOW
                        | libc::O_CLOEXEC,
                    FILE_MODE,
                )
            };
            let file = match owned(fd) {
                Ok(fd) => File::from(fd),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            };
            return match fstat(file.as_fd()) {
                Ok(st) => Ok(Temp {
                    file,
                    dir: dir.clone(),
                    named: Some(Named {
                        name,
                        dev: st.st_dev,
                        ino: st.st_ino,
                    }),
                }),
                Err(e) => {
                    // We created this name a moment ago with O_EXCL: it is ours to remove.
                    let _ = unlink_at(dir.fd(), &name);
                    Err(e)
                }
            };
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no free temporary name in 8 tries",
        ))
    }

    /// Give the file `name` in its directory, failing with `AlreadyExists` rather than
    /// replacing anything.
    fn publish(&mut self, name: &CStr) -> io::Result<()> {
        let Some(named) = &self.named else {
            return link_unnamed(&self.file, self.dir.fd(), name);
        };
        rename_noreplace(self.dir.fd(), &named.name, name)?;
        if let Some(named) = self.named.take()
            && let Err(e) = unlink_if_ours(self.dir.fd(), &named)
        {
            // Only after the link-and-unlink fallback can the temporary name remain; it is a
            // second name of the stored file, harmless but untidy.
            warn!(
                "{}: cannot remove temporary {:?}: {e}",
                self.dir.path.display(),
                named.name
            );
        }
        Ok(())
    }
}

impl Drop for Temp {
    fn drop(&mut self) {
        // An unnamed temporary needs nothing: closing the file frees it.
        if let Some(named) = &self.named
            && let Err(e) = unlink_if_ours(self.dir.fd(), named)
        {
            warn!(
                "{}: cannot remove temporary {:?}: {e}",
                self.dir.path.display(),
                named.name
            );
        }
    }
}

// ---------------------------------------------------------------------- system calls
//
// Thin wrappers: each makes one call relative to a directory descriptor, and turns -1 into
// the errno it set.

/// A descriptor from a call that returns one, or the error it set.
fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just returned to us, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// 0 or the error that the call set.
fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: a valid descriptor and room for one stat.
    check(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded, so it filled the struct.
    Ok(unsafe { st.assume_init() })
}

/// `name` in `dir`, not following a link; None if there is no such name.
fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Option<libc::stat>> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: a valid directory descriptor, a NUL-terminated name, room for one stat.
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    match check(rc) {
        // SAFETY: fstatat succeeded, so it filled the struct.
        Ok(()) => Ok(Some(unsafe { st.assume_init() })),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn unlink_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: a valid directory descriptor and a NUL-terminated name; flags 0 (not a dir).
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) })
}

/// Remove a named temporary if its name still leads to the file we created. (Someone who can
/// write into DIR could have renamed ours away and put another file there; that one is not
/// ours to remove.)
fn unlink_if_ours(dir: BorrowedFd<'_>, named: &Named) -> io::Result<()> {
    match lstat_at(dir, &named.name)? {
        Some(st) if st.st_dev == named.dev && st.st_ino == named.ino => unlink_at(dir, &named.name),
        _ => Ok(()),
    }
}

/// Give an `O_TMPFILE` its first name. Through `/proc/self/fd/N` with `AT_SYMLINK_FOLLOW`,
/// which any process may do; where `/proc` is missing, `AT_EMPTY_PATH` on the descriptor,
/// which the kernel allows only with CAP_DAC_READ_SEARCH. Either refuses an existing name.
fn link_unnamed(file: &File, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let proc_path = CString::new(format!("/proc/self/fd/{}", file.as_raw_fd())).expect("no NUL");
    // SAFETY: NUL-terminated paths, a valid directory descriptor; AT_FDCWD for the absolute
    // source path.
    let rc = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            proc_path.as_ptr(),
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    let Err(first) = check(rc) else {
        return Ok(());
    };
    if first.kind() != io::ErrorKind::NotFound {
        return Err(first);
    }
    // SAFETY: a valid file descriptor with an empty path (AT_EMPTY_PATH), a valid directory
    // descriptor and a NUL-terminated name.
    let rc = unsafe {
        libc::linkat(
            file.as_raw_fd(),
            c"".as_ptr(),
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    };
    // If this fails too, the first error says more (a removed directory, most likely).
    check(rc).map_err(|_| first)
}

/// Rename `from` to `to` in `dir`, failing with `AlreadyExists` rather than replacing `to`:
/// `renameat2(RENAME_NOREPLACE)`, or on a file system without that flag a hard link (which
/// also refuses to replace); the caller then removes `from`.
fn rename_noreplace(dir: BorrowedFd<'_>, from: &CStr, to: &CStr) -> io::Result<()> {
    let fd = dir.as_raw_fd();
    // SAFETY: one valid directory descriptor for both sides, two NUL-terminated names.
    let rc = unsafe { libc::renameat2(fd, from.as_ptr(), fd, to.as_ptr(), libc::RENAME_NOREPLACE) };
    match check(rc) {
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) => {
            // SAFETY: as above; flags 0: do not follow a link at `from`.
            check(unsafe { libc::linkat(fd, from.as_ptr(), fd, to.as_ptr(), 0) })
        }
        result => result,
    }
}

/// 64 bits from the kernel's random pool (`getrandom(2)`).
pub(crate) fn random_u64() -> io::Result<u64> {
    let mut buf = [0u8; 8];
    // SAFETY: writes at most 8 bytes into our 8-byte buffer.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        return Err(if n < 0 {
            io::Error::last_os_error()
        } else {
            io::Error::other("short read from getrandom")
        });
    }
    Ok(u64::from_ne_bytes(buf))
}

/// Say why `--dir` cannot be used, in words (the caller adds the path). With `O_NOFOLLOW |
/// O_DIRECTORY` the kernel answers a link with ENOTDIR or ELOOP, the same as a file; a look at
/// the path itself, for this message only, tells them apart.
fn explain_dir_error(path: &Path, e: io::Error) -> io::Error {
    if !matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) {
        return e;
    }
    let why = if path
        .symlink_metadata()
        .is_ok_and(|m| m.file_type().is_symlink())
    {
        "a symbolic link (resound never follows a link at --dir: give the directory it points to)"
    } else {
        "not a directory"
    };
    io::Error::new(e.kind(), why)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::{PermissionsExt, symlink};

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

    /// The names in `dir`, sorted.
    pub fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    const BOTH: [Temporaries; 2] = [Temporaries::Unnamed, Temporaries::Named];

    fn open(tmp: &TempDir, temporaries: Temporaries) -> Store {
        let store = Store::open_with(&tmp.0, temporaries).unwrap();
        assert_eq!(store.temporaries(), temporaries, "the file system of /tmp");
        store
    }

    // --- publishing ---

    #[test]
    fn test_committed_upload_appears_under_its_name_only_then() {
        for mode in BOTH {
            let tmp = TempDir::new(&format!("store-commit-{mode:?}"));
            let mut store = open(&tmp, mode);
            let mut up = store.begin("a.txt").unwrap();
            up.write(b"hello").unwrap();
            let during = names_in(&tmp.0);
            match mode {
                Temporaries::Unnamed => assert!(during.is_empty(), "{during:?}"),
                Temporaries::Named => {
                    assert_eq!(during.len(), 1);
                    let pid = std::process::id();
                    assert!(
                        during[0].starts_with(&format!("{NAMED_TMP_PREFIX}{pid}-")),
                        "{during:?}"
                    );
                }
            }
            up.commit().unwrap();
            assert_eq!(fs::read(tmp.0.join("a.txt")).unwrap(), b"hello");
            assert_eq!(
                names_in(&tmp.0),
                ["a.txt"],
                "{mode:?}: only the stored file"
            );
        }
    }

    #[test]
    fn test_dropped_upload_leaves_nothing() {
        for mode in BOTH {
            let tmp = TempDir::new(&format!("store-drop-{mode:?}"));
            let mut store = open(&tmp, mode);
            let mut up = store.begin("b.txt").unwrap();
            up.write(b"partial").unwrap();
            drop(up);
            assert!(names_in(&tmp.0).is_empty(), "{mode:?}");
            // The name is free again.
            assert!(store.begin("b.txt").is_ok());
        }
    }

    #[test]
    fn test_existing_file_is_never_replaced() {
        for mode in BOTH {
            let tmp = TempDir::new(&format!("store-exists-{mode:?}"));
            let mut store = open(&tmp, mode);
            fs::write(tmp.0.join("c.txt"), b"original").unwrap();
            assert!(matches!(store.begin("c.txt"), Err(StoreError::Exists)));
            // A dangling link counts as a name too, and is not followed.
            symlink("/nonexistent/target", tmp.0.join("link")).unwrap();
            assert!(matches!(store.begin("link"), Err(StoreError::Exists)));
            // A file that appears during the transfer is not replaced either.
            let mut up = store.begin("d.txt").unwrap();
            up.write(b"new").unwrap();
            fs::write(tmp.0.join("d.txt"), b"someone else's").unwrap();
            assert!(matches!(up.commit(), Err(StoreError::Exists)));
            assert_eq!(fs::read(tmp.0.join("d.txt")).unwrap(), b"someone else's");
            assert_eq!(names_in(&tmp.0), ["c.txt", "d.txt", "link"], "{mode:?}");
        }
    }

    #[test]
    fn test_concurrent_upload_of_one_name_is_refused() {
        let tmp = TempDir::new("store-busy");
        let mut store = Store::open(&tmp.0).unwrap();
        let _first = store.begin("e.txt").unwrap();
        assert!(matches!(store.begin("e.txt"), Err(StoreError::Busy)));
    }

    /// Two stores on one directory (as two processes would be): the second one's start, its
    /// transfers and its failures leave the first's transfer alone, and the same name is
    /// stored once.
    #[test]
    fn test_two_stores_on_one_directory_leave_each_other_alone() {
        for mode in BOTH {
            let tmp = TempDir::new(&format!("store-two-{mode:?}"));
            let mut first = open(&tmp, mode);
            let mut up = first.begin("shared.txt").unwrap();
            up.write(b"first ").unwrap();
            let mut second = open(&tmp, mode);
            let mut other = second.begin("other.txt").unwrap();
            other.write(b"other").unwrap();
            drop(second.begin("failed.txt").unwrap()); // a failed transfer there
            // The same name in both: the second to commit is told, nothing is replaced.
            let mut rival = second.begin("shared.txt").unwrap();
            rival.write(b"rival").unwrap();
            up.write(b"content").unwrap();
            up.commit().unwrap();
            assert!(matches!(rival.commit(), Err(StoreError::Exists)));
            other.commit().unwrap();
            assert_eq!(
                fs::read(tmp.0.join("shared.txt")).unwrap(),
                b"first content"
            );
            assert_eq!(names_in(&tmp.0), ["other.txt", "shared.txt"], "{mode:?}");
        }
    }

    // --- never leaving DIR ---

    /// The attack of issue 15: a link at the old partial directory's name. Opening the store
    /// neither empties nor follows it, and no transfer puts anything there.
    #[test]
    fn test_a_link_at_the_old_partial_directory_is_left_alone() {
        for mode in BOTH {
            let tmp = TempDir::new(&format!("store-legacy-link-{mode:?}"));
            let target = TempDir::new(&format!("store-legacy-target-{mode:?}"));
            fs::create_dir_all(&tmp.0).unwrap();
            fs::create_dir_all(&target.0).unwrap();
            fs::write(target.0.join("precious"), b"keep").unwrap();
            symlink(&target.0, tmp.0.join(LEGACY_PARTIAL_DIR)).unwrap();
            let mut store = open(&tmp, mode);
            let mut up = store.begin("x").unwrap();
            up.write(b"x").unwrap();
            up.commit().unwrap();
            drop(store.begin("y").unwrap());
            assert_eq!(names_in(&target.0), ["precious"], "{mode:?}");
            assert_eq!(fs::read(target.0.join("precious")).unwrap(), b"keep");
            assert_eq!(names_in(&tmp.0), [LEGACY_PARTIAL_DIR, "x"]);
        }
    }

    /// A real old partial directory, with a temporary of an older resound still in it: kept.
    #[test]
    fn test_the_old_partial_directory_is_not_emptied() {
        let tmp = TempDir::new("store-legacy-dir");
        fs::create_dir_all(tmp.0.join(LEGACY_PARTIAL_DIR)).unwrap();
        fs::write(tmp.0.join(LEGACY_PARTIAL_DIR).join("123-4"), b"in use").unwrap();
        Store::open(&tmp.0).unwrap();
        assert_eq!(names_in(&tmp.0.join(LEGACY_PARTIAL_DIR)), ["123-4"]);
    }

    /// Another process's named temporary (or one left by a crash) is never removed.
    #[test]
    fn test_named_temporaries_of_others_are_kept() {
        let tmp = TempDir::new("store-others");
        fs::create_dir_all(&tmp.0).unwrap();
        let theirs = format!("{NAMED_TMP_PREFIX}1-0123456789abcdef");
        fs::write(tmp.0.join(&theirs), b"theirs").unwrap();
        let mut store = open(&tmp, Temporaries::Named);
        drop(store.begin("f").unwrap());
        let mut up = store.begin("g").unwrap();
        up.write(b"g").unwrap();
        up.commit().unwrap();
        assert_eq!(names_in(&tmp.0), [theirs.as_str(), "g"]);
    }

    /// A named temporary swapped for another file during the transfer: the other file is not
    /// ours to remove.
    #[test]
    fn test_a_swapped_named_temporary_is_not_removed() {
        let tmp = TempDir::new("store-swapped");
        let mut store = open(&tmp, Temporaries::Named);
        let up = store.begin("h").unwrap();
        let ours = names_in(&tmp.0).pop().unwrap();
        fs::rename(tmp.0.join(&ours), tmp.0.join("moved")).unwrap();
        fs::write(tmp.0.join(&ours), b"planted").unwrap();
        drop(up);
        assert_eq!(fs::read(tmp.0.join(&ours)).unwrap(), b"planted");
    }

    #[test]
    fn test_a_link_or_a_file_at_dir_is_refused_at_open() {
        let tmp = TempDir::new("store-dir-link");
        fs::create_dir_all(tmp.0.join("real")).unwrap();
        symlink(tmp.0.join("real"), tmp.0.join("link")).unwrap();
        let e = Store::open(&tmp.0.join("link")).err().unwrap();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        fs::write(tmp.0.join("file"), b"").unwrap();
        let e = Store::open(&tmp.0.join("file")).err().unwrap();
        assert!(e.to_string().contains("not a directory"), "{e}");
        // A dangling link is not created through either.
        symlink(tmp.0.join("nowhere"), tmp.0.join("dangling")).unwrap();
        assert!(Store::open(&tmp.0.join("dangling")).is_err());
        assert!(!tmp.0.join("nowhere").exists());
    }

    #[test]
    fn test_missing_dir_is_created() {
        let tmp = TempDir::new("store-create");
        Store::open(&tmp.0.join("a").join("b")).unwrap();
        assert!(tmp.0.join("a").join("b").is_dir());
    }

    // --- faults before `ok` ---

    /// DIR removed while serving: refused at `begin`, naming DIR; created again by someone: the
    /// next transfer adopts it.
    #[test]
    fn test_removed_dir_is_reported_and_a_recreated_one_adopted() {
        for mode in BOTH {
            let tmp = TempDir::new(&format!("store-removed-{mode:?}"));
            let dir = tmp.0.join("received");
            let mut store = Store::open_with(&dir, mode).unwrap();
            let mut up = store.begin("during").unwrap();
            up.write(b"x").unwrap();
            fs::remove_dir_all(&dir).unwrap();
            let e = store.begin("after").err().unwrap();
            assert!(matches!(e, StoreError::Removed(_)), "{mode:?}: {e}");
            assert_eq!(
                e.to_string(),
                format!(
                    "cannot store file: {}: the directory was removed while the server was \
                     running",
                    dir.display()
                )
            );
            // A transfer in progress cannot be published into the removed directory.
            assert!(matches!(up.commit(), Err(StoreError::Removed(_))));
            fs::create_dir(&dir).unwrap();
            let mut up = store.begin("again").unwrap();
            up.write(b"y").unwrap();
            up.commit().unwrap();
            assert_eq!(names_in(&dir), ["again"], "{mode:?}");
        }
    }

    /// A directory the server cannot write into is found at `begin`, and the error names it.
    /// (Root writes anywhere, so as root the mode bits cannot make this fault; the
    /// integration test drops privileges in a child process instead.)
    #[test]
    fn test_read_only_dir_is_refused_at_begin_naming_it() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            return;
        }
        let tmp = TempDir::new("store-read-only");
        let mut store = Store::open(&tmp.0).unwrap();
        fs::set_permissions(&tmp.0, fs::Permissions::from_mode(0o555)).unwrap();
        let e = store.begin("x").err().unwrap();
        fs::set_permissions(&tmp.0, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(
            e.to_string()
                .starts_with(&format!("cannot store file: {}: ", tmp.0.display())),
            "{e}"
        );
    }

    /// Out of descriptors: the client hears `too many connections`, never `os error 24`.
    #[test]
    fn test_no_descriptor_left_is_too_many_connections() {
        let tmp = TempDir::new("store-emfile");
        let store = Store::open(&tmp.0).unwrap();
        let e = store
            .dir
            .error(tmp.0.clone(), io::Error::from_raw_os_error(libc::EMFILE));
        assert_eq!(e.to_string(), "too many connections");
        let e = store
            .dir
            .error(tmp.0.clone(), io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(e.to_string().contains(&tmp.0.display().to_string()), "{e}");
    }
}
