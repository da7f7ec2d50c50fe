//! The console's users, kept cluster-wide in one coord znode ([`USERS_PATH`]) as JSON, each with
//! an argon2id password hash (a PHC string: algorithm, parameters, salt and hash). The clear
//! password is never stored. Every change is a compare-and-set on the znode's version, so two
//! consoles changing users at once cannot lose one another's change.

use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use cairn_coord::api::{CoordError, CreateMode};
use cairn_coord::client::{ClientOptions, CoordClient};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// The znode holding every user.
pub const USERS_PATH: &str = "/cairn/console/users";
/// Its parents, created when missing.
const PARENTS: [&str; 2] = ["/cairn", "/cairn/console"];
/// The version of [`UsersFile`]'s layout.
const USERS_FILE_VERSION: u32 = 1;
/// Where the first admin's password comes from, if set.
pub const ADMIN_PASSWORD_ENV: &str = "CAIRN_ADMIN_PASSWORD";
/// The first user's name.
pub const ADMIN_USER: &str = "admin";
/// Length of a generated admin password (alphanumeric: about 119 bits).
const GENERATED_PASSWORD_CHARS: usize = 20;
/// Limits on what a user record may hold.
pub const USER_NAME_BYTES_MAX: usize = 64;
pub const PASSWORD_BYTES_MIN: usize = 8;
pub const PASSWORD_BYTES_MAX: usize = 1024;
pub const USERS_MAX: usize = 1000;
/// Attempts at a compare-and-set before giving up (another console keeps changing the users).
const CAS_ATTEMPTS_MAX: usize = 10;
/// Longest one coord call may take.
const COORD_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What a user may do.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// May see and change everything.
    Admin,
    /// May see everything; every change is refused (403).
    Readonly,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Readonly => "readonly",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text.trim() {
            "admin" => Some(Role::Admin),
            "readonly" | "read-only" => Some(Role::Readonly),
            _ => None,
        }
    }
}

/// One user, as kept in coord.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct UserRecord {
    pub name: String,
    pub role: Role,
    /// An argon2id PHC string.
    pub password_hash: String,
    /// Milliseconds since the Unix epoch.
    #[serde(default)]
    pub created_ms: u64,
}

/// A user as the API shows it (no hash).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct UserView {
    pub name: String,
    pub role: Role,
    pub created_ms: u64,
}

impl From<&UserRecord> for UserView {
    fn from(user: &UserRecord) -> UserView {
        UserView { name: user.name.clone(), role: user.role, created_ms: user.created_ms }
    }
}

/// The content of [`USERS_PATH`].
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
struct UsersFile {
    version: u32,
    users: Vec<UserRecord>,
}

/// A request to add a user (`POST /api/users`).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct NewUser {
    pub name: String,
    pub password: String,
    #[serde(default = "default_role")]
    pub role: Role,
}

fn default_role() -> Role {
    Role::Readonly
}

/// A change to a user (`PUT /api/users/{name}`); `None` keeps a field.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct UserChange {
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub role: Option<Role>,
}

#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    #[error("coord is unreachable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Invalid(String),
    #[error("no such user: {0}")]
    NoSuchUser(String),
    #[error("a user named {0} already exists")]
    UserExists(String),
    #[error("the users record in coord cannot be read: {0}")]
    Corrupt(String),
}

impl From<CoordError> for UsersError {
    fn from(error: CoordError) -> UsersError {
        UsersError::Unavailable(error.to_string())
    }
}

/// The users, in coord. Cheap to share (`Arc`); connects lazily and reconnects.
pub struct Users {
    coord: Vec<String>,
    client: tokio::sync::Mutex<Option<CoordClient>>,
    /// A hash of a random password, verified against when the user is unknown, so that an
    /// unknown name takes as long to refuse as a wrong password.
    dummy_hash: String,
}

impl Users {
    pub fn new(coord: Vec<String>) -> Users {
        let dummy_hash = hash_password(&random_password()).unwrap_or_default();
        Users { coord, client: tokio::sync::Mutex::new(None), dummy_hash }
    }

    /// A coord client without a session (the console makes no ephemeral znodes).
    pub async fn coord(&self) -> Result<CoordClient, UsersError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let options = ClientOptions { session_timeout: None, request_timeout: COORD_REQUEST_TIMEOUT };
        let client = CoordClient::connect(&self.coord, options).await?;
        *slot = Some(client.clone());
        Ok(client)
    }

    async fn read(&self) -> Result<Option<(UsersFile, i32)>, UsersError> {
        let coord = self.coord().await?;
        match coord.get(USERS_PATH).await {
            Ok((data, stat)) => {
                let file: UsersFile =
                    serde_json::from_slice(&data).map_err(|e| UsersError::Corrupt(e.to_string()))?;
                if file.version > USERS_FILE_VERSION {
                    return Err(UsersError::Corrupt(format!(
                        "layout version {} is newer than this console's {USERS_FILE_VERSION}",
                        file.version
                    )));
                }
                Ok(Some((file, stat.version)))
            }
            Err(CoordError::NoNode { .. }) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// Every user.
    pub async fn list(&self) -> Result<Vec<UserRecord>, UsersError> {
        Ok(self.read().await?.map(|(file, _)| file.users).unwrap_or_default())
    }

    /// The user's role if `password` is theirs; `None` for an unknown user or a wrong password.
    pub async fn verify(&self, name: &str, password: &str) -> Result<Option<Role>, UsersError> {
        let user = self.list().await?.into_iter().find(|u| u.name == name);
        let (hash, role) = match &user {
            Some(user) => (user.password_hash.clone(), Some(user.role)),
            None => (self.dummy_hash.clone(), None),
        };
        let password = password.to_owned();
        // Argon2 takes tens of milliseconds of CPU on purpose: keep it off the async workers.
        let matches =
            tokio::task::spawn_blocking(move || verify_password(&password, &hash)).await.unwrap_or(false);
        Ok(if matches { role } else { None })
    }

    /// Applies `change` to the users with a compare-and-set, retried when another console
    /// changed them meanwhile. `change` sees `None` when the znode does not exist yet.
    async fn update<T>(
        &self,
        mut change: impl FnMut(&mut Vec<UserRecord>) -> Result<T, UsersError>,
    ) -> Result<T, UsersError> {
        let coord = self.coord().await?;
        for _ in 0..CAS_ATTEMPTS_MAX {
            let current = self.read().await?;
            let (mut users, version) = match current {
                Some((file, version)) => (file.users, Some(version)),
                None => (Vec::new(), None),
            };
            let answer = change(&mut users)?;
            if users.len() > USERS_MAX {
                return Err(UsersError::Invalid(format!("at most {USERS_MAX} users")));
            }
            let data = serde_json::to_vec(&UsersFile { version: USERS_FILE_VERSION, users })
                .map_err(|e| UsersError::Corrupt(e.to_string()))?;
            let written = match version {
                Some(version) => coord.set(USERS_PATH, &data, Some(version)).await.map(|_| ()),
                None => {
                    create_parents(&coord).await?;
                    coord.create(USERS_PATH, &data, CreateMode::Persistent).await.map(|_| ())
                }
            };
            match written {
                Ok(()) => return Ok(answer),
                Err(CoordError::BadVersion { .. } | CoordError::NodeExists { .. }) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        Err(UsersError::Unavailable("the users kept changing; try again".into()))
    }

    /// Adds a user.
    pub async fn add(&self, new: NewUser) -> Result<UserView, UsersError> {
        check_name(&new.name)?;
        check_password(&new.password)?;
        let hash = hash_blocking(new.password.clone()).await?;
        let record =
            UserRecord { name: new.name.clone(), role: new.role, password_hash: hash, created_ms: now_ms() };
        self.update(|users| {
            if users.iter().any(|u| u.name == record.name) {
                return Err(UsersError::UserExists(record.name.clone()));
            }
            users.push(record.clone());
            Ok(UserView::from(&record))
        })
        .await
    }

    /// Changes a user's password or role. The last admin cannot become read-only.
    pub async fn change(&self, name: &str, change: UserChange) -> Result<UserView, UsersError> {
        let hash = match &change.password {
            Some(password) => {
                check_password(password)?;
                Some(hash_blocking(password.clone()).await?)
            }
            None => None,
        };
        self.update(|users| {
            let admins = users.iter().filter(|u| u.role == Role::Admin).count();
            let user = users
                .iter_mut()
                .find(|u| u.name == name)
                .ok_or_else(|| UsersError::NoSuchUser(name.to_owned()))?;
            if let Some(role) = change.role {
                if user.role == Role::Admin && role != Role::Admin && admins == 1 {
                    return Err(UsersError::Invalid(format!("{name} is the last admin")));
                }
                user.role = role;
            }
            if let Some(hash) = &hash {
                user.password_hash = hash.clone();
            }
            Ok(UserView::from(&*user))
        })
        .await
    }

    /// Removes a user. The last admin cannot be removed.
    pub async fn remove(&self, name: &str) -> Result<(), UsersError> {
        self.update(|users| {
            let index = users
                .iter()
                .position(|u| u.name == name)
                .ok_or_else(|| UsersError::NoSuchUser(name.to_owned()))?;
            if users[index].role == Role::Admin && users.iter().filter(|u| u.role == Role::Admin).count() == 1
            {
                return Err(UsersError::Invalid(format!("{name} is the last admin")));
            }
            users.remove(index);
            Ok(())
        })
        .await
    }

    /// At first start (no users at all): creates `admin` with the password from
    /// [`ADMIN_PASSWORD_ENV`], or a random one that is printed once to stdout. Returns whether
    /// this call created it. Of several consoles starting at once, exactly one creates it.
    pub async fn ensure_admin(&self) -> Result<bool, UsersError> {
        if self.read().await?.is_some_and(|(file, _)| !file.users.is_empty()) {
            return Ok(false);
        }
        let given = std::env::var(ADMIN_PASSWORD_ENV).ok().filter(|p| !p.is_empty());
        let password = given.clone().unwrap_or_else(random_password);
        check_password(&password).map_err(|e| UsersError::Invalid(format!("{ADMIN_PASSWORD_ENV}: {e}")))?;
        let hash = hash_blocking(password.clone()).await?;
        let record = UserRecord {
            name: ADMIN_USER.to_owned(),
            role: Role::Admin,
            password_hash: hash,
            created_ms: now_ms(),
        };
        let created = self
            .update(|users| {
                if !users.is_empty() {
                    return Ok(false);
                }
                users.push(record.clone());
                Ok(true)
            })
            .await?;
        if created {
            if given.is_some() {
                println!("console: created user {ADMIN_USER} with the password from ${ADMIN_PASSWORD_ENV}");
            } else {
                // Shown this once and never stored in clear: the operator copies it from here.
                println!(
                    "console: created user {ADMIN_USER} with the generated password {password} \
                     (shown only now; keep it)"
                );
            }
            tracing::info!("console: created the first admin user");
        }
        Ok(created)
    }
}

async fn create_parents(coord: &CoordClient) -> Result<(), UsersError> {
    for path in PARENTS {
        match coord.create(path, b"", CreateMode::Persistent).await {
            Ok(_) | Err(CoordError::NodeExists { .. }) => {}
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

fn check_name(name: &str) -> Result<(), UsersError> {
    let ok = !name.is_empty()
        && name.len() <= USER_NAME_BYTES_MAX
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(UsersError::Invalid(format!(
            "a user name is 1 to {USER_NAME_BYTES_MAX} letters, digits, '-', '_' or '.'"
        )))
    }
}

fn check_password(password: &str) -> Result<(), UsersError> {
    if (PASSWORD_BYTES_MIN..=PASSWORD_BYTES_MAX).contains(&password.len()) {
        Ok(())
    } else {
        Err(UsersError::Invalid(format!("a password has {PASSWORD_BYTES_MIN} to {PASSWORD_BYTES_MAX} bytes")))
    }
}

/// A random alphanumeric password.
pub fn random_password() -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(GENERATED_PASSWORD_CHARS)
        .map(char::from)
        .collect()
}

/// The argon2id PHC string of `password` with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, UsersError> {
    let salt_bytes: [u8; 16] = rand::rng().random();
    let salt = SaltString::encode_b64(&salt_bytes).map_err(|e| UsersError::Invalid(e.to_string()))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| UsersError::Invalid(format!("cannot hash the password: {e}")))
}

/// Whether `password` matches the PHC string `hash` (false for a malformed hash).
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .is_ok_and(|parsed| Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok())
}

async fn hash_blocking(password: String) -> Result<String, UsersError> {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| UsersError::Invalid(format!("hashing failed: {e}")))?
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_is_argon2id_and_verifies_only_its_password() {
        let hash = hash_password("correct horse").expect("hash");
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(!hash.contains("correct horse"));
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("wrong horse", &hash));
        assert!(!verify_password("correct horse", "not a hash"));
        assert_ne!(hash, hash_password("correct horse").expect("hash"), "salts differ");
    }

    #[test]
    fn names_and_roles_are_checked() {
        assert!(check_name("ops-1.bob").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("a b").is_err());
        assert!(check_password("short").is_err());
        assert_eq!(Role::parse("readonly"), Some(Role::Readonly));
        assert_eq!(Role::parse("root"), None);
        assert_eq!(serde_json::to_string(&Role::Admin).expect("json"), "\"admin\"");
    }
}
