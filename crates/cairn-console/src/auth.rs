//! Who is asking: a session cookie (set at login, kept in this console's memory with an expiry)
//! or, for scripts, HTTP Basic credentials checked against the users in coord on every request.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::header::{AUTHORIZATION, COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use parking_lot::Mutex;
use rand::Rng;

use crate::State;
use crate::api::ApiError;
use crate::users::Role;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "cairn_session";
/// How long a session lives after its last use.
pub const SESSION_IDLE_TTL: Duration = Duration::from_secs(8 * 3600);
/// Most sessions kept at once (the oldest go first when full).
const SESSIONS_MAX: usize = 10_000;

#[derive(Clone, Debug)]
struct Session {
    user: String,
    role: Role,
    expires: Instant,
}

/// The sessions of this console (memory only: a restart logs everyone out).
#[derive(Default)]
pub struct Sessions {
    by_token: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// A new session's token (256 random bits, hex).
    pub fn open(&self, user: &str, role: Role) -> String {
        let bytes: [u8; 32] = rand::rng().random();
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let now = Instant::now();
        let mut sessions = self.by_token.lock();
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= SESSIONS_MAX
            && let Some(oldest) = sessions.iter().min_by_key(|(_, s)| s.expires).map(|(t, _)| t.clone())
        {
            sessions.remove(&oldest);
        }
        sessions
            .insert(token.clone(), Session { user: user.to_owned(), role, expires: now + SESSION_IDLE_TTL });
        token
    }

    /// The session's user, its expiry pushed back; `None` when unknown or expired.
    fn touch(&self, token: &str) -> Option<(String, Role)> {
        let now = Instant::now();
        let mut sessions = self.by_token.lock();
        match sessions.get_mut(token) {
            Some(session) if session.expires > now => {
                session.expires = now + SESSION_IDLE_TTL;
                Some((session.user.clone(), session.role))
            }
            Some(_) => {
                sessions.remove(token);
                None
            }
            None => None,
        }
    }

    pub fn close(&self, token: &str) {
        self.by_token.lock().remove(token);
    }

    /// Ends every session of `user` (removed, or its role changed).
    pub fn close_user(&self, user: &str) {
        self.by_token.lock().retain(|_, s| s.user != user);
    }
}

/// The `Set-Cookie` value opening a session.
pub fn session_cookie(token: &str) -> String {
    format!(
        "{SESSION_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_IDLE_TTL.as_secs()
    )
}

/// The `Set-Cookie` value ending it.
pub fn clear_cookie() -> String {
    format!("{SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// The session token in the request's cookies.
pub fn session_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, token)| token.to_owned())
        .filter(|token| !token.is_empty())
}

/// A logged-in user.
#[derive(Clone, Debug)]
pub struct Principal {
    pub user: String,
    pub role: Role,
}

impl Principal {
    /// Refuses a read-only user a change.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Admin => Ok(()),
            Role::Readonly => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                format!("user {} is read-only: changes need the admin role", self.user),
            )),
        }
    }
}

/// Why a request has no principal.
pub enum AuthFailure {
    /// Neither a valid session nor valid credentials.
    NotLoggedIn,
    /// Basic credentials could not be checked (coord unreachable).
    Unavailable(String),
}

/// The request's user: from its session cookie, else from its Basic credentials.
pub async fn authenticate(state: &State, headers: &HeaderMap) -> Result<Principal, AuthFailure> {
    if let Some(token) = session_token(headers)
        && let Some((user, role)) = state.sessions.touch(&token)
    {
        return Ok(Principal { user, role });
    }
    let Some((user, password)) = basic_credentials(headers) else {
        return Err(AuthFailure::NotLoggedIn);
    };
    match state.users.verify(&user, &password).await {
        Ok(Some(role)) => Ok(Principal { user, role }),
        Ok(None) => Err(AuthFailure::NotLoggedIn),
        Err(error) => Err(AuthFailure::Unavailable(error.to_string())),
    }
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// The user of an API request; 401 (JSON) without one.
pub struct ApiUser(pub Principal);

impl FromRequestParts<State> for ApiUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &State) -> Result<Self, Self::Rejection> {
        match authenticate(state, &parts.headers).await {
            Ok(principal) => Ok(ApiUser(principal)),
            Err(AuthFailure::NotLoggedIn) => Err(ApiError::unauthorized()),
            Err(AuthFailure::Unavailable(why)) => Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, why)),
        }
    }
}

/// The user of a page request; a redirection to the login page without one.
pub struct PageUser(pub Principal);

impl FromRequestParts<State> for PageUser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &State) -> Result<Self, Self::Rejection> {
        match authenticate(state, &parts.headers).await {
            Ok(principal) => Ok(PageUser(principal)),
            Err(AuthFailure::NotLoggedIn) => {
                let next = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                let target = format!("/login?next={}", crate::html::url_encode(next));
                Err(Redirect::to(&target).into_response())
            }
            Err(AuthFailure::Unavailable(why)) => {
                Err((StatusCode::SERVICE_UNAVAILABLE, format!("coord is unreachable: {why}")).into_response())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn sessions_open_touch_and_close() {
        let sessions = Sessions::default();
        let token = sessions.open("bob", Role::Readonly);
        assert_eq!(token.len(), 64);
        assert_eq!(sessions.touch(&token), Some(("bob".to_owned(), Role::Readonly)));
        assert_eq!(sessions.touch("nope"), None);
        sessions.close_user("bob");
        assert_eq!(sessions.touch(&token), None);
    }

    #[test]
    fn the_token_and_basic_credentials_are_read_from_the_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(COOKIE, HeaderValue::from_static("a=b; cairn_session=abc123; c=d"));
        headers.insert(AUTHORIZATION, HeaderValue::from_static("Basic YWRtaW46czNjcjN0OnBhc3M="));
        assert_eq!(session_token(&headers).as_deref(), Some("abc123"));
        assert_eq!(basic_credentials(&headers), Some(("admin".to_owned(), "s3cr3t:pass".to_owned())));
        assert!(session_cookie("abc").contains("HttpOnly; SameSite=Strict"));
    }
}
