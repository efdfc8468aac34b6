//! Chat templates: Hugging Face's Jinja `chat_template` rendered with `minijinja` the way
//! transformers' `apply_chat_template` renders it (`transformers/utils/chat_template_utils.py`):
//! `trim_blocks` and `lstrip_blocks` on, the variables `messages`, `add_generation_prompt`,
//! `bos_token`, `eos_token`, and the helpers `raise_exception`, `strftime_now` and a
//! `tojson` that writes like Python's `json.dumps(ensure_ascii=False)`. Python string and
//! dict methods (`.strip()`, `.startswith()`, `.items()`, ...) come from
//! `minijinja-contrib`'s pycompat layer.
//!
//! A template is the model's code, so it runs under limits: [`TEMPLATE_FUEL`]
//! instructions, [`MAX_RECURSION`] levels of recursion and [`MAX_OUTPUT_BYTES`] of
//! output; past any of them the render fails with a clear error instead of running
//! forever or exhausting memory.

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Environment, Error, ErrorKind};

use crate::{Result, TokenizerError};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, ...
    pub role: String,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// A message with the given role and content.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// Instructions a template may execute per render (real templates use a few thousand
/// per message).
pub const TEMPLATE_FUEL: u64 = 5_000_000;
/// Nesting of macro calls and includes.
pub const MAX_RECURSION: usize = 64;
/// Bytes a render may produce.
pub const MAX_OUTPUT_BYTES: usize = 16 << 20;

/// A writer that refuses to grow past a limit.
struct Capped(Vec<u8>);

impl std::io::Write for Capped {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + b.len() > MAX_OUTPUT_BYTES {
            return Err(std::io::Error::other("output limit"));
        }
        self.0.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Render `template` for `messages`. `bos_token` / `eos_token` are the texts the template
/// may insert (empty when the model has none). On Unix the render runs in the memory-
/// and time-limited child of [`crate::sandbox`].
pub fn render_chat(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String> {
    let render = || {
        render_here(
            template,
            messages,
            add_generation_prompt,
            bos_token,
            eos_token,
        )
        .map_err(|e| match e {
            TokenizerError::Template(m) => m,
            e => e.to_string(),
        })
    };
    crate::sandbox::run(render, MAX_OUTPUT_BYTES).map_err(|m| {
        TokenizerError::Template(if m.starts_with("chat template") {
            m
        } else {
            format!("chat template failed: {m}")
        })
    })
}

/// [`render_chat`] in this process (fuel, recursion and output limits only).
fn render_here(
    template: &str,
    messages: &[ChatMessage],
    add_generation_prompt: bool,
    bos_token: &str,
    eos_token: &str,
) -> Result<String> {
    let mut env = Environment::new();
    env.set_fuel(Some(TEMPLATE_FUEL));
    env.set_recursion_limit(MAX_RECURSION);
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    env.add_filter("tojson", tojson);
    env.add_template("chat", template)
        .map_err(|e| TokenizerError::Template(format!("chat template does not parse: {e:#}")))?;
    let msgs: Vec<Value> = messages
        .iter()
        .map(|m| {
            Value::from_iter([
                ("role", Value::from(m.role.as_str())),
                ("content", Value::from(m.content.as_str())),
            ])
        })
        .collect();
    let tmpl = env
        .get_template("chat")
        .map_err(|e| TokenizerError::Template(e.to_string()))?;
    let ctx = minijinja::context! {
        messages => msgs,
        add_generation_prompt => add_generation_prompt,
        bos_token => bos_token,
        eos_token => eos_token,
    };
    let mut out = Capped(Vec::new());
    tmpl.render_captured_to(ctx, &mut out).map_err(|e| {
        let why = match e.kind() {
            ErrorKind::OutOfFuel => format!(
                "it ran past its limit of {TEMPLATE_FUEL} instructions (an endless or exploding loop)"
            ),
            ErrorKind::WriteFailure => {
                format!("its output grew past the limit of {MAX_OUTPUT_BYTES} bytes")
            }
            _ => format!("{e:#}"),
        };
        TokenizerError::Template(format!("chat template failed: {why}"))
    })?;
    String::from_utf8(out.0)
        .map_err(|_| TokenizerError::Template("chat template produced invalid UTF-8".into()))
}

fn raise_exception(msg: String) -> std::result::Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, msg))
}

/// `strftime_now(fmt)`: the current UTC time formatted with the common `strftime` codes.
fn strftime_now(fmt: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    strftime(&fmt, secs)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Format Unix time `secs` (UTC) with `%Y %y %m %d %e %B %b %A %a %H %I %M %S %p %j %%`.
pub(crate) fn strftime(fmt: &str, secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let yday = days - days_from_civil(y, 1, 1) + 1;
    let (hh, mm, ss) = (sod / 3600, sod / 60 % 60, sod % 60);
    let mut out = String::new();
    let mut it = fmt.chars();
    while let Some(c) = it.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some('Y') => out.push_str(&y.to_string()),
            Some('y') => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            Some('m') => out.push_str(&format!("{m:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('e') => out.push_str(&format!("{d:2}")),
            Some('B') => out.push_str(MONTHS[m as usize - 1]),
            Some('b') => out.push_str(&MONTHS[m as usize - 1][..3]),
            Some('A') => out.push_str(DAYS[weekday]),
            Some('a') => out.push_str(&DAYS[weekday][..3]),
            Some('H') => out.push_str(&format!("{hh:02}")),
            Some('I') => out.push_str(&format!("{:02}", (hh + 11) % 12 + 1)),
            Some('M') => out.push_str(&format!("{mm:02}")),
            Some('S') => out.push_str(&format!("{ss:02}")),
            Some('p') => out.push_str(if hh < 12 { "AM" } else { "PM" }),
            Some('j') => out.push_str(&format!("{yday:03}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `tojson(indent=None)`: Python's `json.dumps(value, ensure_ascii=False, indent=indent)`.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let _: Option<Value> = kwargs.get("sort_keys")?;
    let _: Option<Value> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&value, indent, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

fn write_json(
    v: &Value,
    indent: Option<usize>,
    depth: usize,
    out: &mut String,
) -> std::result::Result<(), Error> {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => out.push_str(&v.to_string()),
        ValueKind::String => {
            let s = v.as_str().unwrap_or_default();
            out.push_str(
                &serde_json::to_string(s)
                    .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?,
            );
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_json(item, indent, depth + 1, out)?;
            }
            newline(out, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let keys: Vec<Value> = v.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                let ks = k.as_str().map_or_else(|| k.to_string(), str::to_string);
                out.push_str(
                    &serde_json::to_string(&ks)
                        .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?,
                );
                out.push_str(": ");
                write_json(&v.get_item(k)?, indent, depth + 1, out)?;
            }
            newline(out, depth);
            out.push('}');
        }
        _ => {
            let s = v.to_string();
            out.push_str(
                &serde_json::to_string(&s)
                    .map_err(|e| Error::new(ErrorKind::InvalidOperation, e.to_string()))?,
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strftime_known_date() {
        // 2024-02-29 13:05:09 UTC, a Thursday
        assert_eq!(
            strftime("%d %B %Y %a %H:%M:%S %j", 1_709_211_909),
            "29 February 2024 Thu 13:05:09 060"
        );
    }

    #[test]
    fn tojson_is_pythonic() {
        let t = "{{ {'a': [1, 'é'], 'b': none} | tojson }}|{{ 'x' | tojson(indent=2) }}";
        let s = render_chat(t, &[], false, "", "").unwrap();
        assert_eq!(s, "{\"a\": [1, \"é\"], \"b\": null}|\"x\"");
    }

    #[test]
    fn raise_exception_fails_rendering() {
        let err = render_chat(
            "{{ raise_exception('no system role') }}",
            &[],
            false,
            "",
            "",
        )
        .unwrap_err();
        assert!(err.to_string().contains("no system role"), "{err}");
    }

    #[test]
    fn python_string_methods_work() {
        let m = [ChatMessage::new("user", "  hi  ")];
        let t = "{% for m in messages %}{{ m.content.strip() }}{% if m.role.startswith('us') %}!{% endif %}{% endfor %}";
        assert_eq!(render_chat(t, &m, false, "", "").unwrap(), "hi!");
    }
}

#[cfg(test)]
mod limit_tests {
    use super::*;

    fn render(t: &str) -> Result<String> {
        render_chat(t, &[ChatMessage::new("user", "hi")], true, "", "")
    }

    #[test]
    fn hostile_templates_fail_cleanly() {
        let doubling = "{% set ns = namespace(s='xxxxxxxx') %}{% for i in range(40) %}\
                        {% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}";
        let e = render(doubling).unwrap_err().to_string();
        assert!(e.contains("memory limit"), "{e}");
        let endless =
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}";
        let e = render(endless).unwrap_err().to_string();
        assert!(e.contains("instructions"), "{e}");
        let huge = "{% for i in range(100000) %}{{ 'y' * 1000 }}{% endfor %}";
        let e = render(huge).unwrap_err().to_string();
        assert!(e.contains("bytes"), "{e}");
        let deep = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}";
        assert!(render(deep).is_err());
        assert_eq!(
            render("{% for m in messages %}{{ m.role }}:{{ m.content }}{% endfor %}").unwrap(),
            "user:hi"
        );
    }
}
