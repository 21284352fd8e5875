//! The live settings: checked, changed through the API, saved to
//! `settings.json` in the data directory (which overrides the
//! configuration file's values at the next start).

use std::path::{Path, PathBuf};

use crate::model::{ApiError, Settings, SettingsPatch};

/// The file's name in the data directory.
pub const SETTINGS_FILE: &str = "settings.json";
/// Upload slots allowed.
pub const UPLOAD_SLOTS: std::ops::RangeInclusive<usize> = 1..=1000;
/// Downloads at once allowed.
pub const MAX_ACTIVE_DOWNLOADS: std::ops::RangeInclusive<usize> = 1..=100;

/// The defaults, as [`SettingsPatch`]'s flags define them (no rate
/// limits, 4 upload slots, 3 downloads at once).
pub fn defaults() -> Settings {
    use clap::{Args, FromArgMatches};
    let fallback = Settings {
        upload_rate_limit: 0,
        download_rate_limit: 0,
        upload_slots: 4,
        max_active_downloads: 3,
    };
    let flags = SettingsPatch::augment_args(clap::Command::new("defaults"));
    let patch = flags
        .try_get_matches_from(["defaults"])
        .ok()
        .and_then(|matches| SettingsPatch::from_arg_matches(&matches).ok());
    match patch {
        Some(patch) => apply(fallback, &patch).unwrap_or(fallback),
        None => fallback,
    }
}

/// Its path in `data_dir`.
pub(crate) fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(SETTINGS_FILE)
}

fn check_range(
    field: &str,
    value: usize,
    range: &std::ops::RangeInclusive<usize>,
) -> Result<usize, ApiError> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(ApiError::field(
            field,
            format!("must be {} to {}", range.start(), range.end()),
        ))
    }
}

/// `settings` with `patch` applied, or which field is wrong.
pub fn apply(settings: Settings, patch: &SettingsPatch) -> Result<Settings, ApiError> {
    let mut next = settings;
    if let Some(rate) = patch.upload_rate_limit {
        next.upload_rate_limit = rate;
    }
    if let Some(rate) = patch.download_rate_limit {
        next.download_rate_limit = rate;
    }
    if let Some(slots) = patch.upload_slots {
        next.upload_slots = check_range("upload_slots", slots, &UPLOAD_SLOTS)?;
    }
    if let Some(max) = patch.max_active_downloads {
        next.max_active_downloads =
            check_range("max_active_downloads", max, &MAX_ACTIVE_DOWNLOADS)?;
    }
    Ok(next)
}

/// `settings` checked, or which field is wrong.
pub fn check(settings: Settings) -> Result<Settings, ApiError> {
    check_range("upload_slots", settings.upload_slots, &UPLOAD_SLOTS)?;
    check_range(
        "max_active_downloads",
        settings.max_active_downloads,
        &MAX_ACTIVE_DOWNLOADS,
    )?;
    Ok(settings)
}

/// The settings to start with: `settings.json`'s if valid, else `given`.
pub(crate) fn load(data_dir: &Path, given: Settings) -> Settings {
    match crate::persist::read_json::<Settings>(&path(data_dir)).map(check) {
        Some(Ok(saved)) => saved,
        Some(Err(error)) => {
            tracing::warn!(%error, "settings.json ignored");
            given
        }
        None => given,
    }
}

/// Saves `settings` to `settings.json`.
pub(crate) fn save(data_dir: &Path, settings: &Settings) -> std::io::Result<()> {
    crate::persist::write_json(&path(data_dir), settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_the_flags_defaults() {
        let defaults = defaults();
        assert_eq!(defaults.upload_slots, 4);
        assert_eq!(defaults.max_active_downloads, 3);
        assert_eq!(defaults.upload_rate_limit, 0);
        assert_eq!(check(defaults), Ok(defaults));
    }

    #[test]
    fn a_patch_changes_only_its_fields_and_names_a_bad_one() {
        let base = defaults();
        let patch = SettingsPatch {
            upload_rate_limit: Some(1000),
            max_active_downloads: Some(7),
            ..SettingsPatch::default()
        };
        let next = apply(base, &patch).unwrap();
        assert_eq!(next.upload_rate_limit, 1000);
        assert_eq!(next.max_active_downloads, 7);
        assert_eq!(next.upload_slots, base.upload_slots);
        let bad = SettingsPatch {
            upload_slots: Some(0),
            ..SettingsPatch::default()
        };
        let error = apply(base, &bad).unwrap_err();
        assert_eq!(error.body().field.as_deref(), Some("upload_slots"));
        let bad = SettingsPatch {
            max_active_downloads: Some(101),
            ..SettingsPatch::default()
        };
        let error = apply(base, &bad).unwrap_err();
        assert_eq!(error.body().field.as_deref(), Some("max_active_downloads"));
    }

    #[test]
    fn saved_settings_override_the_given_ones_unless_invalid() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path(), defaults()), defaults());
        let mine = Settings {
            upload_slots: 9,
            ..defaults()
        };
        save(dir.path(), &mine).unwrap();
        assert_eq!(load(dir.path(), defaults()), mine);
        let broken = Settings {
            upload_slots: 0,
            ..defaults()
        };
        save(dir.path(), &broken).unwrap();
        assert_eq!(load(dir.path(), defaults()), defaults());
    }
}
