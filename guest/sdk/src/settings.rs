//! Settings, parsed in the formats of wasmtime's cache configuration ("1h",
//! "512Mi", "70%"), refused in the host's shape: the key, the value, and what
//! the policy accepts, which the host shows the user.

use crate::{InvalidSetting, Setting, SettingsError};

/// Parses a duration such as "1h", "30m", "15s", "500ms" or "1d" into
/// milliseconds.
pub fn parse_duration_ms(value: &str) -> Option<u64> {
    let value = value.trim();
    let split = value.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = value.split_at(split);
    let number: u64 = number.parse().ok()?;
    let unit_ms = match unit.trim() {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    number.checked_mul(unit_ms)
}

/// Parses a size such as "512Mi", "1Gi", "64K" or "1000" (bytes) into bytes.
pub fn parse_size(value: &str) -> Option<u64> {
    let value = value.trim();
    let split = value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: u64 = number.parse().ok()?;
    let multiplier: u64 = match unit.trim() {
        "" => 1,
        "K" => 1_000,
        "Ki" => 1 << 10,
        "M" => 1_000_000,
        "Mi" => 1 << 20,
        "G" => 1_000_000_000,
        "Gi" => 1 << 30,
        "T" => 1_000_000_000_000,
        "Ti" => 1 << 40,
        _ => return None,
    };
    number.checked_mul(multiplier)
}

/// Parses a percentage, "0%" to "100%".
pub fn parse_percent(value: &str) -> Option<u8> {
    let number: u8 = value.trim().strip_suffix('%')?.trim().parse().ok()?;
    (number <= 100).then_some(number)
}

/// What each parser accepts, as the user reads it.
const DURATION: &str = "a duration such as \"30s\", \"30m\", \"1h\" or \"1d\"";
const SIZE: &str = "a size such as \"512Mi\", \"1Gi\" or a number of bytes";
const PERCENT: &str = "a percentage from \"0%\" to \"100%\"";
const COUNT: &str = "a whole number";
const LEVEL: &str = "a zstd level from 1 to 22";

impl Setting {
    /// Refuses this setting's value; `expected` says what is accepted.
    pub fn invalid(&self, expected: impl Into<String>) -> SettingsError {
        SettingsError::InvalidValue(InvalidSetting {
            key: self.key.clone(),
            value: self.value.clone(),
            expected: expected.into(),
        })
    }

    /// Refuses this setting's key: the policy has no such setting.
    pub fn unknown(&self) -> SettingsError {
        SettingsError::UnknownKey(self.key.clone())
    }

    /// The value as a duration, in milliseconds ("30s", "1h", "1d").
    pub fn duration_ms(&self) -> Result<u64, SettingsError> {
        parse_duration_ms(&self.value).ok_or_else(|| self.invalid(DURATION))
    }

    /// The value as a size, in bytes ("512Mi", "1G", "4096").
    pub fn size(&self) -> Result<u64, SettingsError> {
        parse_size(&self.value).ok_or_else(|| self.invalid(SIZE))
    }

    /// The value as a percentage ("70%").
    pub fn percent(&self) -> Result<u8, SettingsError> {
        parse_percent(&self.value).ok_or_else(|| self.invalid(PERCENT))
    }

    /// The value as a whole number.
    pub fn count(&self) -> Result<u64, SettingsError> {
        self.value.trim().parse().map_err(|_| self.invalid(COUNT))
    }

    /// The value as a zstd level, 1 to 22.
    pub fn zstd_level(&self) -> Result<u8, SettingsError> {
        self.value.trim().parse::<u8>().ok().filter(|l| (1..=22).contains(l)).ok_or_else(|| self.invalid(LEVEL))
    }

    /// The value as one of a few words, each standing for a value.
    pub fn one_of<T: Copy>(&self, choices: &[(&str, T)]) -> Result<T, SettingsError> {
        let value = self.value.trim();
        choices.iter().find(|(word, _)| *word == value).map(|(_, v)| *v).ok_or_else(|| {
            let words: Vec<String> = choices.iter().map(|(word, _)| format!("{word:?}")).collect();
            let expected = match words.split_last() {
                Some((last, [])) => last.clone(),
                Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
                None => "nothing".into(),
            };
            self.invalid(expected)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setting(value: &str) -> Setting {
        Setting { key: "k".into(), value: value.into() }
    }

    #[test]
    fn values_in_wasmtimes_formats_parse() {
        assert_eq!(parse_duration_ms("1h"), Some(3_600_000));
        assert_eq!(parse_duration_ms("500ms"), Some(500));
        assert_eq!(parse_duration_ms("10"), None);
        assert_eq!(parse_size("512Mi"), Some(512 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("1Zi"), None);
        assert_eq!(parse_percent("70%"), Some(70));
        assert_eq!(parse_percent("101%"), None);
        assert_eq!(setting("19").zstd_level().unwrap(), 19);
        assert!(setting("23").zstd_level().is_err());
    }

    #[test]
    fn a_refusal_names_the_key_the_value_and_what_is_accepted() {
        let refused = setting("sometimes").one_of(&[("never", 0), ("hot", 1), ("always", 2)]).unwrap_err();
        let SettingsError::InvalidValue(refused) = refused else { panic!("not an invalid value") };
        assert_eq!((refused.key.as_str(), refused.value.as_str()), ("k", "sometimes"));
        assert_eq!(refused.expected, "\"never\", \"hot\" or \"always\"");
    }
}
