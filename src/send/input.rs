//! What `resound send` reads: a regular file (known size, can be read again at any offset, can be
//! handed to `sendfile`) or standard input (a stream: no size, read once).
//!
//! A path that is not a regular file — a FIFO, a device, a directory, a socket — is refused at
//! once. It is opened with `O_NONBLOCK`, so a FIFO with no writer cannot block the `open`, and
//! checked with `fstat` on the opened descriptor (never by path first, which another process
//! could swap between the check and the open). Refused rather than streamed, because a path
//! promises a size: the framed header declares it, and the server can then tell a complete file
//! from one cut short. A stream of unknown length is sent on purpose, with `send - --name NAME
//! < PATH`, and the error says so.
//!
//! A file is also watched for changes: its size and modification time are taken at the open and
//! compared before the end of the transfer is announced, and a read that comes up short means
//! it shrank. A file that changed is never confirmed (see `send.rs`).

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

use super::{FileKind, SendError};
use crate::digest::{Algorithm, Digest, Hasher};

/// Where the bytes come from.
#[derive(Clone, Copy, Debug)]
pub enum Source<'a> {
    /// A regular file.
    Path(&'a Path),
    /// Standard input (`resound send -`).
    Stdin,
}

/// An opened source.
pub struct Input {
    /// How messages name it: the path as given, or "standard input".
    pub label: String,
    kind: Kind,
}

enum Kind {
    File {
        file: File,
        at_open: Snapshot,
    },
    /// Standard input, as a File on a duplicate of descriptor 0: unbuffered, so that polling the
    /// descriptor tells the truth about what is left to read (a `BufReader` may hold bytes the
    /// descriptor no longer shows).
    Stream(File),
}

/// What changes when a file is written to: its size and its modification time (to the
/// nanosecond, as the filesystem keeps it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Snapshot {
    len: u64,
    mtime: (i64, i64),
}

impl Snapshot {
    fn of(meta: &std::fs::Metadata) -> Snapshot {
        Snapshot {
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        }
    }
}

impl Input {
    pub fn open(source: Source) -> Result<Input, SendError> {
        let path = match source {
            Source::Stdin => {
                let label = "standard input".to_string();
                let fd =
                    io::stdin()
                        .as_fd()
                        .try_clone_to_owned()
                        .map_err(|e| SendError::Input {
                            what: label.clone(),
                            err: e,
                        })?;
                return Ok(Input {
                    label,
                    kind: Kind::Stream(File::from(fd)),
                });
            }
            Source::Path(path) => path,
        };
        let label = path.display().to_string();
        let fail = |e: io::Error| SendError::Input {
            what: label.clone(),
            err: e,
        };
        // O_NONBLOCK: opening a FIFO for reading otherwise waits for a writer, forever.
        // O_NOCTTY: a terminal device must not become our controlling terminal.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)
            .map_err(fail)?;
        let meta = file.metadata().map_err(fail)?;
        let ft = meta.file_type();
        if !ft.is_file() {
            let kind = if ft.is_dir() {
                FileKind::Directory
            } else if ft.is_fifo() {
                FileKind::Fifo
            } else if ft.is_char_device() {
                FileKind::CharDevice
            } else if ft.is_block_device() {
                FileKind::BlockDevice
            } else if ft.is_socket() {
                FileKind::Socket
            } else {
                FileKind::Unknown
            };
            return Err(SendError::NotRegular {
                path: label.clone(),
                kind,
            });
        }
        // A regular file ignores O_NONBLOCK; it is cleared anyway, so nothing below has to
        // wonder whether a read may return EAGAIN.
        clear_nonblocking(&file).map_err(fail)?;
        Ok(Input {
            label,
            kind: Kind::File {
                file,
                at_open: Snapshot::of(&meta),
            },
        })
    }

    /// The size, for a regular file.
    pub fn size(&self) -> Option<u64> {
        match &self.kind {
            Kind::File { at_open, .. } => Some(at_open.len),
            Kind::Stream(_) => None,
        }
    }

    /// The file, for `sendfile`.
    pub fn file(&self) -> Option<&File> {
        match &self.kind {
            Kind::File { file, .. } => Some(file),
            Kind::Stream(_) => None,
        }
    }

    /// The descriptor of a stream, to poll it (None for a file, which is always ready).
    pub fn stream_fd(&self) -> Option<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        match &self.kind {
            Kind::File { .. } => None,
            Kind::Stream(stdin) => Some(stdin.as_raw_fd()),
        }
    }

    /// Can the bytes be read a second time (to hash them with another algorithm)?
    pub fn rereadable(&self) -> bool {
        matches!(self.kind, Kind::File { .. })
    }

    /// Read the bytes at offset `at` into `buf`: for a file, exactly
    /// `min(buf.len(), size - at)` bytes (fewer means it shrank: an error); for a stream,
    /// whatever one read gives. 0 = the end.
    pub fn read_at(&mut self, at: u64, buf: &mut [u8]) -> Result<usize, SendError> {
        match &mut self.kind {
            Kind::File { file, at_open } => {
                let want = (at_open.len.saturating_sub(at)).min(buf.len() as u64) as usize;
                // `pread`, not `read`: the offset is explicit, and the file position is never
                // used (sendfile is given the offset too).
                match file.read_exact_at(&mut buf[..want], at) {
                    Ok(()) => Ok(want),
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(SendError::Changed {
                        path: self.label.clone(),
                        how: format!("it shrank below {} bytes", at_open.len),
                    }),
                    Err(e) => Err(SendError::Input {
                        what: self.label.clone(),
                        err: e,
                    }),
                }
            }
            Kind::Stream(stdin) => loop {
                match stdin.read(buf) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        return Err(SendError::Input {
                            what: self.label.clone(),
                            err: e,
                        });
                    }
                }
            },
        }
    }

    /// Fail if the file's size or modification time differs from the open. A stream cannot
    /// change in that sense: it is whatever was read.
    pub fn check_unchanged(&self) -> Result<(), SendError> {
        let Kind::File { file, at_open } = &self.kind else {
            return Ok(());
        };
        let now = file.metadata().map_err(|e| SendError::Input {
            what: self.label.clone(),
            err: e,
        })?;
        let now = Snapshot::of(&now);
        if now == *at_open {
            return Ok(());
        }
        let how = if now.len != at_open.len {
            format!("its size went from {} to {} bytes", at_open.len, now.len)
        } else {
            "it was modified".into()
        };
        Err(SendError::Changed {
            path: self.label.clone(),
            how,
        })
    }

    /// Hash the whole file again with `algorithm` (for a server that confirms with another
    /// algorithm than the one hashed while sending). The file must not have changed since.
    pub fn rehash(&mut self, algorithm: Algorithm, buf: &mut [u8]) -> Result<Digest, SendError> {
        let mut hasher = Hasher::new(algorithm);
        let mut at = 0;
        loop {
            let n = self.read_at(at, buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            at += n as u64;
        }
        self.check_unchanged()?;
        Ok(hasher.finalize())
    }
}

fn clear_nonblocking(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl F_GETFL/F_SETFL on a descriptor we own; no memory is passed.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
