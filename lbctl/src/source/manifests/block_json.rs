//! The block-style YAML that `kubectl get -o yaml` prints, rewritten as JSON text, so that the
//! JSON reader (several times faster than the YAML parser) reads a large manifest.
//!
//! Only a plain subset is taken, where every node's meaning is certain without a YAML parser:
//! one document of block mappings and block sequences (a sequence may sit at its key's
//! indentation, as kubectl prints it), keys that are plain or quoted strings, values that are
//! plain, single- or double-quoted scalars on one line, `{}`, `[]`, or literal block scalars
//! (`|`, `|-`), and comment and blank lines. A plain scalar becomes JSON `null` (`null`, `~`,
//! empty), `true`/`false`, an integer (decimal, no leading zero), or a string when nothing
//! else could read it otherwise. Everything else returns `None` and the caller reads the text
//! with the YAML reader, as before: anchors, aliases, tags, flow collections with content,
//! scalars over several lines, other spellings of booleans, nulls and numbers (`yes`, `NULL`,
//! `0x1F`, `1.5`, `010`), duplicate keys, merge keys, tabs, carriage returns, non-printable
//! characters, document markers and directives, nesting deeper than [`MAX_DEPTH`]. So a text
//! this reads means to the JSON reader what it means to the YAML reader; errors are always the
//! YAML reader's (the caller falls back on any JSON error).
//!
//! Text only: no I/O, no Kubernetes types.
use std::borrow::Cow;

/// Collections nested deeper than this are left to the YAML reader, whose own limit
/// (`MAX_YAML_DEPTH`, 64) then applies as before.
const MAX_DEPTH: usize = 40;

/// Implicit keys longer than this are left to the YAML reader (YAML limits them to 1,024
/// characters).
const MAX_KEY_BYTES: usize = 1024;

/// A mapping with more keys than this is left to the YAML reader (duplicate keys are looked
/// for by comparing every pair).
const MAX_KEYS: usize = 256;

/// The text is outside the subset.
struct Decline;

type Step<T> = Result<T, Decline>;

/// `text` as JSON, when it is in the subset.
pub(super) fn to_json(text: &str) -> Option<String> {
    let mut reader = Reader::new(text);
    reader.document().ok()?;
    Some(reader.out)
}

/// A run of a list's items (a block sequence at column 0, as `list_split` cuts them) as a
/// JSON array, when it is in the subset.
pub(super) fn items_to_json(run: &str) -> Option<String> {
    let mut reader = Reader::new(run);
    reader.items().ok()?;
    Some(reader.out)
}

/// A line of structure: its indentation and what follows it (trailing spaces removed).
#[derive(Clone, Copy)]
struct Line<'a> {
    indent: usize,
    body: &'a str,
}

struct Reader<'a> {
    text: &'a str,
    /// Where the next raw line starts.
    pos: usize,
    /// The next line of structure, read but not taken.
    peeked: Option<Line<'a>>,
    out: String,
    /// The keys of the mapping open at each depth.
    keys: Vec<Vec<Cow<'a, str>>>,
}

impl<'a> Reader<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            text,
            pos: 0,
            peeked: None,
            out: String::with_capacity(text.len() + text.len() / 4),
            keys: Vec::new(),
        }
    }

    /// A sequence at column 0, and nothing else.
    fn items(&mut self) -> Step<()> {
        match self.peek()? {
            Some(line) if line.indent == 0 && is_item(line.body) => self.sequence(0, 0)?,
            _ => return Err(Decline),
        }
        match self.peek()? {
            None => Ok(()),
            Some(_) => Err(Decline),
        }
    }

    fn document(&mut self) -> Step<()> {
        if self.text.starts_with('\u{feff}') {
            return Err(Decline);
        }
        match self.peek()? {
            Some(line) if line.indent == 0 && !is_item(line.body) => self.mapping(0, 0)?,
            _ => return Err(Decline),
        }
        match self.peek()? {
            None => Ok(()),
            Some(_) => Err(Decline),
        }
    }

    /// The next raw line (without its newline), advancing past it.
    fn raw_line(&mut self) -> Option<&'a str> {
        if self.pos >= self.text.len() {
            return None;
        }
        let rest = &self.text[self.pos..];
        let (line, next) = match rest.find('\n') {
            Some(end) => (&rest[..end], self.pos + end + 1),
            None => (rest, self.text.len()),
        };
        self.pos = next;
        Some(line)
    }

    /// The next line of structure (comment and blank lines skipped), without taking it.
    fn peek(&mut self) -> Step<Option<Line<'a>>> {
        if self.peeked.is_some() {
            return Ok(self.peeked);
        }
        while let Some(raw) = self.raw_line() {
            check_printable(raw)?;
            let body = raw.trim_start_matches(' ');
            let indent = raw.len() - body.len();
            let body = body.trim_end_matches(' ');
            if body.is_empty() || body.starts_with('#') {
                continue;
            }
            if indent == 0
                && (body.starts_with("---") || body.starts_with("...") || body.starts_with('%'))
            {
                return Err(Decline);
            }
            self.peeked = Some(Line { indent, body });
            return Ok(self.peeked);
        }
        Ok(None)
    }

    /// Takes the peeked line.
    fn take(&mut self) {
        self.peeked = None;
    }

    /// A block mapping whose keys sit at `indent`; the next line is its first entry.
    fn mapping(&mut self, indent: usize, depth: usize) -> Step<()> {
        if depth > MAX_DEPTH {
            return Err(Decline);
        }
        if self.keys.len() <= depth {
            self.keys.resize_with(depth + 1, Vec::new);
        }
        self.keys[depth].clear();
        self.out.push('{');
        let mut first = true;
        while let Some(line) = self.peek()? {
            if line.indent < indent {
                break;
            }
            if line.indent > indent || is_item(line.body) {
                return Err(Decline);
            }
            self.take();
            let (key, rest) = split_entry(line.body)?.ok_or(Decline)?;
            let seen = &mut self.keys[depth];
            if seen.len() >= MAX_KEYS || seen.contains(&key) {
                return Err(Decline);
            }
            if !first {
                self.out.push(',');
            }
            first = false;
            push_json_string(&mut self.out, &key);
            self.keys[depth].push(key);
            self.out.push(':');
            self.value(rest, indent, depth)?;
        }
        self.out.push('}');
        Ok(())
    }

    /// A block sequence whose `- ` sit at `indent`; the next line is its first item.
    fn sequence(&mut self, indent: usize, depth: usize) -> Step<()> {
        if depth > MAX_DEPTH {
            return Err(Decline);
        }
        self.out.push('[');
        let mut first = true;
        while let Some(line) = self.peek()? {
            if line.indent < indent || (line.indent == indent && !is_item(line.body)) {
                break;
            }
            if line.indent > indent {
                return Err(Decline);
            }
            self.take();
            if !first {
                self.out.push(',');
            }
            first = false;
            let after = &line.body[1..];
            let content = after.trim_start_matches(' ');
            if content.is_empty() {
                self.nested_or_null(indent, depth)?;
            } else if is_item(content) {
                return Err(Decline);
            } else if split_entry(content)?.is_some() {
                // A mapping whose first entry shares the item's line: its keys sit where
                // that entry starts.
                let column = indent + 1 + (after.len() - content.len());
                self.peeked = Some(Line {
                    indent: column,
                    body: content,
                });
                self.mapping(column, depth + 1)?;
            } else {
                self.inline_value(content, indent)?;
            }
        }
        self.out.push(']');
        Ok(())
    }

    /// The value of an entry at `indent`, `rest` being what follows its `:`.
    fn value(&mut self, rest: &'a str, indent: usize, depth: usize) -> Step<()> {
        let rest = rest.trim_start_matches(' ');
        if !rest.is_empty() {
            return self.inline_value(rest, indent);
        }
        match self.peek()? {
            Some(line) if line.indent == indent && is_item(line.body) => {
                self.sequence(indent, depth + 1)
            }
            _ => self.nested_or_null(indent, depth),
        }
    }

    /// What the lines indented deeper than `indent` hold, or `null` when there are none.
    fn nested_or_null(&mut self, indent: usize, depth: usize) -> Step<()> {
        match self.peek()? {
            Some(line) if line.indent > indent => {
                if is_item(line.body) {
                    self.sequence(line.indent, depth + 1)
                } else {
                    self.mapping(line.indent, depth + 1)
                }
            }
            _ => {
                self.out.push_str("null");
                Ok(())
            }
        }
    }

    /// A value that starts on its key's (or item's) line, within a node at `indent`.
    fn inline_value(&mut self, text: &'a str, indent: usize) -> Step<()> {
        if text.starts_with('|') {
            self.literal(text, indent)?;
        } else {
            push_scalar(&mut self.out, text)?;
        }
        // A line below indented deeper (a continuation) is refused by the mapping or sequence
        // the value is in: no entry or item sits deeper than its own.
        Ok(())
    }

    /// A literal block scalar (`|` or `|-`, header `text`) under a node at `indent`.
    fn literal(&mut self, header: &str, indent: usize) -> Step<()> {
        let strip = match header {
            "|" => false,
            "|-" => true,
            _ => return Err(Decline),
        };
        debug_assert!(self.peeked.is_none());
        let mut lines: Vec<&'a str> = Vec::new();
        let mut block_indent = None;
        loop {
            let start = self.pos;
            let Some(raw) = self.raw_line() else {
                break;
            };
            check_printable(raw)?;
            let spaces = raw.len() - raw.trim_start_matches(' ').len();
            let blank = spaces == raw.len();
            let Some(at) = block_indent else {
                if blank {
                    // Leading blank lines must be empty: more spaces than the first content
                    // line's indentation is an error in YAML.
                    if !raw.is_empty() {
                        return Err(Decline);
                    }
                    lines.push("");
                    continue;
                }
                if spaces <= indent {
                    self.pos = start;
                    break;
                }
                block_indent = Some(spaces);
                lines.push(&raw[spaces..]);
                continue;
            };
            if blank && raw.len() <= at {
                lines.push("");
            } else if spaces >= at {
                lines.push(&raw[at..]);
            } else {
                self.pos = start;
                break;
            }
        }
        if self.pos == self.text.len() && !self.text.ends_with('\n') {
            // No line break after the last line: clipping would keep none.
            return Err(Decline);
        }
        if block_indent.is_none() {
            // Only empty lines: the value is empty, and they are still to be read as blank.
            return Err(Decline);
        }
        while lines.last() == Some(&"") {
            lines.pop();
        }
        if lines
            .last()
            .is_some_and(|l| l.trim_start_matches(' ').is_empty())
        {
            return Err(Decline);
        }
        let mut value = lines.join("\n");
        if !strip {
            value.push('\n');
        }
        push_json_string(&mut self.out, &value);
        Ok(())
    }
}

/// Whether a line of structure is a sequence item.
fn is_item(body: &str) -> bool {
    body == "-" || body.starts_with("- ")
}

/// Characters YAML does not allow in a stream, and those some YAML versions take as line
/// breaks (NEL, LS, PS); tabs and carriage returns are allowed, but change what the lines mean:
/// all left to the YAML reader.
fn check_printable(raw: &str) -> Step<()> {
    if raw.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(Decline);
    }
    if !raw.is_ascii()
        && raw.chars().any(|c| {
            matches!(
                c,
                '\u{80}'
                    ..='\u{9f}' | '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}'
            )
        })
    {
        return Err(Decline);
    }
    Ok(())
}

/// A mapping entry's key and what follows its `:`; `None` when the text is no entry (a
/// scalar).
fn split_entry(body: &str) -> Step<Option<(Cow<'_, str>, &str)>> {
    if body.starts_with(['"', '\'']) {
        let (key, after) = quoted(body)?;
        let after = after.trim_start_matches(' ');
        return Ok(match after.strip_prefix(':') {
            Some(rest) if rest.is_empty() || rest.starts_with(' ') => Some((key, rest)),
            Some(_) => return Err(Decline),
            None => None,
        });
    }
    let bytes = body.as_bytes();
    let colon =
        (0..bytes.len()).find(|&i| bytes[i] == b':' && bytes.get(i + 1).is_none_or(|&b| b == b' '));
    let Some(at) = colon else {
        return Ok(None);
    };
    let (key, rest) = (&body[..at], &body[at + 1..]);
    if key.is_empty()
        || key.len() > MAX_KEY_BYTES
        || key.ends_with(' ')
        || has_comment(key)
        || key == "<<"
        || key.starts_with(INDICATORS)
        || !plain_is_string(key)
    {
        return Err(Decline);
    }
    Ok(Some((Cow::Borrowed(key), rest)))
}

/// Characters a plain scalar (or key) of the subset may not start with.
const INDICATORS: [char; 18] = [
    '-', '?', ':', ',', '[', ']', '{', '}', '#', '&', '*', '!', '|', '>', '\'', '"', '%', '@',
];

/// Writes a one-line scalar (everything after the key's `: `, or the item's `- `) as JSON.
fn push_scalar(out: &mut String, text: &str) -> Step<()> {
    match text.as_bytes()[0] {
        b'"' | b'\'' => {
            let (value, after) = quoted(text)?;
            if !after.is_empty() {
                return Err(Decline);
            }
            push_json_string(out, &value);
        }
        b'{' | b'[' => match text {
            "{}" | "[]" => out.push_str(text),
            _ => return Err(Decline),
        },
        b'`' => return Err(Decline),
        _ if is_decimal(text) => out.push_str(text),
        _ if text.starts_with(INDICATORS) => return Err(Decline),
        _ => {
            if text.ends_with(':') || has_comment(text) || has_entry_colon(text) {
                return Err(Decline);
            }
            match text {
                "null" | "~" => out.push_str("null"),
                "true" | "false" => out.push_str(text),
                _ if plain_is_string(text) => push_json_string(out, text),
                _ => return Err(Decline),
            }
        }
    }
    Ok(())
}

/// Whether a plain scalar holds ` #` (where a comment would start).
fn has_comment(text: &str) -> bool {
    text.as_bytes().windows(2).any(|w| w == b" #")
}

/// Whether a plain scalar holds `: ` (where a mapping entry would start).
fn has_entry_colon(text: &str) -> bool {
    text.as_bytes().windows(2).any(|w| w == b": ")
}

/// A decimal integer without a leading zero, sign `-` at most, that fits an `i64`.
fn is_decimal(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    let bytes = digits.as_bytes();
    match bytes {
        [b'0'] => !text.starts_with('-'),
        [b'1'..=b'9', rest @ ..] => rest.len() <= 17 && rest.iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

/// Whether a plain scalar is a string to every reading YAML gives it: no boolean, null or
/// number spelling (YAML 1.1's and 1.2's, as the YAML reader's untyped reads accept them)
/// could take it. Conservative: `false` for anything that looks numeric at all.
fn plain_is_string(text: &str) -> bool {
    const WORDS: [&str; 12] = [
        "true", "false", "yes", "no", "y", "n", "on", "off", "null", "inf", "infinity", "nan",
    ];
    if text == "~" || (text.len() <= 8 && WORDS.iter().any(|w| text.eq_ignore_ascii_case(w))) {
        return false;
    }
    match text.as_bytes()[0] {
        b'0'..=b'9' | b'+' | b'-' | b'.' => !looks_numeric(text),
        _ => true,
    }
}

/// Whether a text that starts like a number could be one: an integer in any base (hex digits
/// allowed throughout), a float (one `.`, an exponent), or a sexagesimal number.
fn looks_numeric(text: &str) -> bool {
    let unsigned = text.strip_prefix(['+', '-']).unwrap_or(text);
    if unsigned.starts_with('.') {
        return true;
    }
    let digits = ["0x", "0X", "0o", "0O", "0b", "0B"]
        .iter()
        .find_map(|p| unsigned.strip_prefix(p))
        .unwrap_or(unsigned);
    let integer = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_hexdigit() || b == b'_');
    let float = {
        let mut dots = 0;
        let mut previous = b' ';
        let mut ok = unsigned.bytes().any(|b| b.is_ascii_digit());
        for b in unsigned.bytes() {
            match b {
                b'0'..=b'9' | b'_' | b'e' | b'E' => {}
                b'.' => dots += 1,
                b'+' | b'-' if matches!(previous, b'e' | b'E') => {}
                _ => ok = false,
            }
            previous = b;
        }
        ok && dots <= 1
    };
    let sexagesimal = unsigned.contains(':')
        && unsigned
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b':' | b'.' | b'_'));
    integer || float || sexagesimal
}

/// A single- or double-quoted scalar at the start of `text`, closed on the same line: its
/// value and what follows it (spaces removed).
fn quoted(text: &str) -> Step<(Cow<'_, str>, &str)> {
    let quote = text.as_bytes()[0];
    let body = &text[1..];
    let bytes = body.as_bytes();
    let mut i = 0;
    let mut escaped = false;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quote == b'"' => {
                escaped = true;
                i += 2;
                continue;
            }
            b'\'' if quote == b'\'' && bytes.get(i + 1) == Some(&b'\'') => {
                escaped = true;
                i += 2;
                continue;
            }
            b if b == quote => {
                let inner = &body[..i];
                let after = body[i + 1..].trim_start_matches(' ');
                let value = if !escaped {
                    Cow::Borrowed(inner)
                } else if quote == b'\'' {
                    Cow::Owned(inner.replace("''", "'"))
                } else {
                    Cow::Owned(unescape(inner)?)
                };
                return Ok((value, after));
            }
            _ => i += 1,
        }
    }
    // Not closed on this line: a scalar over several lines.
    Err(Decline)
}

/// The value of a double-quoted scalar's text (its escapes resolved).
fn unescape(inner: &str) -> Step<String> {
    let mut value = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            value.push(c);
            continue;
        }
        let escape = chars.next().ok_or(Decline)?;
        let hex = |chars: &mut std::str::Chars<'_>, n: usize| -> Step<char> {
            let digits: String = chars.by_ref().take(n).collect();
            if digits.len() != n || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Decline);
            }
            u32::from_str_radix(&digits, 16)
                .ok()
                .and_then(char::from_u32)
                .ok_or(Decline)
        };
        value.push(match escape {
            '0' => '\0',
            'a' => '\u{7}',
            'b' => '\u{8}',
            't' => '\t',
            'n' => '\n',
            'v' => '\u{b}',
            'f' => '\u{c}',
            'r' => '\r',
            'e' => '\u{1b}',
            ' ' => ' ',
            '"' => '"',
            '/' => '/',
            '\\' => '\\',
            'N' => '\u{85}',
            '_' => '\u{a0}',
            'L' => '\u{2028}',
            'P' => '\u{2029}',
            'x' => hex(&mut chars, 2)?,
            'u' => hex(&mut chars, 4)?,
            'U' => hex(&mut chars, 8)?,
            _ => return Err(Decline),
        });
    }
    Ok(value)
}

/// Writes `value` as a JSON string.
fn push_json_string(out: &mut String, value: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in value.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&value[start..i]);
        if escape.is_empty() {
            out.push_str(&format!("\\u{b:04x}"));
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&value[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> Option<serde_json::Value> {
        to_json(text).map(|j| serde_json::from_str(&j).expect("valid JSON"))
    }

    #[test]
    fn kubectl_style_text_becomes_the_same_json() {
        let text = "apiVersion: v1\nkind: List\nmetadata:\n  resourceVersion: \"\"\nitems:\n\
                    - apiVersion: v1\n  kind: Service\n  metadata:\n    name: a\n    \
                    labels:\n      app.kubernetes.io/name: a\n    annotations:\n      \
                    note: |\n        line one\n\n        line: two # kept\n      \
                    strip: |-\n        x\n  spec:\n    clusterIP: 10.96.0.1\n    \
                    clusterIPs:\n    - 10.96.0.1\n    ports:\n    - name: http\n      \
                    port: 80\n      targetPort: http\n    - port: -1\n      \
                    targetPort: 8080\n    selector: {}\n    uid: 00000000-0000-4000-8000-000000000001\n  \
                    status:\n    loadBalancer: {}\n# a comment\n\n\
                    - kind: X\n  a: 'it''s'\n  b: \"q\\\"\\u00e9\\n\"\n  c: ~\n  d:\n  e: true\n  \
                    f:\n  -\n  - []\n";
        let expected = serde_json::json!({
            "apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""},
            "items": [
                {"apiVersion": "v1", "kind": "Service",
                 "metadata": {"name": "a", "labels": {"app.kubernetes.io/name": "a"},
                              "annotations": {"note": "line one\n\nline: two # kept\n",
                                              "strip": "x"}},
                 "spec": {"clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1"],
                          "ports": [{"name": "http", "port": 80, "targetPort": "http"},
                                    {"port": -1, "targetPort": 8080}],
                          "selector": {}, "uid": "00000000-0000-4000-8000-000000000001"},
                 "status": {"loadBalancer": {}}},
                {"kind": "X", "a": "it's", "b": "q\"é\n", "c": null, "d": null, "e": true,
                 "f": [null, []]}
            ]
        });
        assert_eq!(json(text), Some(expected));
        // The same as the YAML reader reads it.
        let yaml: serde_json::Value = serde_saphyr::from_str(text).unwrap();
        assert_eq!(json(text), Some(yaml));
    }

    #[test]
    fn anything_outside_the_subset_is_declined() {
        for text in [
            "a: &x 1\nb: *x\n",
            "a: !!str 1\n",
            "a: {b: 1}\n",
            "a: [1]\n",
            "a: yes\n",
            "a: NULL\n",
            "a: True\n",
            "a: 0x1F\n",
            "a: 1.5\n",
            "a: 010\n",
            "a: 1e3\n",
            "a: .inf\n",
            "a: nan\n",
            "a: 1:30\n",
            "a: 1\na: 2\n",
            "<<: {}\n",
            "a:\n\tb: 1\n",
            "a: 1\r\n",
            "a: \u{1}\n",
            "a: x\u{85}y\n",
            "a: x\u{2028}y\n",
            "---\na: 1\n",
            "%YAML 1.2\n---\na: 1\n",
            "a: long\n  continued\n",
            "a: \"open\n  close\"\n",
            "a: b: c\n",
            "a: x # comment\n",
            "a: >\n  folded\n",
            "a: |+\n  kept\n",
            "- 1\n",
            "just text\n",
            "a:\n  - - 1\n",
            "? a\n: 1\n",
            "1: a\n",
            "true: a\n",
            "a:\n- 1\nb: 2\n- 3\n",
        ] {
            assert!(to_json(text).is_none(), "{text:?} -> {:?}", to_json(text));
        }
        let deep = (0..50).fold(String::new(), |mut s, i| {
            s.push_str(&" ".repeat(i));
            s.push_str("a:\n");
            s
        });
        assert!(to_json(&deep).is_none());
    }

    #[test]
    fn strings_that_only_look_like_numbers_stay_strings() {
        for value in [
            "10.96.0.1",
            "fd00::55",
            "2001:db8::1",
            "node-1",
            "1Gi",
            "100m",
            "v1",
            "8080tcp",
            "1.2.3",
            "10-96-0-1",
            "00000000-0000-4000-8000-000000000001",
        ] {
            let text = format!("a: {value}\n");
            assert_eq!(
                json(&text),
                Some(serde_json::json!({ "a": value })),
                "{value}"
            );
            let yaml: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
            assert_eq!(json(&text), Some(yaml), "{value}");
        }
    }

    /// A small YAML tree rendered in block style.
    #[derive(Clone, Debug)]
    enum Node {
        Scalar(&'static str),
        Map(Vec<(&'static str, Node)>),
        Seq(Vec<Node>),
    }

    /// Keys and scalars, the ordinary ones and the ones the subset must decline or read
    /// exactly as YAML does.
    const KEYS: [&str; 14] = [
        "a",
        "a",
        "b",
        "port",
        "app.kubernetes.io/name",
        "\"a\"",
        "'s'",
        "x y",
        "1",
        "true",
        "<<",
        "-k",
        "k#",
        "k #c",
    ];
    /// The first ten are in the subset, so that most texts are taken.
    const SCALARS: [&str; 47] = [
        "v1",
        "10.96.0.1",
        "fd00::55",
        "80",
        "-1",
        "0",
        "true",
        "~",
        "''",
        "'it''s'",
        "010",
        "0x1F",
        "1.5",
        "1e3",
        "1_000",
        "1:30",
        "false",
        "True",
        "yes",
        "no",
        "on",
        "y",
        "~",
        "null",
        "Null",
        "",
        "\"\"",
        "\"x\"",
        "'x'",
        "\"a\\\"b\\n\\u00e9\"",
        "\"open",
        "{}",
        "[]",
        "{a: 1}",
        "[1]",
        "&x v",
        "*x",
        "!!str 1",
        "a: b",
        "a # c",
        "a#b",
        "|",
        "|-",
        ">",
        "x\ty",
        ".5",
        "nan",
    ];

    /// Mostly keys of the subset (the first five), duplicates among them.
    fn key() -> impl proptest::strategy::Strategy<Value = &'static str> {
        use proptest::prelude::*;
        prop_oneof![
            3 => (0..5usize).prop_map(|i| KEYS[i]),
            1 => (0..KEYS.len()).prop_map(|i| KEYS[i]),
        ]
    }

    fn node() -> impl proptest::strategy::Strategy<Value = Node> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            3 => (0..10usize).prop_map(|i| Node::Scalar(SCALARS[i])),
            1 => (0..SCALARS.len()).prop_map(|i| Node::Scalar(SCALARS[i])),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec((key(), inner.clone()), 1..4).prop_map(Node::Map),
                proptest::collection::vec(inner, 1..4).prop_map(Node::Seq),
            ]
        })
    }

    /// Renders `node` as the value of a key or item at `indent` (`indentless`: sequences
    /// under a key at the key's column, as kubectl prints them).
    fn render(out: &mut String, node: &Node, indent: usize, indentless: bool) {
        match node {
            Node::Scalar(s) if s.starts_with('|') => {
                out.push_str(&format!(" {s}\n{}line\n", " ".repeat(indent + 2)));
            }
            Node::Scalar("") => out.push('\n'),
            Node::Scalar(s) => out.push_str(&format!(" {s}\n")),
            Node::Map(entries) => {
                out.push('\n');
                for (k, v) in entries {
                    out.push_str(&format!("{}{k}:", " ".repeat(indent + 2)));
                    render(out, v, indent + 2, indentless);
                }
            }
            Node::Seq(items) => {
                out.push('\n');
                let at = if indentless { indent } else { indent + 2 };
                for item in items {
                    out.push_str(&format!("{}-", " ".repeat(at)));
                    render(out, item, at, indentless);
                }
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2048))]

        /// Whatever the text holds, a text the subset takes reads as YAML to the same value
        /// (the YAML reader's untyped read: what `deserialize_any` targets such as
        /// `IntOrString` see).
        #[test]
        fn what_the_subset_takes_reads_the_same_as_yaml(
            entries in proptest::collection::vec(((0..KEYS.len()), node()), 1..5),
            key_odds in 0usize..4,
            indentless in proptest::bool::ANY,
            inserts in proptest::collection::vec((0usize..200, 0usize..6), 0..3),
        ) {
            let mut text = String::new();
            for (k, v) in &entries {
                // Mostly keys of the subset (the first five), duplicates among them.
                let k = if key_odds == 0 { *k } else { k % 5 };
                text.push_str(&format!("{}:", KEYS[k]));
                render(&mut text, v, 0, indentless);
            }
            let lines = ["# c\n", "\n", "  \n", "  # c\n", "    x\n", "- y\n"];
            for &(at, line) in &inserts {
                let starts: Vec<usize> = std::iter::once(0)
                    .chain(text.match_indices('\n').map(|(i, _)| i + 1))
                    .filter(|&i| i < text.len())
                    .collect();
                text.insert_str(starts[at % starts.len()], lines[line]);
            }
            if let Some(converted) = json(&text) {
                let yaml = serde_saphyr::from_str::<serde_json::Value>(&text);
                proptest::prop_assert!(yaml.is_ok(), "taken, but YAML refuses it: {:?}\n{}", yaml, text);
                proptest::prop_assert_eq!(converted, yaml.expect("checked"), "{}", text);
            }
        }
    }
}
