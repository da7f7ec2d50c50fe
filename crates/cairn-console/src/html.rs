//! HTML helpers: escaping, the page layout with its navigation and style sheet, and the
//! formatting of sizes and times. Every value from the cluster or the user goes through [`esc`].

use std::fmt::Write as _;

use crate::auth::Principal;
use crate::users::Role;

/// Escapes text for HTML element content and quoted attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encodes everything but unreserved characters (RFC 3986), for query values.
pub fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// The pages of the navigation bar: (path, title).
pub const NAVIGATION: [(&str, &str); 9] = [
    ("/", "Dashboard"),
    ("/nodes", "Nodes"),
    ("/services", "Services"),
    ("/volumes", "Volumes"),
    ("/containers", "Containers"),
    ("/nfs", "NFS gateways"),
    ("/vips", "VIP pools"),
    ("/alarms", "Alarms"),
    ("/users", "Users"),
];

/// A message shown at the top of a page after a form was sent.
#[derive(Default, serde::Deserialize)]
pub struct Flash {
    pub ok: Option<String>,
    pub error: Option<String>,
}

/// A whole page: header, navigation (with `current` marked), the flash message and `body`.
pub fn page(title: &str, current: &str, node: &str, user: &Principal, flash: &Flash, body: &str) -> String {
    let mut nav = String::new();
    for (path, name) in NAVIGATION {
        let class = if path == current { " class=\"current\"" } else { "" };
        let _ = write!(nav, "<a href=\"{path}\"{class}>{name}</a>");
    }
    let mut messages = String::new();
    if let Some(ok) = &flash.ok {
        let _ = write!(messages, "<p class=\"flash ok\" id=\"flash-ok\">{}</p>", esc(ok));
    }
    if let Some(error) = &flash.error {
        let _ = write!(messages, "<p class=\"flash error\" id=\"flash-error\">{}</p>", esc(error));
    }
    let role_note = match user.role {
        Role::Admin => String::new(),
        Role::Readonly => " <span class=\"badge down\">read-only</span>".to_owned(),
    };
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · Cairn</title><link rel=\"stylesheet\" href=\"/style.css\"></head><body>\
         <header><span class=\"brand\">Cairn</span><span class=\"node\">console on {node}</span>\
         <form method=\"post\" action=\"/logout\" class=\"logout\"><span>{user}{role_note}</span> \
         <button type=\"submit\">Log out</button></form></header>\
         <nav>{nav}</nav><main><h1>{title}</h1>{messages}{body}</main></body></html>\n",
        title = esc(title),
        node = esc(node),
        user = esc(&user.user),
    )
}

/// A table with a header row; `rows` are already-escaped cells.
pub fn table(id: &str, headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!("<table id=\"{id}\"><thead><tr>");
    for header in headers {
        let _ = write!(out, "<th>{}</th>", esc(header));
    }
    out.push_str("</tr></thead><tbody>");
    if rows.is_empty() {
        let _ = write!(out, "<tr><td colspan=\"{}\" class=\"empty\">none</td></tr>", headers.len());
    }
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{cell}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

/// A coloured state badge.
pub fn badge(text: &str, good: bool) -> String {
    format!("<span class=\"badge {}\">{}</span>", if good { "up" } else { "down" }, esc(text))
}

/// `1.5 GiB`, as the CLI prints sizes.
pub fn bytes(count: u64) -> String {
    cairn_types::text::size(count)
}

/// Parses `1073741824`, `10G`, `500MiB`, `2 TB` (binary multiples) into bytes, as the CLI does.
pub fn parse_bytes(text: &str) -> Option<u64> {
    cairn_types::text::parse_size(text).ok()
}

/// `2025-01-31 12:34:56 UTC` from milliseconds since the Unix epoch; `never` for 0.
pub fn time(ms: u64) -> String {
    if ms == 0 { "never".to_owned() } else { cairn_types::text::utc(ms) }
}

/// `3.2 s ago`, `5 min ago`; `never` for 0.
pub fn age(ms: u64, now_ms: u64) -> String {
    if ms == 0 {
        return "never".to_owned();
    }
    let elapsed = now_ms.saturating_sub(ms);
    match elapsed {
        0..60_000 => format!("{:.1} s ago", elapsed as f64 / 1000.0),
        60_000..7_200_000 => format!("{} min ago", elapsed / 60_000),
        _ => format!("{} h ago", elapsed / 3_600_000),
    }
}

/// The style sheet (`/style.css`).
pub const STYLE: &str = r#"
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2733;background:#f3f5f8}
header{display:flex;align-items:center;gap:16px;background:#1f3a5a;color:#fff;padding:10px 20px}
header .brand{font-weight:700;font-size:18px;letter-spacing:.5px}
header .node{opacity:.75}
header .logout{margin-left:auto;display:flex;align-items:center;gap:8px}
nav{display:flex;flex-wrap:wrap;gap:2px;background:#2c4f78;padding:0 14px}
nav a{color:#dfe8f3;text-decoration:none;padding:8px 12px}
nav a.current,nav a:hover{background:#f3f5f8;color:#1f3a5a}
main{padding:16px 24px;max-width:1400px}
h1{font-size:22px;margin:6px 0 14px}
h2{font-size:16px;margin:22px 0 8px}
table{border-collapse:collapse;width:100%;background:#fff;box-shadow:0 1px 2px rgba(0,0,0,.08)}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #e4e8ee;vertical-align:top}
th{background:#e9eef5;font-weight:600}
td.empty{color:#7a8796;font-style:italic}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600}
.badge.up{background:#d8f1df;color:#1c6b34}
.badge.down{background:#fbe0e0;color:#9a2121}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;padding:12px 16px;min-width:170px;box-shadow:0 1px 2px rgba(0,0,0,.08);border-radius:4px}
.card .value{font-size:24px;font-weight:700}
.card .label{color:#5b6878}
.bar{height:8px;background:#e4e8ee;border-radius:4px;overflow:hidden;margin-top:6px}
.bar span{display:block;height:100%;background:#2f7dd1}
form.inline{display:inline}
fieldset{background:#fff;border:1px solid #d6dde6;margin:10px 0;padding:10px 14px}
legend{font-weight:600}
label{display:inline-block;margin:4px 12px 4px 0}
input,select{font:inherit;padding:3px 6px;border:1px solid #b9c3cf;border-radius:3px}
button{font:inherit;padding:4px 12px;border:1px solid #2c4f78;background:#2c4f78;color:#fff;border-radius:3px;cursor:pointer}
button.danger{background:#b33;border-color:#b33}
.flash{padding:8px 12px;border-radius:4px}
.flash.ok{background:#d8f1df;color:#1c6b34}
.flash.error{background:#fbe0e0;color:#9a2121}
.note{color:#5b6878}
code{background:#e9eef5;padding:0 4px;border-radius:3px}
.login{max-width:360px;margin:80px auto;background:#fff;padding:24px;box-shadow:0 1px 3px rgba(0,0,0,.12)}
.login label{display:block}
.login input{width:100%}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_sizes_and_times() {
        assert_eq!(esc("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(url_encode("/vips?a=b c"), "/vips%3Fa%3Db%20c");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 30), "3 GiB");
        assert_eq!(parse_bytes("10G"), Some(10 << 30));
        assert_eq!(parse_bytes("500 MiB"), Some(500 << 20));
        assert_eq!(parse_bytes("42"), Some(42));
        assert_eq!(parse_bytes("ten"), None);
        assert_eq!(time(0), "never");
        assert_eq!(time(1_700_000_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(age(1_000, 4_500), "3.5 s ago");
    }
}
