//! Tar entries as every archive here writes them: mtime 0, uid/gid 0 and no
//! user or group names, so archives are reproducible.

use std::io::{self, Write};

use tar::{EntryType, Header};

use crate::blob::BuildError;

/// Mode of directories that are created implicitly as parents of entries.
pub(crate) const IMPLICIT_DIR_MODE: u32 = 0o755;

/// A tar header with fixed metadata: mtime 0, uid/gid 0, no user/group names.
pub(crate) fn new_header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header
}

pub(crate) fn append_file<W: Write>(
    archive: &mut tar::Builder<W>,
    archive_name: &'static str,
    path: &str,
    data: &[u8],
    mode: u32,
) -> Result<(), BuildError> {
    let mut header = new_header(EntryType::Regular, mode, data.len() as u64);
    archive
        .append_data(&mut header, path, data)
        .map_err(tar_error(archive_name, path))
}

pub(crate) fn append_dir<W: Write>(
    archive: &mut tar::Builder<W>,
    archive_name: &'static str,
    path: &str,
    mode: u32,
) -> Result<(), BuildError> {
    let mut header = new_header(EntryType::Directory, mode, 0);
    archive
        .append_data(&mut header, path, io::empty())
        .map_err(tar_error(archive_name, path))
}

pub(crate) fn tar_error(archive: &'static str, path: &str) -> impl FnOnce(io::Error) -> BuildError {
    let path = path.to_owned();
    move |source| BuildError::Tar {
        archive,
        path,
        source,
    }
}
