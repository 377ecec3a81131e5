//! The HTTP `Range` header of a blob request, read into the pull flow's [`RangeSpec`]: one
//! byte range or none (several ranges, other units and garbage get the whole blob).

use crate::pull::RangeSpec;

/// Parses a single byte range. Anything else (several ranges, other units, garbage) is
/// `None`, and the whole blob is served, as HTTP allows.
pub fn parse_range(header: &str) -> Option<RangeSpec> {
    let spec = header.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (start, end) = spec.split_once('-')?;
    let (start, end) = (start.trim(), end.trim());
    if start.is_empty() {
        return end.parse().ok().map(RangeSpec::Suffix);
    }
    let start: u64 = start.parse().ok()?;
    let end = if end.is_empty() {
        None
    } else {
        Some(end.parse::<u64>().ok()?)
    };
    if end.is_some_and(|end| end < start) {
        return None;
    }
    Some(RangeSpec::From { start, end })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_resolves_ranges() {
        let r = parse_range;
        assert_eq!(r("bytes=0-9").unwrap().resolve(100), Some((0, 9)));
        assert_eq!(r("bytes=90-").unwrap().resolve(100), Some((90, 99)));
        assert_eq!(r("bytes=90-1000").unwrap().resolve(100), Some((90, 99)));
        assert_eq!(r("bytes=-10").unwrap().resolve(100), Some((90, 99)));
        assert_eq!(r("bytes=-1000").unwrap().resolve(100), Some((0, 99)));
        assert_eq!(r("bytes=100-").unwrap().resolve(100), None);
        assert_eq!(r("bytes=-0").unwrap().resolve(100), None);
        assert_eq!(r("bytes=5-1"), None);
        assert_eq!(r("bytes=0-1,5-6"), None);
        assert_eq!(r("items=0-1"), None);
        assert_eq!(r("bytes=x-1"), None);
    }
}
