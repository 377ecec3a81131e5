//! The grammar of setting values (sizes, durations with their "off" words, flag over file)
//! and `Problems`, the collector every section reports into so all problems come out at once.

use super::ConfigProblem;
use std::time::Duration;

/// Every invalid setting found so far, in the order found.
#[derive(Debug, Default)]
pub(crate) struct Problems(pub(crate) Vec<ConfigProblem>);

impl Problems {
    pub(crate) fn add(&mut self, key: &str, value: &str, reason: impl Into<String>) {
        self.0.push(ConfigProblem {
            key: key.to_owned(),
            value: value.to_owned(),
            reason: reason.into(),
        });
    }

    /// The duration `value` holds (`default` when not given, or when invalid: then reported).
    pub(crate) fn duration(
        &mut self,
        key: &str,
        value: Option<&String>,
        rule: DurationRule,
        default: Duration,
    ) -> Duration {
        let Some(text) = value else { return default };
        parse_duration_setting(text, rule)
            .map(|parsed| parsed.unwrap_or(default))
            .unwrap_or_else(|reason| {
                self.add(key, text, reason);
                default
            })
    }

    /// The byte size `value` holds (`default` when not given, or when invalid: then reported).
    pub(crate) fn size(&mut self, key: &str, value: Option<&String>, default: u64) -> u64 {
        let Some(text) = value else { return default };
        parse_size(text).unwrap_or_else(|reason| {
            self.add(key, text, reason);
            default
        })
    }
}

/// What a duration setting accepts besides a positive duration.
#[derive(Clone, Copy)]
pub(crate) struct DurationRule {
    pub(crate) zero_allowed: bool,
    /// A word meaning "none" (`off`, `unlimited`).
    pub(crate) off_word: Option<&'static str>,
}

/// Any duration, zero included.
pub(crate) const ANY_DURATION: DurationRule = DurationRule {
    zero_allowed: true,
    off_word: None,
};

/// A duration greater than zero.
pub(crate) const POSITIVE_DURATION: DurationRule = DurationRule {
    zero_allowed: false,
    off_word: None,
};

/// Why a setting's value was refused, in words for `check-config` and the startup error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(String);

impl InvalidValue {
    pub(crate) fn new(reason: impl Into<String>) -> Self {
        InvalidValue(reason.into())
    }
}

/// A problem report's reason (`ConfigProblem::reason`) is the refusal's words.
impl From<InvalidValue> for String {
    fn from(invalid: InvalidValue) -> String {
        invalid.0
    }
}

/// Parses a duration setting: `Ok(None)` for the off word, `Err(reason)` for anything the
/// rule refuses. The one duration parser behind every duration in the file and on flags.
pub(crate) fn parse_duration_setting(
    text: &str,
    rule: DurationRule,
) -> Result<Option<Duration>, InvalidValue> {
    if rule.off_word == Some(text) {
        return Ok(None);
    }
    let or_off = rule
        .off_word
        .map(|word| format!(", or \"{word}\""))
        .unwrap_or_default();
    match humantime::parse_duration(text) {
        Ok(d) if d.is_zero() && !rule.zero_allowed => {
            Err(InvalidValue(format!("must be greater than zero{or_off}")))
        }
        Ok(d) => Ok(Some(d)),
        Err(e) => Err(InvalidValue(format!(
            "expected a duration such as 30s or 500ms{or_off} ({e})"
        ))),
    }
}

/// Parses a byte size such as `256KiB`, `50GiB`, `300MB` or `1024` (bytes).
pub fn parse_size(text: &str) -> Result<u64, InvalidValue> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| InvalidValue("expected a size such as 256KiB, 300MiB or 50GiB".to_owned()))?;
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "t" | "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        _ => {
            return Err(InvalidValue(format!(
                "unknown size unit {unit:?} (use B, KB, KiB, MB, MiB, GB, GiB, TB, TiB)"
            )));
        }
    };
    if !number.is_finite() || number < 0.0 {
        return Err(InvalidValue("size must be a positive number".into()));
    }
    Ok((number * multiplier as f64).round() as u64)
}

/// The value of a setting that has a flag and a file key: the flag's if given, else the
/// file's (`None`: neither, the default applies), with the name to report problems under.
pub(crate) fn flag_over_file<'a>(
    flag: (&'static str, Option<&'a String>),
    file: (&'static str, Option<&'a String>),
) -> (&'static str, Option<&'a String>) {
    match flag {
        (key, Some(value)) => (key, Some(value)),
        (_, None) => file,
    }
}
