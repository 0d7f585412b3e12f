//! Who is looking at the status page: the API's tokens, carried as
//! `Authorization: Bearer TOKEN` (scripts, curl) or, for a browser, in an
//! HttpOnly cookie set from `?token=TOKEN` or the login form. Without
//! tokens in force, everyone is an anonymous admin, as on the API.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use sched_security::User;

use super::App;

/// The cookie holding a browser's token.
pub const COOKIE: &str = "sched_token";

pub enum Outcome {
    User(User),
    /// A valid `?token=`: set the cookie and load the page without it (so
    /// the token leaves the address bar and the history).
    Redirect(Response),
    Denied(String),
}

/// Who the request is from, by header, query or cookie (in that order).
pub fn check(role: &App, headers: &HeaderMap, uri: &Uri) -> Outcome {
    let guard = role.guard();
    if let Some(token) = query_token(uri) {
        return match guard.token_user(Some(&token)) {
            Ok(_) if guard.tokens() => Outcome::Redirect(with_cookie(&token, uri.path())),
            Ok(user) => Outcome::User(user),
            Err(e) => Outcome::Denied(e.message().to_string()),
        };
    }
    let token = bearer(headers).or_else(|| cookie(headers));
    match guard.token_user(token.as_deref()) {
        Ok(user) => Outcome::User(user),
        Err(e) => Outcome::Denied(e.message().to_string()),
    }
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

fn query_token(uri: &Uri) -> Option<String> {
    form_value(uri.query()?.as_bytes(), "token")
}

/// The value of `key` in an `application/x-www-form-urlencoded` body or
/// query (`+` is a space, `%XX` a byte).
pub fn form_value(body: &[u8], key: &str) -> Option<String> {
    body.split(|&b| b == b'&').find_map(|pair| {
        let mut kv = pair.splitn(2, |&b| b == b'=');
        let k = decode(kv.next()?);
        (k == key).then(|| decode(kv.next().unwrap_or_default()))
    })
}

fn decode(s: &[u8]) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < s.len() => {
                let hex = std::str::from_utf8(&s[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A redirect to `path` that stores `token` in an HttpOnly cookie (no
/// script can read it; sent only to this server; not sent by other sites'
/// pages).
fn with_cookie(token: &str, path: &str) -> Response {
    let mut r = (
        StatusCode::SEE_OTHER,
        [(header::LOCATION, path.to_string())],
    )
        .into_response();
    // The token was accepted, so it is a printable token; a header value
    // that still fails is simply not set.
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/"
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

pub async fn login_form() -> Response {
    login_page(StatusCode::OK, "")
}

/// `POST /login` with `token=...`: the cookie, then the page.
pub async fn login(State(role): State<App>, body: Bytes) -> Response {
    let token = form_value(&body, "token").unwrap_or_default();
    match role.guard().token_user(Some(&token)) {
        Ok(_) => with_cookie(&token, "/"),
        Err(e) => login_page(StatusCode::UNAUTHORIZED, e.message()),
    }
}

/// The login form; `why` (our own text, escaped anyway) says what failed.
pub fn login_page(code: StatusCode, why: &str) -> Response {
    let why = if why.is_empty() {
        String::new()
    } else {
        format!("<p class=\"error\">{}</p>", escape(why))
    };
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Scheduler: sign in</title>\
         <link rel=\"stylesheet\" href=\"/style.css\"></head><body><main class=\"login\">\
         <h1>Scheduler status</h1>{why}<form method=\"post\" action=\"/login\">\
         <label>Token <input type=\"password\" name=\"token\" autocomplete=\"off\"></label>\
         <button type=\"submit\">Sign in</button></form></main></body></html>"
    );
    (
        code,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        body,
    )
        .into_response()
}

/// HTML-escapes text for an element's content or a quoted attribute.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_are_decoded() {
        assert_eq!(
            form_value(b"a=1&token=x%2By+z", "token").as_deref(),
            Some("x+y z")
        );
        assert_eq!(
            form_value(b"token=%zz%4", "token").as_deref(),
            Some("%zz%4")
        );
        assert_eq!(form_value(b"tok=1", "token"), None);
    }

    #[test]
    fn markup_is_escaped() {
        assert_eq!(escape("<script>\"'&"), "&lt;script&gt;&quot;&#39;&amp;");
    }
}
