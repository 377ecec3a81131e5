//! Which upstreams are suspect of sending wrong bytes, kept in a small file beside the cache
//! (`upstream-suspects.json`) so that a restart does not forget them: a suspect's first wrong
//! body after a restart would otherwise reach clients again. Soft state: an unreadable file
//! counts as empty, and a failed write is logged.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

/// The file's name in the cache directory.
pub const SUSPECTS_FILE: &str = "upstream-suspects.json";

#[derive(Debug)]
pub struct SuspectFile {
    path: PathBuf,
    /// Serializes read-modify-write cycles of every upstream pool.
    lock: Mutex<()>,
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

impl SuspectFile {
    pub fn new(path: PathBuf) -> Self {
        SuspectFile {
            path,
            lock: Mutex::new(()),
        }
    }

    /// Each upstream still suspect, with how much longer it stays so.
    pub(crate) fn load(&self) -> BTreeMap<String, Duration> {
        let now = unix_ms(SystemTime::now());
        self.read()
            .into_iter()
            .filter(|(_, until)| *until > now)
            .map(|(name, until)| (name, Duration::from_millis(until - now)))
            .collect()
    }

    fn read(&self) -> BTreeMap<String, u64> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %self.path.display(), error = %e, "cache: the upstream suspects file is not readable JSON; starting without it");
                BTreeMap::new()
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cache: cannot read the upstream suspects file; starting without it");
                BTreeMap::new()
            }
        }
    }

    /// Records that `upstream` is suspect for `how_long` from now (`None`: no longer).
    /// A small synchronous write, made only when an upstream sends wrong bytes or is cleared.
    pub(crate) fn set(&self, upstream: &str, how_long: Option<Duration>) {
        let _serialized = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let now = SystemTime::now();
        let mut suspects = self.read();
        suspects.retain(|_, until| *until > unix_ms(now));
        match how_long {
            Some(how_long) => suspects.insert(upstream.to_owned(), unix_ms(now + how_long)),
            None => suspects.remove(upstream),
        };
        let written = serde_json::to_vec(&suspects)
            .map_err(std::io::Error::other)
            .and_then(|json| {
                let temporary = self.path.with_extension("json.tmp");
                std::fs::write(&temporary, json)?;
                std::fs::rename(&temporary, &self.path)
            });
        if let Err(e) = written {
            tracing::warn!(path = %self.path.display(), error = %e, "cache: cannot write the upstream suspects file; a restart will forget them");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suspects_survive_a_reload_until_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        let file = SuspectFile::new(dir.path().join(SUSPECTS_FILE));
        assert!(file.load().is_empty());
        file.set("primary", Some(Duration::from_secs(300)));
        file.set("secondary", Some(Duration::from_millis(1)));
        std::thread::sleep(Duration::from_millis(5));
        let again = SuspectFile::new(dir.path().join(SUSPECTS_FILE));
        let loaded = again.load();
        assert_eq!(loaded.keys().collect::<Vec<_>>(), vec!["primary"]);
        assert!(loaded["primary"] > Duration::from_secs(290));
        again.set("primary", None);
        assert!(file.load().is_empty());
        std::fs::write(dir.path().join(SUSPECTS_FILE), "not json").unwrap();
        assert!(file.load().is_empty(), "an unreadable file counts as empty");
    }
}
