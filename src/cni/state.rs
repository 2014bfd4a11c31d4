//! The per-container state: the delegate config ADD generated, kept as
//! `<dataDir>/<containerID>` so DEL (and CHECK) run the delegate with exactly the
//! config it was created with, even if subnet.env or our config changed since.
//!
//! # Files owned by this module
//! - `<dataDir>/` — created 0700 (upstream's `os.MkdirAll(dataDir, 0700)`), never removed.
//! - `<dataDir>/<containerID>` — mode 0600, written by ADD, removed by DEL.
//! - `<dataDir>/.<containerID>.tmp<pid>` — transient, during an atomic write only. A
//!   [`ContainerId`] never starts with `.`, so it cannot clash with a state file.

use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::types::{CniError, ContainerId};
use crate::subnet::env::write_file_atomic;

/// The directory holding the state files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The state file of one container.
    pub fn path(&self, id: &ContainerId) -> PathBuf {
        self.dir.join(id.as_str())
    }

    /// Saves `conf` for `id`: directory 0700, file 0600, written to a temp file,
    /// fsynced and renamed, so a crash never leaves DEL a truncated config.
    pub fn save(&self, id: &ContainerId, conf: &[u8]) -> Result<(), CniError> {
        let path = self.path(id);
        let err = |source| CniError::State {
            action: "save",
            path: path.clone(),
            source,
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(err)?;
        write_file_atomic(&path, conf, 0o600).map_err(err)
    }

    /// The saved config of `id`, or `None` if there is none.
    pub fn load(&self, id: &ContainerId) -> Result<Option<Vec<u8>>, CniError> {
        let path = self.path(id);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CniError::State {
                action: "read",
                path,
                source,
            }),
        }
    }

    /// Removes the saved config of `id`; a missing file is not an error.
    pub fn remove(&self, id: &ContainerId) -> io::Result<()> {
        match fs::remove_file(self.path(id)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn save_load_remove_round_trip_with_private_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::new(tmp.path().join("a/flannel"));
        let id = ContainerId::new("c1").unwrap();
        assert_eq!(state.load(&id).unwrap(), None);
        state.save(&id, b"{\"type\":\"bridge\"}").unwrap();
        state.save(&id, b"{\"type\":\"macvlan\"}").unwrap();
        assert_eq!(
            state.load(&id).unwrap().as_deref(),
            Some(&b"{\"type\":\"macvlan\"}"[..])
        );
        assert_eq!((mode(state.dir()), mode(&state.path(&id))), (0o700, 0o600));
        assert_eq!(
            fs::read_dir(state.dir()).unwrap().count(),
            1,
            "no temp files left"
        );
        state.remove(&id).unwrap();
        state.remove(&id).unwrap();
        assert_eq!(state.load(&id).unwrap(), None);
    }

    /// Ids up to the file-name limit work (the temp file's name must not be longer).
    #[test]
    fn the_longest_container_ids_are_saved() {
        let tmp = tempfile::tempdir().unwrap();
        let state = StateDir::new(tmp.path());
        for len in [244, 245, 250, 255] {
            let id = ContainerId::new(&"c".repeat(len)).unwrap();
            state
                .save(&id, b"{}")
                .unwrap_or_else(|e| panic!("id of {len}: {e}"));
            assert_eq!(state.load(&id).unwrap().as_deref(), Some(&b"{}"[..]));
            state.remove(&id).unwrap();
        }
    }

    #[test]
    fn unwritable_dir_is_an_io_error_naming_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("not-a-dir");
        fs::write(&file, b"").unwrap();
        let state = StateDir::new(&file);
        let err = state
            .save(&ContainerId::new("c1").unwrap(), b"{}")
            .unwrap_err();
        assert_eq!(err.code(), crate::cni::types::ErrorCode::IO_FAILURE);
        assert!(err.to_string().contains("not-a-dir/c1"), "{err}");
    }
}
