//! Store URL options: the `key=value&…` after the `?` of a store's URL, read the same
//! way by every store. Each store says which keys it takes and what their values mean.

use std::borrow::Cow;

use percent_encoding::percent_decode_str;

use crate::{Error, Result};

/// One `key=value` option of a store URL.
#[derive(Clone, Copy, Debug)]
pub(crate) struct UrlOption<'a> {
    /// The key, as written.
    pub(crate) key: &'a str,
    /// The value as written (empty when the pair has no `=`); [`UrlOption::value`]
    /// decodes it.
    raw_value: &'a str,
    /// The whole pair as written, for options a store passes on untouched.
    pub(crate) pair: &'a str,
}

impl UrlOption<'_> {
    /// The value, percent-decoded, with `+` for a space (as in HTML forms). A bad
    /// escape (`%` not followed by two hex digits) or bytes that are not UTF-8 are an
    /// error.
    pub(crate) fn value(&self) -> Result<String> {
        let s = self.raw_value;
        let bad_escape = s.split('%').skip(1).any(|after| {
            !after
                .get(..2)
                .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
        });
        if bad_escape {
            return Err(Error::invalid(format!("bad percent escape in '{s}'")));
        }
        percent_decode_str(&s.replace('+', " "))
            .decode_utf8()
            .map(Cow::into_owned)
            .map_err(|_| Error::invalid(format!("'{s}' is not UTF-8")))
    }
}

/// The options of `query` (what follows the `?`), in order; empty pairs (`a=1&&b=2`)
/// are skipped.
pub(crate) fn parse(query: &str) -> impl Iterator<Item = UrlOption<'_>> {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        UrlOption {
            key,
            raw_value,
            pair,
        }
    })
}

/// An on/off option's value: `on` or `1`, `off` or `0`; `None` for anything else.
pub(crate) fn on_off(value: &str) -> Option<bool> {
    match value {
        "on" | "1" => Some(true),
        "off" | "0" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(query: &str) -> Vec<(&str, String)> {
        parse(query).map(|o| (o.key, o.value().unwrap())).collect()
    }

    #[test]
    fn pairs_are_split_and_values_decoded() {
        assert_eq!(
            pairs("a=1&&b&c=x%3Ay+z&d=%C3%A9"),
            [
                ("a", "1".to_owned()),
                ("b", String::new()),
                ("c", "x:y z".to_owned()),
                ("d", "é".to_owned())
            ]
        );
        assert!(pairs("").is_empty());
        let o = parse("k=a%20b").next().unwrap();
        assert_eq!(o.pair, "k=a%20b");
    }

    #[test]
    fn bad_escapes_and_bad_utf8_are_errors() {
        for q in ["k=%", "k=%4", "k=%zz", "k=a%4g", "k=%FF"] {
            let o = parse(q).next().unwrap();
            assert!(matches!(o.value(), Err(Error::InvalidArgument(_))), "{q}");
        }
    }

    #[test]
    fn on_off_values() {
        assert_eq!(on_off("on"), Some(true));
        assert_eq!(on_off("1"), Some(true));
        assert_eq!(on_off("off"), Some(false));
        assert_eq!(on_off("0"), Some(false));
        assert_eq!(on_off("yes"), None);
        assert_eq!(on_off(""), None);
    }
}
