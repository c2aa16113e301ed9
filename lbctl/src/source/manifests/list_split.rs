//! A `kind: List` document cut into runs of whole items, so that the runs can be read on
//! several threads (see `load_yaml_parallel`). Text work only: nothing is parsed here.
//!
//! `kubectl get -o yaml` writes a list's items as a block sequence at column 0 under a
//! column-0 `items:` key, each item starting with a column-0 `- ` line:
//!
//! ```yaml
//! apiVersion: v1
//! items:
//! - apiVersion: v1
//!   kind: Service
//!   ...
//! kind: List
//! metadata:
//!   resourceVersion: ""
//! ```
//!
//! Each run is then itself a YAML block sequence, and the text around the items (with
//! `items: []`) a document of its own: the *skeleton*, whose kind says how the items are read.
//!
//! The cut trusts only lines at column 0. Inside an item, every structure that could hold a
//! column-0 line (a quoted or flow scalar, a flow collection) would, if cut there, leave the
//! run before it unterminated: that run's read fails, and the caller reads the whole text
//! instead. So a cut either falls between items, or the parallel read is abandoned: it never
//! yields other objects than the whole read. Anything unusual at column 0 (document markers,
//! directives, carriage returns, a second `items:`) makes [`split`] decline.

/// A list's text in runs of whole items.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ListSplit<'a> {
    /// The document without its items: the `items:` line and its sequence replaced by
    /// `items: []`.
    pub skeleton: String,
    /// Runs of consecutive items, in order: each a block sequence at column 0. Together they
    /// are the text of the items, byte for byte.
    pub runs: Vec<&'a str>,
}

/// Cuts `text` into at most `parts` runs of about equal size; `None` when the text is not
/// one block-style document with one column-0 `items:` sequence of at least `parts` items
/// (or when `parts` is below 2: nothing to share).
pub(super) fn split(text: &str, parts: usize) -> Option<ListSplit<'_>> {
    if parts < 2 || text.contains('\r') {
        return None;
    }
    let mut items_line: Option<(usize, usize)> = None;
    // Where the sequence ends (the next column-0 line that is no item, comment or blank).
    let mut region_end: Option<usize> = None;
    let mut item_starts: Vec<usize> = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        let content = line.trim_end_matches('\n');
        if is_marker(content) {
            return None;
        }
        match (items_line, region_end) {
            (None, _) => {
                if is_items_key(content) {
                    items_line = Some((start, offset));
                }
            }
            (Some(_), None) => {
                if is_item_start(content) {
                    item_starts.push(start);
                } else if !continues_sequence(content) {
                    if is_items_key(content) {
                        return None;
                    }
                    region_end = Some(start);
                }
            }
            (Some(_), Some(_)) => {
                if is_items_key(content) {
                    return None;
                }
            }
        }
    }
    let (items_start, items_body) = items_line?;
    let region_end = region_end.unwrap_or(text.len());
    // Anything between `items:` and the first item (comments, blank lines) stays with the
    // first run, which then starts where the sequence does.
    if item_starts.len() < parts {
        return None;
    }
    let runs = cut(
        &text[items_body..region_end],
        items_body,
        &item_starts,
        parts,
    );
    let mut skeleton = String::with_capacity(items_start + 10 + text.len() - region_end);
    skeleton.push_str(&text[..items_start]);
    skeleton.push_str("items: []\n");
    skeleton.push_str(&text[region_end..]);
    Some(ListSplit { skeleton, runs })
}

/// `region` (at `base` in the text) cut at item starts into `parts` runs of about equal size.
fn cut<'a>(region: &'a str, base: usize, item_starts: &[usize], parts: usize) -> Vec<&'a str> {
    let target = region.len().div_ceil(parts);
    let mut runs = Vec::with_capacity(parts);
    let mut run_start = 0;
    for &start in &item_starts[1..] {
        let at = start - base;
        if runs.len() + 1 < parts && at >= target * (runs.len() + 1) {
            runs.push(&region[run_start..at]);
            run_start = at;
        }
    }
    runs.push(&region[run_start..]);
    runs
}

/// A column-0 `items:` key with nothing after it (but blanks): a block collection follows.
fn is_items_key(line: &str) -> bool {
    line.strip_prefix("items:")
        .is_some_and(|rest| rest.trim_end_matches([' ', '\t']).is_empty())
}

/// A column-0 sequence entry.
fn is_item_start(line: &str) -> bool {
    line == "-" || line.starts_with("- ")
}

/// A line that keeps a column-0 block sequence going without starting an entry: indented,
/// blank, or a comment.
fn continues_sequence(line: &str) -> bool {
    line.is_empty() || line.starts_with([' ', '#'])
}

/// A document marker or directive: the text holds more than one block document, or says
/// something about how to read it. Left to the whole read.
fn is_marker(line: &str) -> bool {
    line.starts_with('%')
        || ["---", "..."].iter().any(|marker| {
            line.strip_prefix(marker)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(name: &str) -> String {
        format!("- apiVersion: v1\n  kind: Service\n  metadata:\n    name: {name}\n")
    }

    fn items(n: usize) -> String {
        (0..n).map(|i| item(&format!("s{i}"))).collect()
    }

    #[test]
    fn kubectl_style_items_between_other_keys() {
        let body = items(4);
        let text = format!("apiVersion: v1\nitems:\n{body}kind: List\nmetadata:\n  a: b\n");
        let split = split(&text, 2).expect("splits");
        assert_eq!(
            split.skeleton,
            "apiVersion: v1\nitems: []\nkind: List\nmetadata:\n  a: b\n"
        );
        assert_eq!(split.runs.len(), 2);
        assert_eq!(split.runs.concat(), body);
        assert!(split.runs.iter().all(|run| run.starts_with("- apiVersion")));
        assert_eq!(split.runs[0], items(2));
    }

    #[test]
    fn items_last_comments_and_blank_lines_stay_with_their_run() {
        let body = format!("# first\n{}\n# between\n{}", item("a"), items(3));
        let text = format!("apiVersion: v1\nkind: List\nitems:\n{body}");
        let split = split(&text, 3).expect("splits");
        assert_eq!(split.skeleton, "apiVersion: v1\nkind: List\nitems: []\n");
        assert_eq!(split.runs.len(), 3);
        assert_eq!(split.runs.concat(), body);
        assert!(split.runs[0].starts_with("# first\n- apiVersion"));
    }

    #[test]
    fn never_more_runs_than_asked_nor_than_items() {
        let text = format!("kind: List\nitems:\n{}", items(10));
        for parts in 2..=10 {
            let split = split(&text, parts).expect("splits");
            assert!(
                split.runs.len() <= parts && split.runs.len() >= 2,
                "{parts}"
            );
            assert_eq!(split.runs.concat(), items(10));
        }
        assert_eq!(split(&text, 11), None, "fewer items than parts");
        assert_eq!(split(&text, 1), None, "one part is the whole read");
    }

    #[test]
    fn declines_what_it_cannot_cut_safely() {
        let body = items(4);
        for text in [
            // No items key, or a flow sequence.
            format!("kind: List\n{body}"),
            "kind: List\nitems: [a, b, c]\n".to_owned(),
            // Two documents, a directive, a document end.
            format!("---\nkind: List\nitems:\n{body}"),
            format!("%YAML 1.2\n---\nkind: List\nitems:\n{body}"),
            format!("kind: List\nitems:\n{body}...\n"),
            // A second column-0 items key, inside the sequence or after it.
            format!("kind: List\nitems:\n{body}items:\n{body}"),
            format!("kind: List\nitems:\n{body}x: 1\nitems:\n"),
            // Carriage returns.
            format!("kind: List\r\nitems:\r\n{}", body.replace('\n', "\r\n")),
        ] {
            assert_eq!(split(&text, 2), None, "{text}");
        }
    }

    #[test]
    fn the_sequence_ends_at_the_next_column_0_key() {
        let text = format!("items:\n{}kind: List\n", items(2));
        let split = split(&text, 2).expect("splits");
        assert_eq!(split.runs, [item("s0"), item("s1")]);
        assert_eq!(split.skeleton, "items: []\nkind: List\n");
    }
}
