//! pgoutput TupleData -> a row dict, natively: the Postgres CDC source's hot path.
//!
//! Mirrors `connectors.postgres._proto.decode_row` and the converters of
//! `connectors.postgres._types` for the common types (each column's `kind`, chosen by
//! `_types.native_kinds`). Whatever a kind does not cover (an edge case such as a BC
//! date, infinity, a five-digit year, an odd text form) goes to the column's Python
//! converter, so the Python converters stay the reference and both paths give the same
//! values (tests/connectors/test_pg_native.py compares them).

use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};

const DAY_US: i64 = 86_400_000_000;

const K_PYTHON: u8 = 0;
const K_STR: u8 = 1;
const K_INT: u8 = 2;
const K_FLOAT: u8 = 3;
const K_BOOL: u8 = 4;
const K_TIMESTAMP_US: u8 = 5;
const K_TIMESTAMP_MS: u8 = 6;
const K_ZONED_TIMESTAMP: u8 = 7;
const K_DATE: u8 = 8;
const K_TIME_US: u8 = 9;
const K_TIME_MS: u8 = 10;
const K_ZONED_TIME: u8 = 11;
const K_INTERVAL_US: u8 = 12;
const K_BYTEA: u8 = 13;
const K_NUMERIC_STRING: u8 = 14;
/// An array whose elements have kind `kind - K_ARRAY`.
const K_ARRAY: u8 = 100;

fn digits(b: &[u8]) -> Option<i64> {
    if b.is_empty() || b.len() > 18 {
        return None;
    }
    let mut n: i64 = 0;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n * 10 + (c - b'0') as i64;
    }
    Some(n)
}

/// Python's `int(s)` for the text forms Postgres writes (optional sign, digits).
fn int_text(b: &[u8]) -> Option<i64> {
    let (neg, body) = match b.first() {
        Some(b'-') => (true, &b[1..]),
        Some(b'+') => (false, &b[1..]),
        _ => (false, b),
    };
    let n = digits(body)?;
    Some(if neg { -n } else { n })
}

/// Six fractional digits from 1 to 6 given ones ("5" -> 500000).
fn fraction_us(b: &[u8]) -> Option<i64> {
    if b.is_empty() || b.len() > 6 {
        return None;
    }
    let mut n = digits(b)?;
    for _ in b.len()..6 {
        n *= 10;
    }
    Some(n)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// "YYYY-MM-DD" (a four-digit AD year) -> days since 1970-01-01.
fn date_days(b: &[u8]) -> Option<i64> {
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (y, m, d) = (digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    Some(days_from_civil(y, m, d))
}

/// "HH:MM:SS[.ffffff]" -> microseconds since midnight.
fn time_us(b: &[u8]) -> Option<i64> {
    if b.len() < 8 || b[2] != b':' || b[5] != b':' {
        return None;
    }
    let (hh, mm, ss) = (digits(&b[0..2])?, digits(&b[3..5])?, digits(&b[6..8])?);
    let us = match b.len() {
        8 => 0,
        _ if b[8] == b'.' => fraction_us(&b[9..])?,
        _ => return None,
    };
    Some(((hh * 60 + mm) * 60 + ss) * 1_000_000 + us)
}

/// "YYYY-MM-DD HH:MM:SS[.ffffff]" -> microseconds since the epoch.
fn timestamp_us(b: &[u8]) -> Option<i64> {
    if b.len() < 19 || b[10] != b' ' {
        return None;
    }
    Some(date_days(&b[..10])? * DAY_US + time_us(&b[11..])?)
}

/// The last '+' or '-' after the first character: (time, offset seconds).
fn split_offset(b: &[u8]) -> Option<(&[u8], i64)> {
    let i = (1..b.len()).rev().find(|&i| b[i] == b'+' || b[i] == b'-')?;
    let mut parts = b[i + 1..].split(|&c| c == b':');
    let mut secs = digits(parts.next()?)? * 3600;
    if let Some(p) = parts.next() {
        secs += digits(p)? * 60;
    }
    if let Some(p) = parts.next() {
        secs += digits(p)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some((&b[..i], if b[i] == b'-' { -secs } else { secs }))
}

fn push_fraction(out: &mut String, frac: i64) {
    if frac != 0 {
        let f = format!(".{frac:06}");
        out.push_str(f.trim_end_matches('0'));
    }
}

/// timetz text -> Debezium's ZonedTime in UTC ("10:15:30.5Z").
fn zoned_time(b: &[u8]) -> Option<String> {
    let (t, offset) = split_offset(b)?;
    let us = (time_us(t)? - offset * 1_000_000).rem_euclid(DAY_US);
    let (secs, frac) = (us / 1_000_000, us % 1_000_000);
    let mut out = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    push_fraction(&mut out, frac);
    out.push('Z');
    Some(out)
}

/// timestamptz text in UTC ("...+00", a four-digit AD year) -> Debezium's ZonedTimestamp
/// with six fractional digits.
fn zoned_timestamp(s: &str) -> Option<String> {
    let b = s.as_bytes();
    if !s.ends_with("+00") || b.len() > 29 || b.len() < 22 || b[4] != b'-' || b[10] != b' ' {
        return None;
    }
    let body = &s[..s.len() - 3];
    let (date, time) = (&body[..10], &body[11..]);
    if time.contains(' ') {
        return None;
    }
    let (whole, frac) = match time.find('.') {
        Some(i) => (&time[..i], &time[i + 1..]),
        None => (time, ""),
    };
    Some(format!("{date}T{whole}.{frac:0<6}Z"))
}

/// Python's `round(x)` of a float: half to even.
fn round_half_even(x: f64) -> f64 {
    let r = x.round();
    if (x - x.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - x.signum()
    } else {
        r
    }
}

/// ISO-8601 interval text -> microseconds, a month 365.25/12 days (MicroDuration).
fn interval_us(b: &[u8]) -> Option<i64> {
    if b.first() != Some(&b'P') {
        return None;
    }
    // the units in the order the text may hold them, each at most once
    const DATE_UNITS: &[u8] = b"YMWD";
    const TIME_UNITS: &[u8] = b"HMS";
    let (mut months, mut days, mut time) = (0i64, 0i64, 0i64);
    let mut pos = 1;
    let mut in_time = false;
    let mut next_unit = 0usize;
    while pos < b.len() {
        if b[pos] == b'T' {
            if in_time {
                return None;
            }
            in_time = true;
            next_unit = 0;
            pos += 1;
            continue;
        }
        let start = pos;
        if b[pos] == b'-' {
            pos += 1;
        }
        while pos < b.len() && (b[pos].is_ascii_digit() || b[pos] == b'.') {
            pos += 1;
        }
        if pos >= b.len() {
            return None;
        }
        let num = &b[start..pos];
        let unit = b[pos];
        pos += 1;
        let units = if in_time { TIME_UNITS } else { DATE_UNITS };
        let idx = units[next_unit..].iter().position(|&u| u == unit)? + next_unit;
        next_unit = idx + 1;
        if units[idx] == b'S' && in_time {
            let (neg, body) = if num.first() == Some(&b'-') { (true, &num[1..]) } else { (false, num) };
            let (whole, frac) = match body.iter().position(|&c| c == b'.') {
                Some(i) => (&body[..i], &body[i + 1..]),
                None => (body, &b""[..]),
            };
            if body.contains(&b'.') && frac.is_empty() || !frac.iter().all(u8::is_ascii_digit) {
                return None;
            }
            let frac = &frac[..frac.len().min(6)];
            let f = if frac.is_empty() { 0 } else { fraction_us(frac)? };
            let us = digits(whole)?.checked_mul(1_000_000)?.checked_add(f)?;
            time = time.checked_add(if neg { -us } else { us })?;
            continue;
        }
        if num.contains(&b'.') {
            return None;
        }
        let n = int_text(num)?;
        match (in_time, unit) {
            (false, b'Y') => months = months.checked_add(n.checked_mul(12)?)?,
            (false, b'M') => months = months.checked_add(n)?,
            (false, b'W') => days = days.checked_add(n.checked_mul(7)?)?,
            (false, b'D') => days = days.checked_add(n)?,
            (true, b'H') => time = time.checked_add(n.checked_mul(3_600_000_000)?)?,
            (true, b'M') => time = time.checked_add(n.checked_mul(60_000_000)?)?,
            _ => return None,
        }
    }
    if months.abs() > 1_000_000 {
        return None; // beyond exact float products: the Python converter decides
    }
    let month_us = round_half_even((months as f64) * (365.25 / 12.0) * (DAY_US as f64)) as i64;
    month_us.checked_add(days.checked_mul(DAY_US)?)?.checked_add(time)
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// bytea hex text ("\x0a1b") -> base64 (Kafka Connect bytes in JSON).
fn bytea_base64(b: &[u8]) -> Option<String> {
    if b.len() < 2 || b[0] != b'\\' || b[1] != b'x' || b.len() % 2 != 0 {
        return None;
    }
    let hex = &b[2..];
    let mut raw = Vec::with_capacity(hex.len() / 2);
    for pair in hex.chunks_exact(2) {
        raw.push(hex_val(pair[0])? << 4 | hex_val(pair[1])?);
    }
    let mut out = String::with_capacity((raw.len() + 2) / 3 * 4);
    for chunk in raw.chunks(3) {
        let n = (chunk[0] as u32) << 16
            | (*chunk.get(1).unwrap_or(&0) as u32) << 8
            | *chunk.get(2).unwrap_or(&0) as u32;
        out.push(B64[(n >> 18) as usize & 63] as char);
        out.push(B64[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 { B64[(n >> 6) as usize & 63] as char } else { '=' });
        out.push(if chunk.len() > 2 { B64[n as usize & 63] as char } else { '=' });
    }
    Some(out)
}

/// One value of a native kind; None: the Python converter decides.
fn native(py: Python<'_>, kind: u8, s: &str) -> Option<PyObject> {
    let b = s.as_bytes();
    Some(match kind {
        K_STR => PyString::new(py, s).into_any().unbind(),
        K_INT => int_text(b)?.into_pyobject(py).ok()?.into_any().unbind(),
        K_FLOAT => match s {
            "NaN" | "Infinity" | "-Infinity" => PyString::new(py, s).into_any().unbind(),
            _ => {
                if b.iter().any(|c| c.is_ascii_alphabetic() && *c != b'e' && *c != b'E') {
                    return None;
                }
                s.parse::<f64>().ok()?.into_pyobject(py).ok()?.into_any().unbind()
            }
        },
        K_BOOL => pyo3::types::PyBool::new(py, s == "t").to_owned().into_any().unbind(),
        K_TIMESTAMP_US => timestamp_us(b)?.into_pyobject(py).ok()?.into_any().unbind(),
        K_TIMESTAMP_MS => timestamp_us(b)?.div_euclid(1000).into_pyobject(py).ok()?.into_any().unbind(),
        K_ZONED_TIMESTAMP => PyString::new(py, &zoned_timestamp(s)?).into_any().unbind(),
        K_DATE => date_days(b)?.into_pyobject(py).ok()?.into_any().unbind(),
        K_TIME_US => time_us(b)?.into_pyobject(py).ok()?.into_any().unbind(),
        K_TIME_MS => time_us(b)?.div_euclid(1000).into_pyobject(py).ok()?.into_any().unbind(),
        K_ZONED_TIME => PyString::new(py, &zoned_time(b)?).into_any().unbind(),
        K_INTERVAL_US => interval_us(b)?.into_pyobject(py).ok()?.into_any().unbind(),
        K_BYTEA => PyString::new(py, &bytea_base64(b)?).into_any().unbind(),
        K_NUMERIC_STRING => PyString::new(py, if s == "NaN" { "NAN" } else { s }).into_any().unbind(),
        _ => return None,
    })
}

fn convert(py: Python<'_>, kind: u8, s: &str, conv: &Bound<'_, PyAny>) -> PyResult<PyObject> {
    if kind != K_PYTHON {
        if let Some(v) = native(py, kind, s) {
            return Ok(v);
        }
    }
    Ok(conv.call1((s,))?.unbind())
}

/// An array element: its text (quoted or not), an unquoted NULL, or a nested array.
enum Item {
    Text(String),
    Null,
    Nested(Vec<Item>),
}

/// Postgres array text -> nested items, as `_types.parse_array` reads it; None: malformed.
fn parse_array(s: &str) -> Option<Vec<Item>> {
    let s = if s.starts_with('[') { &s[s.find('=')? + 1..] } else { s };
    let chars: Vec<char> = s.chars().collect();
    let mut pos = 0;
    let items = parse_level(&chars, &mut pos)?;
    Some(items)
}

fn parse_level(s: &[char], pos: &mut usize) -> Option<Vec<Item>> {
    if s.get(*pos) != Some(&'{') {
        return None;
    }
    *pos += 1;
    let mut out = Vec::new();
    if s.get(*pos) == Some(&'}') {
        *pos += 1;
        return Some(out);
    }
    loop {
        let ch = *s.get(*pos)?;
        if ch == '{' {
            out.push(Item::Nested(parse_level(s, pos)?));
        } else if ch == '"' {
            *pos += 1;
            let mut buf = String::new();
            loop {
                let c = *s.get(*pos)?;
                if c == '\\' {
                    buf.push(*s.get(*pos + 1)?);
                    *pos += 2;
                } else if c == '"' {
                    *pos += 1;
                    break;
                } else {
                    buf.push(c);
                    *pos += 1;
                }
            }
            out.push(Item::Text(buf));
        } else {
            let start = *pos;
            while *pos < s.len() && s[*pos] != ',' && s[*pos] != '}' {
                *pos += 1;
            }
            let tok: String = s[start..*pos].iter().collect::<String>().trim().to_string();
            out.push(if tok == "NULL" { Item::Null } else { Item::Text(tok) });
        }
        match s.get(*pos) {
            Some(',') => *pos += 1,
            Some(_) => {
                *pos += 1;
                return Some(out);
            }
            None => return None,
        }
    }
}

fn array_items(py: Python<'_>, items: Vec<Item>, kind: u8, inner: &Bound<'_, PyAny>) -> PyResult<PyObject> {
    let list = PyList::empty(py);
    for item in items {
        match item {
            Item::Null => list.append(py.None())?,
            Item::Text(t) => list.append(convert(py, kind, &t, inner)?)?,
            Item::Nested(v) => list.append(array_items(py, v, kind, inner)?)?,
        }
    }
    Ok(list.into_any().unbind())
}

fn column(py: Python<'_>, kind: u8, s: &str, conv: &Bound<'_, PyAny>) -> PyResult<PyObject> {
    if kind >= K_ARRAY {
        if let Some(items) = parse_array(s) {
            return array_items(py, items, kind - K_ARRAY, &conv.getattr("inner")?);
        }
        return Ok(conv.call1((s,))?.unbind());
    }
    convert(py, kind, s, conv)
}

fn source_error(py: Python<'_>, msg: String) -> PyErr {
    match py.import("schemas").and_then(|m| m.getattr("SourceError")).and_then(|c| c.call1((msg.clone(),))) {
        Ok(exc) => PyErr::from_value(exc),
        Err(_) => PyValueError::new_err(msg),
    }
}

/// TupleData at `pos` -> (row, next position, unchanged TOASTed column names or None).
#[pyfunction]
fn decode_row<'py>(
    py: Python<'py>,
    buf: &Bound<'py, PyBytes>,
    pos: usize,
    names: &Bound<'py, PyList>,
    convs: &Bound<'py, PyList>,
    kinds: &[u8],
    unavailable: &Bound<'py, PyAny>,
) -> PyResult<Bound<'py, PyTuple>> {
    let b = buf.as_bytes();
    let short = || source_error(py, "pgoutput: tuple data ends early".to_string());
    let mut pos = pos;
    let n = u16::from_be_bytes([*b.get(pos).ok_or_else(short)?, *b.get(pos + 1).ok_or_else(short)?]) as usize;
    pos += 2;
    if n != names.len() || n != convs.len() || n != kinds.len() {
        return Err(source_error(py, format!("pgoutput: tuple has {n} columns, relation has {}", names.len())));
    }
    let row = PyDict::new(py);
    let mut unchanged: Option<Bound<'py, PyList>> = None;
    for i in 0..n {
        let name = names.get_item(i)?;
        match *b.get(pos).ok_or_else(short)? {
            b't' => {
                let len_bytes = b.get(pos + 1..pos + 5).ok_or_else(short)?;
                let ln = u32::from_be_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]) as usize;
                pos += 5;
                let raw = b.get(pos..pos + ln).ok_or_else(short)?;
                pos += ln;
                let value = match std::str::from_utf8(raw) {
                    Ok(s) => column(py, kinds[i], s, &convs.get_item(i)?)?,
                    // the same error Python's bytes.decode() raises
                    Err(_) => PyBytes::new(py, raw).call_method0("decode")?.unbind(),
                };
                row.set_item(name, value)?;
            }
            b'n' => {
                row.set_item(name, py.None())?;
                pos += 1;
            }
            b'u' => {
                row.set_item(&name, unavailable)?;
                match &unchanged {
                    Some(list) => list.append(name)?,
                    None => unchanged = Some(PyList::new(py, [name])?),
                }
                pos += 1;
            }
            other => {
                return Err(source_error(py, format!("pgoutput: unexpected tuple column kind {other:?}")));
            }
        }
    }
    let rest: PyObject = match unchanged {
        Some(list) => list.into_any().unbind(),
        None => py.None(),
    };
    PyTuple::new(py, [row.into_any().unbind(), pos.into_pyobject(py)?.into_any().unbind(), rest])
}

#[pymodule]
fn dataflow_pgdecode(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(decode_row, m)?)?;
    Ok(())
}
