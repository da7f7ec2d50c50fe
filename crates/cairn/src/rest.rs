//! The admin CLI's second way into a cluster: a node's web console, over its JSON API under
//! `/api/` (`cairn_console::api`), as one of the console's users. `--console URL` sends the
//! `cairn volume|container|alarm|vip|service ...` and `cairn node list` commands this way, and
//! `cairn user ...` always goes this way: users live only in the console.
//!
//! The API's bodies are the CLDB's own types, so `admin.rs` prints them with the same code as the
//! CLDB's answers. A command logs in once (`POST /api/login`, whose session cookie it then sends)
//! and logs out when done, so the console keeps no session of it. Every refusal of the console
//! becomes one line here, in [`ConsoleClient::refused`]: its `{"error": "..."}` sentence after
//! what the command was doing.

use std::fmt::Display;
use std::io::IsTerminal;
use std::time::Duration;

use anyhow::Context;
use cairn_console::api::{LoginRequest, WhoAmI};
use cairn_console::auth::SESSION_COOKIE;
use reqwest::header::{COOKIE, SET_COOKIE};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The console to go through when `--console` is not given.
pub(crate) const CONSOLE_ENV: &str = "CAIRN_CONSOLE";
/// The user to log in as when `--user` is not given.
pub(crate) const USER_ENV: &str = "CAIRN_USER";
/// The password of the user who logs in.
pub(crate) const PASSWORD_ENV: &str = "CAIRN_PASSWORD";
/// The password `cairn user add|passwd` sets.
pub(crate) const NEW_PASSWORD_ENV: &str = "CAIRN_NEW_PASSWORD";
/// The user logged in as when neither `--user` nor [`USER_ENV`] names one (the console creates
/// it at first start).
pub(crate) const DEFAULT_USER: &str = cairn_console::users::ADMIN_USER;
/// Longest to open a connection to the console.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Most characters of a console's answer quoted in an error (a proxy's HTML page, say).
const QUOTED_ANSWER_CHARS_MAX: usize = 200;

/// A logged-in session with one console.
pub(crate) struct ConsoleClient {
    http: reqwest::Client,
    /// `http://HOST:PORT/` (or with the path prefix the operator gave).
    base: Url,
    user: String,
    /// `cairn_session=TOKEN`, sent as the `Cookie` header.
    session_cookie: String,
}

/// The console's URL from an operator's text: `HOST:PORT`, or `http://HOST:PORT[/PREFIX]`.
pub(crate) fn console_url(text: &str) -> anyhow::Result<Url> {
    let text = text.trim();
    let full = if text.contains("://") { text.to_owned() } else { format!("http://{text}") };
    let mut url =
        Url::parse(&full).with_context(|| format!("{text:?} is not a console URL (http://HOST:PORT)"))?;
    if url.scheme() != "http" {
        anyhow::bail!("{text:?}: the console serves plain http (http://HOST:PORT), not {}", url.scheme());
    }
    if url.cannot_be_a_base() || url.host_str().is_none() {
        anyhow::bail!("{text:?} is not a console URL (http://HOST:PORT)");
    }
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

/// The password of `user`: [`PASSWORD_ENV`], or asked without echo when stdin is a terminal.
pub(crate) fn login_password(user: &str, console: &Url) -> anyhow::Result<String> {
    if let Some(password) = std::env::var(PASSWORD_ENV).ok().filter(|p| !p.is_empty()) {
        return Ok(password);
    }
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "no password for user {user} of the console at {console}: set {PASSWORD_ENV}, or run \
             from a terminal to be asked"
        );
    }
    rpassword::prompt_password(format!("Password of {user} at {console}: "))
        .context("cannot read the password from the terminal")
}

/// The password `cairn user add|passwd` sets: [`NEW_PASSWORD_ENV`], or asked twice without echo
/// when stdin is a terminal.
pub(crate) fn new_password(user: &str) -> anyhow::Result<String> {
    if let Some(password) = std::env::var(NEW_PASSWORD_ENV).ok().filter(|p| !p.is_empty()) {
        return Ok(password);
    }
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "no new password for user {user}: set {NEW_PASSWORD_ENV}, or run from a terminal to be asked"
        );
    }
    let first = rpassword::prompt_password(format!("New password of {user}: "))
        .context("cannot read the password from the terminal")?;
    let again = rpassword::prompt_password(format!("New password of {user} again: "))
        .context("cannot read the password from the terminal")?;
    if first != again {
        anyhow::bail!("the two passwords differ; nothing changed");
    }
    Ok(first)
}

impl ConsoleClient {
    /// Logs in to the console at `base` as `user`; each later request may take up to `timeout`.
    pub(crate) async fn login(
        base: Url,
        user: &str,
        password: &str,
        timeout: Duration,
    ) -> anyhow::Result<ConsoleClient> {
        let action = "cannot log in";
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(CONNECT_TIMEOUT.min(timeout))
            // An answer is the API's or an error; a redirection would be some other server's.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("cannot make an HTTP client")?;
        let mut client = ConsoleClient { http, base, user: user.to_owned(), session_cookie: String::new() };
        let request = LoginRequest { name: user.to_owned(), password: password.to_owned() };
        let response = client
            .http
            .post(client.api_url(&["login"]))
            .json(&request)
            .send()
            .await
            .map_err(|e| client.unreachable(action, &e))?;
        let status = response.status();
        let cookie = response
            .headers()
            .get_all(SET_COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .filter_map(|value| value.split(';').next())
            .find(|pair| pair.trim().strip_prefix(SESSION_COOKIE).is_some_and(|rest| rest.starts_with('=')))
            .map(|pair| pair.trim().to_owned());
        let _: WhoAmI = client.answer(response, action).await?;
        let Some(cookie) = cookie else {
            anyhow::bail!(
                "{action}: the console at {} answered {status} without a session cookie",
                client.base
            );
        };
        client.session_cookie = cookie;
        Ok(client)
    }

    /// Ends the session (best effort: an unreachable console forgets it at its idle expiry).
    pub(crate) async fn logout(self) {
        let _ = self.http.post(self.api_url(&["logout"])).header(COOKIE, &self.session_cookie).send().await;
    }

    pub(crate) fn user(&self) -> &str {
        &self.user
    }

    /// `GET /api/PATH...`.
    pub(crate) async fn get<T: DeserializeOwned>(&self, path: &[&str], action: &str) -> anyhow::Result<T> {
        self.call(Method::GET, path, None, action).await
    }

    /// `METHOD /api/PATH...` with a JSON body.
    pub(crate) async fn send<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &[&str],
        body: &impl Serialize,
        action: &str,
    ) -> anyhow::Result<T> {
        let body = serde_json::to_value(body).context("cannot encode the request as JSON")?;
        self.call(method, path, Some(body), action).await
    }

    /// `DELETE /api/PATH...`.
    pub(crate) async fn delete<T: DeserializeOwned>(&self, path: &[&str], action: &str) -> anyhow::Result<T> {
        self.call(Method::DELETE, path, None, action).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &[&str],
        body: Option<serde_json::Value>,
        action: &str,
    ) -> anyhow::Result<T> {
        let mut request = self.http.request(method, self.api_url(path)).header(COOKIE, &self.session_cookie);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| self.unreachable(action, &e))?;
        self.answer(response, action).await
    }

    /// `BASE/api/SEGMENT/...`, each segment percent-encoded (a volume name is the operator's text).
    fn api_url(&self, path: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("console_url checked that the URL can be a base")
            .pop_if_empty()
            .push("api")
            .extend(path);
        url
    }

    /// The body of a successful answer, or the console's refusal as one line.
    async fn answer<T: DeserializeOwned>(
        &self,
        response: reqwest::Response,
        action: &str,
    ) -> anyhow::Result<T> {
        let status = response.status();
        let text = response.text().await.map_err(|e| self.unreachable(action, &e))?;
        if status.is_success() {
            return serde_json::from_str(&text).with_context(|| {
                format!("{action}: the console at {} answered what this cairn cannot read", self.base)
            });
        }
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|body| body.get("error").and_then(serde_json::Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| text.chars().take(QUOTED_ANSWER_CHARS_MAX).collect());
        Err(self.refused(action, status, &message))
    }

    /// The one mapping from the console's HTTP statuses to the CLI's error lines.
    fn refused(&self, action: &str, status: StatusCode, message: &str) -> anyhow::Error {
        let message = one_line(message);
        match status {
            // At login: a wrong name or password; later: the session ended (user removed).
            StatusCode::UNAUTHORIZED => {
                anyhow::anyhow!(
                    "{action}: the console at {} refused user {}: {message}",
                    self.base,
                    self.user
                )
            }
            // "user NAME is read-only: changes need the admin role" says it all.
            StatusCode::FORBIDDEN => anyhow::anyhow!("{action}: {message}"),
            // Bad input, unknown names, conflicts: the CLDB's or the user store's own sentence.
            StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND | StatusCode::CONFLICT => {
                anyhow::anyhow!("{action}: {message}")
            }
            _ => anyhow::anyhow!("{action}: the console at {} answered {status}: {message}", self.base),
        }
    }

    fn unreachable(&self, action: impl Display, error: &reqwest::Error) -> anyhow::Error {
        let mut causes = Vec::new();
        let mut source: Option<&dyn std::error::Error> = Some(error);
        while let Some(cause) = source {
            causes.push(cause.to_string());
            source = cause.source();
        }
        let why = if error.is_timeout() { "timed out".to_owned() } else { causes.join(": ") };
        anyhow::anyhow!("{action}: cannot reach the console at {}: {}", self.base, one_line(&why))
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_urls_parse() {
        assert_eq!(console_url("127.0.0.1:8443").expect("bare").as_str(), "http://127.0.0.1:8443/");
        assert_eq!(console_url(" http://node1:8443/ ").expect("full").as_str(), "http://node1:8443/");
        assert!(console_url("https://node1:8443").expect_err("https").to_string().contains("plain http"));
        assert!(console_url("").is_err());
    }

    #[test]
    fn api_urls_encode_their_segments() {
        let client = ConsoleClient {
            http: reqwest::Client::new(),
            base: console_url("http://h:1/prefix").expect("url"),
            user: "admin".to_owned(),
            session_cookie: String::new(),
        };
        assert_eq!(client.api_url(&["volumes", "a b/c"]).as_str(), "http://h:1/prefix/api/volumes/a%20b%2Fc");
        let root = ConsoleClient { base: console_url("h:1").expect("url"), ..client };
        assert_eq!(root.api_url(&["vips", "10.0.0.1", "move"]).as_str(), "http://h:1/api/vips/10.0.0.1/move");
    }
}
