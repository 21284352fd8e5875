//! Which search results a person sees, and in what order: filters by size
//! range, extension and kind of file (each kind a list of extensions,
//! defined here once), then a sort by sources, size or name. Pure: the
//! daemon applies it to each snapshot of a live search.

use std::cmp::Reverse;

use crate::search::SearchResult;

/// A kind of file, by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// Music and sound.
    Audio,
    /// Films and clips.
    Video,
    /// Pictures.
    Image,
    /// Text, books, office files.
    Document,
    /// Compressed bundles.
    Archive,
    /// Programs, packages, disk images.
    Software,
}

const AUDIO: &[&str] = &[
    "mp3", "flac", "ogg", "oga", "opus", "wav", "m4a", "aac", "wma", "aiff", "alac", "ape", "mka",
    "mid", "midi",
];
const VIDEO: &[&str] = &[
    "mkv", "mp4", "avi", "mov", "wmv", "webm", "m4v", "mpg", "mpeg", "flv", "ogv", "ts", "3gp",
];
const IMAGE: &[&str] = &[
    "jpg", "jpeg", "png", "gif", "webp", "bmp", "tif", "tiff", "svg", "heic", "avif", "raw",
];
const DOCUMENT: &[&str] = &[
    "pdf", "txt", "epub", "mobi", "doc", "docx", "odt", "rtf", "md", "html", "htm", "xls", "xlsx",
    "ods", "ppt", "pptx", "odp", "djvu", "cbz", "cbr",
];
const ARCHIVE: &[&str] = &[
    "zip", "tar", "gz", "tgz", "bz2", "xz", "zst", "7z", "rar", "lz", "lzma", "cab",
];
const SOFTWARE: &[&str] = &[
    "exe", "msi", "deb", "rpm", "apk", "dmg", "pkg", "appimage", "iso", "img", "jar", "flatpak",
    "snap",
];

impl FileKind {
    /// Every kind.
    pub const ALL: [FileKind; 6] = [
        FileKind::Audio,
        FileKind::Video,
        FileKind::Image,
        FileKind::Document,
        FileKind::Archive,
        FileKind::Software,
    ];

    /// The extensions of this kind (lowercase, no dot).
    pub fn extensions(self) -> &'static [&'static str] {
        match self {
            FileKind::Audio => AUDIO,
            FileKind::Video => VIDEO,
            FileKind::Image => IMAGE,
            FileKind::Document => DOCUMENT,
            FileKind::Archive => ARCHIVE,
            FileKind::Software => SOFTWARE,
        }
    }

    /// The kind of a file named `name`, by its extension.
    pub fn of(name: &str) -> Option<FileKind> {
        let extension = extension(name)?;
        FileKind::ALL
            .into_iter()
            .find(|kind| kind.extensions().contains(&extension.as_str()))
    }
}

/// How results are ordered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SortKey {
    /// Most sources first.
    #[default]
    Sources,
    /// Largest first.
    Size,
    /// By name, A to Z, ignoring case.
    Name,
}

/// Most extensions one filter holds.
pub const MAX_EXTENSIONS: usize = 64;
/// Longest extension accepted, in bytes.
pub const MAX_EXTENSION_BYTES: usize = 16;

/// What results to keep.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResultFilter {
    /// Smallest size kept, bytes.
    pub min_size: Option<u64>,
    /// Largest size kept, bytes.
    pub max_size: Option<u64>,
    /// Keep names with one of these extensions (lowercase, no dot); any if
    /// empty.
    pub extensions: Vec<String>,
    /// Keep only this kind.
    pub kind: Option<FileKind>,
}

/// Why a filter is refused; names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// `min_size` is over `max_size`.
    #[error("min_size is larger than max_size")]
    SizeRange,
    /// Too many extensions, or one too long or not a plain word.
    #[error("extensions: {0}")]
    Extensions(String),
}

impl ResultFilter {
    /// A filter from what a client sent: extensions lowercased, leading
    /// dots dropped, each checked (letters and digits, at most
    /// [`MAX_EXTENSION_BYTES`]), at most [`MAX_EXTENSIONS`].
    pub fn new(
        min_size: Option<u64>,
        max_size: Option<u64>,
        extensions: &[String],
        kind: Option<FileKind>,
    ) -> Result<Self, FilterError> {
        if let (Some(min), Some(max)) = (min_size, max_size) {
            if min > max {
                return Err(FilterError::SizeRange);
            }
        }
        if extensions.len() > MAX_EXTENSIONS {
            return Err(FilterError::Extensions(format!(
                "at most {MAX_EXTENSIONS} extensions"
            )));
        }
        let mut cleaned = Vec::with_capacity(extensions.len());
        for raw in extensions {
            let extension = raw.trim().trim_start_matches('.').to_ascii_lowercase();
            if extension.is_empty()
                || extension.len() > MAX_EXTENSION_BYTES
                || !extension.bytes().all(|b| b.is_ascii_alphanumeric())
            {
                let shown: String = raw.chars().take(20).collect();
                return Err(FilterError::Extensions(format!(
                    "{shown:?} is not an extension (letters and digits, at most {MAX_EXTENSION_BYTES})"
                )));
            }
            if !cleaned.contains(&extension) {
                cleaned.push(extension);
            }
        }
        Ok(Self {
            min_size,
            max_size,
            extensions: cleaned,
            kind,
        })
    }

    /// Whether a file named `name` of `size` bytes is kept.
    pub fn keeps(&self, name: &str, size: u64) -> bool {
        if self.min_size.is_some_and(|min| size < min)
            || self.max_size.is_some_and(|max| size > max)
        {
            return false;
        }
        let extension = extension(name);
        if !self.extensions.is_empty()
            && !extension
                .as_ref()
                .is_some_and(|e| self.extensions.contains(e))
        {
            return false;
        }
        match self.kind {
            Some(kind) => extension.is_some_and(|e| kind.extensions().contains(&e.as_str())),
            None => true,
        }
    }
}

/// The extension of `name`, lowercase, without the dot; none for a name
/// with no dot or only a leading one.
pub fn extension(name: &str) -> Option<String> {
    let dot = name.rfind('.')?;
    let extension = &name[dot + 1..];
    (dot > 0 && !extension.is_empty()).then(|| extension.to_lowercase())
}

/// What filtering and sorting look at in a result.
pub trait Candidate {
    /// Its name.
    fn name(&self) -> &str;
    /// Its size in bytes.
    fn size(&self) -> u64;
    /// How many sources have it.
    fn sources(&self) -> usize;
}

impl Candidate for SearchResult {
    fn name(&self) -> &str {
        &self.name
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn sources(&self) -> usize {
        self.sources.len()
    }
}

/// The results `filter` keeps, ordered by `sort`; ties keep the order
/// given (arrival), so an update does not reshuffle equal results.
pub fn filter_and_sort<'a, T: Candidate>(
    results: impl IntoIterator<Item = &'a T>,
    filter: &ResultFilter,
    sort: SortKey,
) -> Vec<&'a T> {
    let mut kept: Vec<&T> = results
        .into_iter()
        .filter(|result| filter.keeps(result.name(), result.size()))
        .collect();
    match sort {
        SortKey::Sources => kept.sort_by_key(|r| Reverse(r.sources())),
        SortKey::Size => kept.sort_by_key(|r| Reverse(r.size())),
        SortKey::Name => kept.sort_by_cached_key(|r| r.name().to_lowercase()),
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Found {
        name: &'static str,
        size: u64,
        sources: usize,
    }

    impl Candidate for Found {
        fn name(&self) -> &str {
            self.name
        }
        fn size(&self) -> u64 {
            self.size
        }
        fn sources(&self) -> usize {
            self.sources
        }
    }

    fn result(name: &'static str, size: u64, sources: usize) -> Found {
        Found {
            name,
            size,
            sources,
        }
    }

    fn names(results: &[&Found]) -> Vec<&'static str> {
        results.iter().map(|r| r.name).collect()
    }

    fn sample() -> Vec<Found> {
        vec![
            result("b song.MP3", 5_000, 1),
            result("A film.mkv", 900_000, 3),
            result("c notes.txt", 10, 2),
            result("d no extension", 77, 3),
            result(".hidden", 1, 1),
        ]
    }

    #[test]
    fn sorts_by_sources_size_or_name_keeping_arrival_order_on_ties() {
        let all = sample();
        let none = ResultFilter::default();
        assert_eq!(
            names(&filter_and_sort(&all, &none, SortKey::Sources)),
            [
                "A film.mkv",
                "d no extension",
                "c notes.txt",
                "b song.MP3",
                ".hidden"
            ]
        );
        assert_eq!(
            names(&filter_and_sort(&all, &none, SortKey::Size)),
            [
                "A film.mkv",
                "b song.MP3",
                "d no extension",
                "c notes.txt",
                ".hidden"
            ]
        );
        assert_eq!(
            names(&filter_and_sort(&all, &none, SortKey::Name)),
            [
                ".hidden",
                "A film.mkv",
                "b song.MP3",
                "c notes.txt",
                "d no extension"
            ]
        );
    }

    #[test]
    fn filters_by_size_range_extension_and_kind() {
        let all = sample();
        let sized = ResultFilter::new(Some(10), Some(5_000), &[], None).unwrap();
        assert_eq!(
            names(&filter_and_sort(&all, &sized, SortKey::Size)),
            ["b song.MP3", "d no extension", "c notes.txt"]
        );
        let by_extension =
            ResultFilter::new(None, None, &[".mp3".into(), "TXT".into()], None).unwrap();
        assert_eq!(by_extension.extensions, ["mp3", "txt"]);
        assert_eq!(
            names(&filter_and_sort(&all, &by_extension, SortKey::Name)),
            ["b song.MP3", "c notes.txt"]
        );
        let video = ResultFilter::new(None, None, &[], Some(FileKind::Video)).unwrap();
        assert_eq!(
            names(&filter_and_sort(&all, &video, SortKey::Name)),
            ["A film.mkv"]
        );
        let both = ResultFilter::new(None, None, &["txt".into()], Some(FileKind::Audio)).unwrap();
        assert!(filter_and_sort(&all, &both, SortKey::Name).is_empty());
    }

    #[test]
    fn kinds_come_from_extensions_and_do_not_overlap() {
        assert_eq!(FileKind::of("x.FLAC"), Some(FileKind::Audio));
        assert_eq!(FileKind::of("x.tar.gz"), Some(FileKind::Archive));
        assert_eq!(FileKind::of("x.iso"), Some(FileKind::Software));
        assert_eq!(FileKind::of("x.unknown"), None);
        assert_eq!(FileKind::of("mp3"), None);
        assert_eq!(FileKind::of(".mp3"), None);
        for a in FileKind::ALL {
            for b in FileKind::ALL.into_iter().filter(|&b| b != a) {
                for e in a.extensions() {
                    assert!(!b.extensions().contains(e), "{e} is {a:?} and {b:?}");
                }
            }
        }
    }

    #[test]
    fn bad_filters_are_refused_naming_what_is_wrong() {
        assert_eq!(
            ResultFilter::new(Some(2), Some(1), &[], None),
            Err(FilterError::SizeRange)
        );
        let too_many: Vec<String> = (0..=MAX_EXTENSIONS).map(|i| format!("e{i}")).collect();
        assert!(matches!(
            ResultFilter::new(None, None, &too_many, None),
            Err(FilterError::Extensions(_))
        ));
        for bad in ["", ".", "a/b", "x y", &"a".repeat(MAX_EXTENSION_BYTES + 1)] {
            assert!(
                matches!(
                    ResultFilter::new(None, None, &[bad.to_owned()], None),
                    Err(FilterError::Extensions(_))
                ),
                "{bad:?}"
            );
        }
    }
}
