//! One scalar setting declared once: its key, the kind of value it takes and its default. The
//! declaration parses the written value (reporting problems, falling back to the default),
//! lets a flag win over the file, and renders the effective value back for `check-config`.

use super::values::{DurationRule, InvalidValue, Problems, parse_duration_setting, parse_size};
use crate::upstream::Hedging;
use std::time::Duration;

/// How one kind of value is read from what the operator wrote and written back.
pub(crate) trait Kind {
    /// As the file (and a flag) holds it.
    type Written: std::fmt::Display;
    /// As ferry uses it.
    type Value: Clone;
    fn read(&self, written: &Self::Written) -> Result<Self::Value, InvalidValue>;
    fn write(&self, value: &Self::Value) -> Self::Written;
}

/// A setting: `key` in the file, the kind of its value, the value when it is not written,
/// and the command-line flag that may give it instead (`--tag-ttl`), if any.
pub(crate) struct Setting<K: Kind> {
    pub(crate) key: &'static str,
    pub(crate) kind: K,
    pub(crate) default: K::Value,
    pub(crate) flag: Option<&'static str>,
}

impl<K: Kind> Setting<K> {
    /// The value written in the file, or the default (also when the written one is invalid:
    /// then it is reported under the key).
    pub(crate) fn parse(&self, written: Option<&K::Written>, problems: &mut Problems) -> K::Value {
        self.parse_under(self.key, written, problems)
    }

    /// The flag's value if given (reported under the flag's name), else the file's.
    pub(crate) fn parse_flag_over_file(
        &self,
        flag_value: Option<&K::Written>,
        written: Option<&K::Written>,
        problems: &mut Problems,
    ) -> K::Value {
        match flag_value {
            Some(given) => self.parse_under(self.flag.unwrap_or(self.key), Some(given), problems),
            None => self.parse(written, problems),
        }
    }

    fn parse_under(
        &self,
        key: &str,
        written: Option<&K::Written>,
        problems: &mut Problems,
    ) -> K::Value {
        let Some(written) = written else {
            return self.default.clone();
        };
        self.kind.read(written).unwrap_or_else(|reason| {
            problems.add(key, &written.to_string(), reason);
            self.default.clone()
        })
    }

    /// The effective value as the file would say it (for `check-config`).
    pub(crate) fn render(&self, value: &K::Value) -> Option<K::Written> {
        Some(self.kind.write(value))
    }
}

/// A duration such as `30s` or `500ms`.
pub(crate) struct DurationKind(pub(crate) DurationRule);

impl Kind for DurationKind {
    type Written = String;
    type Value = Duration;
    fn read(&self, written: &String) -> Result<Duration, InvalidValue> {
        // A rule with an off word belongs to `OptionalDurationKind`; here it means zero.
        parse_duration_setting(written, self.0).map(Option::unwrap_or_default)
    }
    fn write(&self, value: &Duration) -> String {
        humantime::format_duration(*value).to_string()
    }
}

/// A positive duration, or a word (`off`, `unlimited`) for none.
pub(crate) struct OptionalDurationKind {
    pub(crate) off_word: &'static str,
}

impl Kind for OptionalDurationKind {
    type Written = String;
    type Value = Option<Duration>;
    fn read(&self, written: &String) -> Result<Option<Duration>, InvalidValue> {
        let rule = DurationRule {
            zero_allowed: false,
            off_word: Some(self.off_word),
        };
        parse_duration_setting(written, rule)
    }
    fn write(&self, value: &Option<Duration>) -> String {
        value.map_or(self.off_word.to_owned(), |duration| {
            humantime::format_duration(duration).to_string()
        })
    }
}

/// A byte size such as `256KiB` or `50GiB`, at least `min`.
pub(crate) struct SizeKind {
    pub(crate) min: u64,
    /// Why a smaller value is refused.
    pub(crate) below_min: &'static str,
}

impl Kind for SizeKind {
    type Written = String;
    type Value = u64;
    fn read(&self, written: &String) -> Result<u64, InvalidValue> {
        let bytes = parse_size(written)?;
        if bytes < self.min {
            return Err(InvalidValue::new(self.below_min));
        }
        Ok(bytes)
    }
    fn write(&self, value: &u64) -> String {
        format!("{value}B")
    }
}

/// A byte size, or `off_word` for none (`cache_size = "unlimited"`); zero is refused.
pub(crate) struct OptionalSizeKind {
    pub(crate) off_word: &'static str,
}

impl Kind for OptionalSizeKind {
    type Written = String;
    type Value = Option<u64>;
    fn read(&self, written: &String) -> Result<Option<u64>, InvalidValue> {
        if written == self.off_word {
            return Ok(None);
        }
        match parse_size(written)? {
            0 => Err(InvalidValue::new(format!(
                "must be greater than zero, or \"{}\"",
                self.off_word
            ))),
            bytes => Ok(Some(bytes)),
        }
    }
    fn write(&self, value: &Option<u64>) -> String {
        value.map_or(self.off_word.to_owned(), |bytes| format!("{bytes}B"))
    }
}

/// A count, at least `min`.
pub(crate) struct CountKind {
    pub(crate) min: u32,
}

impl Kind for CountKind {
    type Written = u32;
    type Value = u32;
    fn read(&self, written: &u32) -> Result<u32, InvalidValue> {
        if *written < self.min {
            return Err(InvalidValue::new(format!("must be at least {}", self.min)));
        }
        Ok(*written)
    }
    fn write(&self, value: &u32) -> u32 {
        *value
    }
}

/// `true` or `false`.
pub(crate) struct SwitchKind;

impl Kind for SwitchKind {
    type Written = bool;
    type Value = bool;
    fn read(&self, written: &bool) -> Result<bool, InvalidValue> {
        Ok(*written)
    }
    fn write(&self, value: &bool) -> bool {
        *value
    }
}

/// `hedge_delay`: `auto` (from each upstream's own times to headers), `off`, or a duration.
pub(crate) struct HedgeKind;

impl Kind for HedgeKind {
    type Written = String;
    type Value = Hedging;
    fn read(&self, written: &String) -> Result<Hedging, InvalidValue> {
        if written.trim() == "auto" {
            return Ok(Hedging::Adaptive);
        }
        let off = OptionalDurationKind { off_word: "off" };
        Ok(off.read(written)?.map_or(Hedging::Off, Hedging::After))
    }
    fn write(&self, value: &Hedging) -> String {
        match value {
            Hedging::Off => "off".to_owned(),
            Hedging::Adaptive => "auto".to_owned(),
            Hedging::After(delay) => humantime::format_duration(*delay).to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::values::ANY_DURATION;

    #[test]
    fn a_declaration_parses_defaults_reports_and_renders() {
        const TTL: Setting<DurationKind> = Setting {
            key: "tag_ttl",
            kind: DurationKind(ANY_DURATION),
            default: Duration::from_secs(60),
            flag: Some("--tag-ttl"),
        };
        let mut problems = Problems::default();
        assert_eq!(TTL.parse(None, &mut problems), Duration::from_secs(60));
        assert_eq!(
            TTL.parse(Some(&"2m".to_owned()), &mut problems),
            Duration::from_secs(120)
        );
        assert!(problems.0.is_empty());
        assert_eq!(
            TTL.parse(Some(&"soon".to_owned()), &mut problems),
            Duration::from_secs(60)
        );
        assert_eq!(problems.0.len(), 1);
        assert_eq!(problems.0[0].key, "tag_ttl");
        let flagged = TTL.parse_flag_over_file(
            Some(&"bad".to_owned()),
            Some(&"5s".to_owned()),
            &mut problems,
        );
        assert_eq!(flagged, Duration::from_secs(60));
        assert_eq!(problems.0[1].key, "--tag-ttl", "reported under the flag");
        assert_eq!(
            TTL.render(&Duration::from_secs(90)).as_deref(),
            Some("1m 30s")
        );
        let size = Setting {
            key: "cache_size",
            kind: OptionalSizeKind {
                off_word: "unlimited",
            },
            default: None,
            flag: None,
        };
        assert_eq!(size.parse(Some(&"unlimited".into()), &mut problems), None);
        assert_eq!(size.parse(Some(&"1KiB".into()), &mut problems), Some(1024));
        assert_eq!(size.parse(Some(&"0".into()), &mut problems), None);
        assert!(problems.0[2].reason.contains("greater than zero"));
        assert_eq!(size.render(&Some(1024)).as_deref(), Some("1024B"));
        let hedge = Setting {
            key: "hedge_delay",
            kind: HedgeKind,
            default: Hedging::Adaptive,
            flag: None,
        };
        for written in ["auto", "off", "250ms"] {
            let value = hedge.parse(Some(&written.to_owned()), &mut problems);
            let rendered = hedge.render(&value).unwrap();
            assert_eq!(
                hedge.parse(Some(&rendered), &mut problems),
                value,
                "{written} survives a round trip"
            );
        }
    }
}
