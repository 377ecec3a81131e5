//! A cache failure with its cause kept: the I/O error underneath (disk full, read-only,
//! permission denied, ...) or a limit of the cache's own (no room within its size), so the
//! status and the log can tell them apart instead of reading message text.

use std::fmt;
use std::io;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct CacheFailure {
    /// What the cache was doing ("writing a fill", "opening a cached blob").
    context: String,
    /// The I/O error, when there was one.
    source: Option<Arc<io::Error>>,
}

impl CacheFailure {
    /// A failure of the filesystem underneath.
    pub fn io(context: impl Into<String>, error: io::Error) -> Self {
        CacheFailure {
            context: context.into(),
            source: Some(Arc::new(error)),
        }
    }

    /// A failure of the cache's own (a limit, a stopped worker): no I/O error underneath.
    pub fn new(reason: impl Into<String>) -> Self {
        CacheFailure {
            context: reason.into(),
            source: None,
        }
    }

    /// The kind of the I/O error underneath, if any.
    pub(crate) fn io_kind(&self) -> Option<io::ErrorKind> {
        self.source.as_ref().map(|e| e.kind())
    }

    /// The disk (or the quota) is full: the client may retry, ideally elsewhere.
    pub(crate) fn is_out_of_space(&self) -> bool {
        matches!(
            self.io_kind(),
            Some(io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
        )
    }
}

impl fmt::Display for CacheFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(error) => write!(f, "{}: {error}", self.context),
            None => f.write_str(&self.context),
        }
    }
}

impl std::error::Error for CacheFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e.as_ref() as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_io_cause_survives_and_is_told_apart() {
        let full = CacheFailure::io("writing a fill", io::Error::from_raw_os_error(libc::ENOSPC));
        let denied = CacheFailure::io("writing a fill", io::Error::from_raw_os_error(libc::EACCES));
        assert!(full.is_out_of_space());
        assert!(!denied.is_out_of_space());
        assert_eq!(denied.io_kind(), Some(io::ErrorKind::PermissionDenied));
        assert!(full.to_string().starts_with("writing a fill: "));
        assert!(std::error::Error::source(&full).is_some());
        let own = CacheFailure::new("no room within the cache size");
        assert_eq!(own.io_kind(), None);
        assert_eq!(own.to_string(), "no room within the cache size");
    }
}
