//! The pages' shared frame and HTML escaping: every value from the database, the broker or the
//! request goes through [`esc`] before it is written into a page.

use std::fmt::Write;

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

/// `text` with `& < > " '` replaced by entities, safe in element content and quoted attributes.
pub(crate) fn esc(text: &str) -> String {
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

/// `text` percent-encoded for a query string value.
pub(crate) fn url(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Small inline style: the console must work offline, so nothing is fetched from elsewhere.
const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#1d232a;background:#f6f7f9}\
nav{background:#1d3557;padding:.6em 1em}nav a{color:#fff;margin-right:1.2em;text-decoration:none;font-weight:600}\
nav .who{float:right;color:#cfd8e3;font-weight:400}main{padding:1em 1.5em}\
table{border-collapse:collapse;background:#fff;margin:.5em 0 1.2em}td,th{border:1px solid #d5dae1;padding:.3em .6em;text-align:left;font-size:.92em;vertical-align:top}\
th{background:#e9edf2}.num{text-align:right}.ok{color:#1b7f3b;font-weight:600}.bad{color:#b3261e;font-weight:600}\
.card{display:inline-block;background:#fff;border:1px solid #d5dae1;border-radius:6px;padding:.7em 1em;margin:0 .8em .8em 0;min-width:9em}\
.card b{display:block;font-size:1.6em}pre{background:#fff;border:1px solid #d5dae1;padding:.6em;white-space:pre-wrap;word-break:break-all}\
form.inline{display:inline}input,select,button{font-size:.95em;margin:.15em}button{cursor:pointer}\
.danger{background:#b3261e;color:#fff;border:0;padding:.35em .8em;border-radius:4px}.primary{background:#1d3557;color:#fff;border:0;padding:.35em .8em;border-radius:4px}\
.notice{background:#fff7d6;border:1px solid #e5c95b;padding:.6em 1em;margin:.5em 0}\
.timeline li{margin:.3em 0}.timeline .t{color:#5b6470;font-family:monospace;margin-right:.6em}";

/// A whole page: the navigation, `title` and `body` (already escaped HTML). `who` is the signed-in
/// operator, if any.
pub(crate) fn page(title: &str, who: Option<&str>, body: &str) -> Html<String> {
    page_with_head(title, who, "", body)
}

/// [`page`] with extra `head` elements (already HTML), e.g. a `<meta refresh>`.
pub(crate) fn page_with_head(
    title: &str,
    who: Option<&str>,
    head: &str,
    body: &str,
) -> Html<String> {
    let mut out = String::with_capacity(body.len() + 2048);
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{} · courier console</title>\
         <style>{STYLE}</style>{head}</head><body><nav><a href=\"/console\">Outbox</a>\
         <a href=\"/console/failures\">Failures</a><a href=\"/console/broker\">Broker</a>\
         <a href=\"/console/trace\">Trace</a><a href=\"/console/audit\">Audit</a><span class=\"who\">{}</span></nav><main><h1>{}</h1>{body}</main></body></html>",
        esc(title),
        match who {
            Some(who) => format!(
                "signed in as {} <form method=\"post\" action=\"/console/logout\" class=\"inline\">\
                 <button id=\"sign-out\" type=\"submit\">sign out</button></form>",
                esc(who)
            ),
            None => "<a href=\"/console/login\">sign in</a>".to_owned(),
        },
        esc(title),
    );
    Html(out)
}

/// An error page with `status`: what went wrong and what to do.
pub(crate) fn error(status: StatusCode, title: &str, what: &str) -> Response {
    (
        status,
        page(
            title,
            None,
            &format!("<p class=\"notice\">{}</p>", esc(what)),
        ),
    )
        .into_response()
}

/// A table of `rows` under `headers`; cells are already HTML.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = String::from("<table><tr>");
    for h in headers {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr>");
    for row in rows {
        out.push_str("<tr>");
        for cell in row {
            let _ = write!(out, "<td>{cell}</td>");
        }
        out.push_str("</tr>");
    }
    if rows.is_empty() {
        let _ = write!(out, "<tr><td colspan=\"{}\">none</td></tr>", headers.len());
    }
    out.push_str("</table>");
    out
}

/// A millisecond Unix time as RFC 3339, for broker times.
pub(crate) fn millis(ms: u64) -> String {
    i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map_or_else(|| ms.to_string(), |at| at.to_rfc3339())
}

#[cfg(test)]
mod tests {
    use super::esc;

    #[test]
    fn markup_in_values_is_escaped() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }
}
