//! The exports file: `/etc/exports` syntax, matched against client addresses.
//!
//! Each non-empty, non-comment line is `PATH [-DEFAULTS] CLIENT(OPTIONS) CLIENT(OPTIONS) ...`, as in
//! exports(5) of nfs-utils:
//!
//! - `#` starts a comment (also after content, outside double quotes); a backslash at the end of a
//!   line continues it on the next one. Errors name the first line of the (continued) line.
//! - PATH is absolute; it may be double-quoted (`"/my dir"`) and may use `\NNN` octal escapes.
//!   Repeated slashes collapse and a trailing slash is dropped; `.` and `..` components are refused.
//!   A path listed on several lines gets the rules of all of them, in file order.
//! - CLIENT is `*`, an IP address, a CIDR network (`10.0.0.0/8`, `10.0.0.0/255.0.0.0`, `fd00::/8`)
//!   or a host name (resolved when the file is loaded; a name that does not resolve matches nobody,
//!   as with exportfs). Wildcard names (`*.example.com`) and netgroups (`@group`) are not supported.
//!   IPv4-mapped IPv6 client addresses match IPv4 rules.
//! - `CLIENT` alone takes the default options and `(OPTIONS)` alone applies to everyone, so
//!   `/p host (rw)` (note the space) exports read-only to `host` and read-write to everyone, exactly
//!   as knfsd does. A path without any client is exported to everyone with the default options.
//! - `-OPTIONS` right after the path changes the defaults for the clients of that line.
//!
//! OPTIONS is a comma-separated list of `rw`, `ro`, `root_squash`, `no_root_squash`, `all_squash`,
//! `no_all_squash`, `anonuid=N`, `anongid=N`, `secure`, `insecure` (and a few knfsd options that are
//! accepted and ignored: `sync`, `async`, `no_subtree_check`, `subtree_check`, `wdelay`,
//! `no_wdelay`, `crossmnt`, `nohide`, `hide`, `fsid=...`, `acl`, `no_acl`, `mountpoint[=...]`,
//! `mp[=...]`, `sec=sys`); anything else is an error. Later options override earlier ones, except
//! that `all_squash` wins over `no_root_squash`. Defaults follow exports(5): `ro`, `root_squash`,
//! `anonuid=65534`, `anongid=65534`, except `insecure` is Cairn's default (a source port proves
//! nothing).

use std::collections::HashMap;
use std::net::{IpAddr, ToSocketAddrs};
use std::path::Path;

use ipnet::{IpNet, Ipv4Net};

use cairn_store::Caller;

/// How client identities are mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Squash {
    /// Keep every uid and gid (`no_root_squash`).
    None,
    /// Map uid 0 and gid 0 to the anonymous ids (`root_squash`, the default).
    Root,
    /// Map every uid and gid to the anonymous ids (`all_squash`).
    All,
}

/// Options of one client rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExportOptions {
    pub read_only: bool,
    pub squash: Squash,
    pub anonymous_uid: u32,
    pub anonymous_gid: u32,
    /// Requests must come from a source port below 1024.
    pub secure: bool,
}

/// Who a rule applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientMatcher {
    Everyone,
    Address(IpAddr),
    Network(ipnet::IpNet),
    /// A host name and the addresses it resolved to when the file was loaded.
    Host {
        name: String,
        addresses: Vec<IpAddr>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientRule {
    pub matcher: ClientMatcher,
    pub options: ExportOptions,
}

/// One exported path and its client rules, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportEntry {
    /// Normalised absolute path in the cluster namespace: `/` or `/a/b` (no trailing slash).
    pub path: String,
    pub rules: Vec<ClientRule>,
}

/// A parse or load failure, with the line it happened on.
#[derive(Debug, thiserror::Error)]
pub enum ExportsError {
    #[error("exports line {line}: {message}")]
    Syntax { line: usize, message: String },
    #[error("cannot read exports file {path}: {source}")]
    Read { path: String, source: std::io::Error },
}

/// A parsed exports file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Exports {
    pub entries: Vec<ExportEntry>,
}

impl Default for ExportOptions {
    /// The exports(5) defaults, except `insecure`: `ro`, `root_squash`, anonymous ids 65534.
    fn default() -> ExportOptions {
        ExportOptions {
            read_only: true,
            squash: Squash::Root,
            anonymous_uid: DEFAULT_ANONYMOUS_ID,
            anonymous_gid: DEFAULT_ANONYMOUS_ID,
            secure: false,
        }
    }
}

/// The default `anonuid` and `anongid` (`nobody` / `nogroup`).
pub const DEFAULT_ANONYMOUS_ID: u32 = 65534;

impl ClientMatcher {
    /// Whether this matcher covers `client`. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`) are
    /// treated as the IPv4 address they carry, on both sides.
    pub fn matches(&self, client: IpAddr) -> bool {
        let canonical = client.to_canonical();
        match self {
            ClientMatcher::Everyone => true,
            ClientMatcher::Address(address) => address.to_canonical() == canonical,
            ClientMatcher::Network(network) => network.contains(&canonical) || network.contains(&client),
            ClientMatcher::Host { addresses, .. } => {
                addresses.iter().any(|address| address.to_canonical() == canonical)
            }
        }
    }
}

impl ExportEntry {
    /// The first rule of this entry that matches `client` (exports(5): first match wins).
    pub fn rule_for(&self, client: IpAddr) -> Option<&ClientRule> {
        self.rules.iter().find(|rule| rule.matcher.matches(client))
    }
}

/// Normalises an absolute path: repeated slashes collapse, a trailing slash is dropped (except for
/// `/` itself); relative paths and `.` or `..` components are refused, with the reason.
pub fn normalize_path(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!("path {path:?} is not absolute"));
    }
    let mut normalized = String::with_capacity(path.len());
    for component in path.split('/').filter(|component| !component.is_empty()) {
        if component == "." || component == ".." {
            return Err(format!("path {path:?} has a {component:?} component"));
        }
        normalized.push('/');
        normalized.push_str(component);
    }
    if normalized.is_empty() {
        normalized.push('/');
    }
    Ok(normalized)
}

impl Exports {
    /// Parses exports text, resolving host names with the system resolver.
    pub fn parse(text: &str) -> Result<Exports, ExportsError> {
        Exports::parse_with_resolver(text, &mut resolve_host)
    }

    /// Parses exports text, resolving host names with `resolve` (which returns no address for a
    /// name that does not resolve; such a rule then matches nobody, as with exportfs).
    pub fn parse_with_resolver(
        text: &str,
        resolve: &mut dyn FnMut(&str) -> Vec<IpAddr>,
    ) -> Result<Exports, ExportsError> {
        let mut exports = Exports::default();
        let mut resolved: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for (line, content) in logical_lines(text) {
            let syntax = |message: String| ExportsError::Syntax { line, message };
            let Some((path, rules)) = parse_line(&content, &mut |name: &str| {
                resolved.entry(name.to_owned()).or_insert_with(|| resolve(name)).clone()
            })
            .map_err(syntax)?
            else {
                continue;
            };
            match exports.entries.iter_mut().find(|entry| entry.path == path) {
                Some(entry) => entry.rules.extend(rules),
                None => exports.entries.push(ExportEntry { path, rules }),
            }
        }
        Ok(exports)
    }

    pub fn load(path: &Path) -> Result<Exports, ExportsError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ExportsError::Read { path: path.display().to_string(), source })?;
        Exports::parse(&text)
    }

    /// The entry exporting exactly `path` (normalised), if any.
    pub fn entry(&self, path: &str) -> Option<&ExportEntry> {
        let path = normalize_path(path).ok()?;
        self.entries.iter().find(|entry| entry.path == path)
    }

    /// The options for `client` mounting `path` (normalised): an exported path or any folder
    /// below one, as with mountd. Among the exported paths that contain `path` and have a rule
    /// matching `client`, the longest decides; within it the first matching rule wins, as in
    /// exports(5). None when no such export exists.
    pub fn options_for_mount(&self, path: &str, client: IpAddr) -> Option<ExportOptions> {
        let path = normalize_path(path).ok()?;
        self.entries
            .iter()
            .filter(|entry| path_contains(&entry.path, &path))
            .filter_map(|entry| entry.rule_for(client).map(|rule| (entry.path.len(), rule.options)))
            .max_by_key(|(length, _)| *length)
            .map(|(_, options)| options)
    }

    /// The options checked on every NFS request: handles carry no export id (they are valid on
    /// every gateway forever), so the check is per volume: the least privileged options among all
    /// entries whose rules match `client` (ro beats rw; all_squash beats root_squash beats
    /// no_root_squash; secure beats insecure), or None when the client matches no entry at all.
    /// The anonymous ids come from the first matching entry with the strongest squash.
    pub fn options_for_request(&self, client: IpAddr) -> Option<ExportOptions> {
        let matched: Vec<ExportOptions> =
            self.entries.iter().filter_map(|entry| entry.rule_for(client)).map(|rule| rule.options).collect();
        let strongest = matched.iter().map(|options| squash_rank(options.squash)).max()?;
        let least = matched.iter().find(|options| squash_rank(options.squash) == strongest)?;
        Some(ExportOptions {
            read_only: matched.iter().any(|options| options.read_only),
            squash: least.squash,
            anonymous_uid: least.anonymous_uid,
            anonymous_gid: least.anonymous_gid,
            secure: matched.iter().any(|options| options.secure),
        })
    }
}

/// Whether normalised `path` is `export` or lies below it, component-wise.
fn path_contains(export: &str, path: &str) -> bool {
    export == "/"
        || path == export
        || (path.starts_with(export) && path.as_bytes().get(export.len()) == Some(&b'/'))
}

impl ExportOptions {
    /// Applies the squash rules to AUTH_UNIX credentials (or to AUTH_NONE, given as None, which
    /// always maps to the anonymous ids).
    pub fn caller_for(&self, credentials: Option<(u32, u32, &[u32])>) -> Caller {
        let anonymous = || Caller { uid: self.anonymous_uid, gid: self.anonymous_gid, groups: Vec::new() };
        let Some((uid, gid, groups)) = credentials else {
            return anonymous();
        };
        match self.squash {
            Squash::None => Caller { uid, gid, groups: groups.to_vec() },
            Squash::All => anonymous(),
            Squash::Root => {
                let gid_of = |gid: u32| if gid == 0 { self.anonymous_gid } else { gid };
                Caller {
                    uid: if uid == 0 { self.anonymous_uid } else { uid },
                    gid: gid_of(gid),
                    groups: groups.iter().map(|&group| gid_of(group)).collect(),
                }
            }
        }
    }
}

fn squash_rank(squash: Squash) -> u8 {
    match squash {
        Squash::None => 0,
        Squash::Root => 1,
        Squash::All => 2,
    }
}

/// The system resolver: every address of `name`, canonical and without duplicates, or none.
fn resolve_host(name: &str) -> Vec<IpAddr> {
    let mut addresses = Vec::new();
    if let Ok(resolved) = (name, 0).to_socket_addrs() {
        for address in resolved {
            let ip = address.ip().to_canonical();
            if !addresses.contains(&ip) {
                addresses.push(ip);
            }
        }
    }
    addresses
}

/// Joins continued lines and strips comments: yields (number of the first physical line, text) for
/// each logical line. `#` outside double quotes starts a comment that ends the logical line; a
/// backslash at the end of a physical line (outside a comment) continues it on the next one.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut logical = Vec::new();
    let mut current = String::new();
    let mut start = 0;
    let mut in_quotes = false;
    for (index, physical) in text.lines().enumerate() {
        if current.is_empty() {
            start = index + 1;
            in_quotes = false;
        }
        let mut content = physical;
        let mut comment = false;
        for (offset, character) in physical.char_indices() {
            match character {
                '"' => in_quotes = !in_quotes,
                '#' if !in_quotes => {
                    content = &physical[..offset];
                    comment = true;
                    break;
                }
                _ => {}
            }
        }
        let trimmed = content.trim_end();
        match trimmed.strip_suffix('\\') {
            Some(continued) if !comment => {
                current.push_str(continued);
                current.push(' ');
            }
            _ => {
                current.push_str(content);
                logical.push((start, std::mem::take(&mut current)));
            }
        }
    }
    if !current.is_empty() {
        logical.push((start, current));
    }
    logical
}

/// Option state while parsing: squash flags are kept apart so that `all_squash` wins over
/// `no_root_squash` whatever their order, and `no_all_squash` restores the root squash setting.
#[derive(Clone, Copy)]
struct OptionState {
    read_only: bool,
    root_squash: bool,
    all_squash: bool,
    anonymous_uid: u32,
    anonymous_gid: u32,
    secure: bool,
}

impl Default for OptionState {
    fn default() -> OptionState {
        let defaults = ExportOptions::default();
        OptionState {
            read_only: defaults.read_only,
            root_squash: true,
            all_squash: false,
            anonymous_uid: defaults.anonymous_uid,
            anonymous_gid: defaults.anonymous_gid,
            secure: defaults.secure,
        }
    }
}

impl OptionState {
    fn options(&self) -> ExportOptions {
        ExportOptions {
            read_only: self.read_only,
            squash: if self.all_squash {
                Squash::All
            } else if self.root_squash {
                Squash::Root
            } else {
                Squash::None
            },
            anonymous_uid: self.anonymous_uid,
            anonymous_gid: self.anonymous_gid,
            secure: self.secure,
        }
    }

    /// Applies a comma-separated option list, later options overriding earlier ones.
    fn apply(mut self, list: &str) -> Result<OptionState, String> {
        for option in list.split(',').map(str::trim).filter(|option| !option.is_empty()) {
            let (name, value) = match option.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (option, None),
            };
            match (name, value) {
                ("rw", None) => self.read_only = false,
                ("ro", None) => self.read_only = true,
                ("root_squash", None) => self.root_squash = true,
                ("no_root_squash", None) => self.root_squash = false,
                ("all_squash", None) => self.all_squash = true,
                ("no_all_squash", None) => self.all_squash = false,
                ("secure", None) => self.secure = true,
                ("insecure", None) => self.secure = false,
                ("anonuid", Some(value)) => self.anonymous_uid = parse_id(name, value)?,
                ("anongid", Some(value)) => self.anonymous_gid = parse_id(name, value)?,
                (
                    "sync" | "async" | "no_subtree_check" | "subtree_check" | "wdelay" | "no_wdelay"
                    | "crossmnt" | "nohide" | "hide" | "no_acl" | "acl" | "mountpoint" | "mp",
                    None,
                ) => {}
                ("fsid" | "mountpoint" | "mp", Some(value)) if !value.is_empty() => {}
                ("sec", Some(value)) => {
                    if value != "sys" {
                        return Err(format!(
                            "unsupported security flavour in option {option:?} (only sec=sys is supported)"
                        ));
                    }
                }
                _ => return Err(format!("unknown export option {option:?}")),
            }
        }
        Ok(self)
    }
}

fn parse_id(name: &str, value: &str) -> Result<u32, String> {
    value.parse().map_err(|_| format!("option {name}={value:?}: not a numeric id"))
}

/// Parses one logical line: None for a blank line, else the normalised path and its rules.
fn parse_line(
    content: &str,
    resolve: &mut dyn FnMut(&str) -> Vec<IpAddr>,
) -> Result<Option<(String, Vec<ClientRule>)>, String> {
    let content = content.trim_start();
    if content.is_empty() {
        return Ok(None);
    }
    let (raw_path, rest) = split_path(content)?;
    let path = normalize_path(&raw_path)?;
    let mut tokens = rest.split_whitespace().peekable();
    let mut defaults = OptionState::default();
    if let Some(list) = tokens.peek().and_then(|token| token.strip_prefix('-')) {
        defaults = defaults.apply(list)?;
        tokens.next();
    }
    let mut rules = Vec::new();
    for token in tokens {
        let (client, options) = match token.split_once('(') {
            Some((client, list)) => {
                let Some(list) = list.strip_suffix(')') else {
                    return Err(format!("client {token:?}: option list not closed by ')'"));
                };
                if list.contains(['(', ')']) {
                    return Err(format!("client {token:?}: malformed option list"));
                }
                (client, defaults.apply(list)?)
            }
            None if token.contains(')') => return Err(format!("client {token:?}: unmatched ')'")),
            None => (token, defaults),
        };
        rules.push(ClientRule { matcher: parse_client(client, resolve)?, options: options.options() });
    }
    if rules.is_empty() {
        // exportfs warns and exports to everyone with the default options.
        rules.push(ClientRule { matcher: ClientMatcher::Everyone, options: defaults.options() });
    }
    Ok(Some((path, rules)))
}

/// Splits the path token (double quotes group, `\NNN` octal escapes decoded) from the rest.
fn split_path(content: &str) -> Result<(String, &str), String> {
    let mut bytes = Vec::new();
    let mut in_quotes = false;
    let mut end = content.len();
    for (offset, character) in content.char_indices() {
        match character {
            '"' => in_quotes = !in_quotes,
            character if character.is_whitespace() && !in_quotes => {
                end = offset;
                break;
            }
            character => {
                let mut buffer = [0; 4];
                bytes.extend_from_slice(character.encode_utf8(&mut buffer).as_bytes());
            }
        }
    }
    if in_quotes {
        return Err("unterminated double quote in export path".to_owned());
    }
    let path = String::from_utf8(decode_octal_escapes(&bytes))
        .map_err(|_| "export path is not valid UTF-8 after decoding its escapes".to_owned())?;
    Ok((path, &content[end..]))
}

/// Decodes `\NNN` (three octal digits, at most `\377`) escapes; other backslashes stay as they are.
fn decode_octal_escapes(bytes: &[u8]) -> Vec<u8> {
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'\\'
            && let Some(digits) = bytes.get(index + 1..index + 4)
            && digits.iter().all(|digit| (b'0'..=b'7').contains(digit))
            && digits[0] <= b'3'
        {
            decoded.push(digits.iter().fold(0u8, |value, digit| (value << 3) | (digit - b'0')));
            index += 4;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    decoded
}

/// Parses a client specification (the part before the option list; empty means everyone).
fn parse_client(client: &str, resolve: &mut dyn FnMut(&str) -> Vec<IpAddr>) -> Result<ClientMatcher, String> {
    if client.is_empty() || client == "*" {
        return Ok(ClientMatcher::Everyone);
    }
    if client.starts_with('@') {
        return Err(format!("client {client:?}: netgroups are not supported"));
    }
    if client.contains(['*', '?', '[', ']']) {
        return Err(format!("client {client:?}: wildcard host names are not supported"));
    }
    if let Some((address, mask)) = client.split_once('/') {
        let address: IpAddr =
            address.parse().map_err(|_| format!("client {client:?}: {address:?} is not an IP address"))?;
        let network = if let Ok(prefix) = mask.parse::<u8>() {
            IpNet::new(address, prefix).map_err(|_| format!("client {client:?}: prefix length too long"))?
        } else if let Ok(netmask) = mask.parse::<IpAddr>() {
            IpNet::with_netmask(address, netmask)
                .map_err(|_| format!("client {client:?}: invalid netmask {mask:?}"))?
        } else {
            return Err(format!("client {client:?}: invalid prefix length or netmask {mask:?}"));
        };
        return Ok(ClientMatcher::Network(canonical_network(network.trunc())));
    }
    if let Ok(address) = client.parse::<IpAddr>() {
        return Ok(ClientMatcher::Address(address.to_canonical()));
    }
    let valid_name = client.len() <= 253
        && !client.starts_with(['-', '.'])
        && client.chars().all(|character| character.is_ascii_alphanumeric() || "-._".contains(character));
    if !valid_name {
        return Err(format!("client {client:?}: not an address, network or host name"));
    }
    Ok(ClientMatcher::Host { name: client.to_owned(), addresses: resolve(client) })
}

/// An IPv6 network inside `::ffff:0:0/96` becomes the IPv4 network it maps, since client addresses
/// are compared in canonical form.
fn canonical_network(network: IpNet) -> IpNet {
    if let IpNet::V6(v6) = network
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && let Ok(mapped) = Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(mapped);
    }
    network
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    /// A resolver that knows `host1` (10.1.1.1 and fd00::1) and `host2` (10.2.2.2).
    fn fake_resolver(name: &str) -> Vec<IpAddr> {
        match name {
            "host1" => vec![ip("10.1.1.1"), ip("fd00::1")],
            "host2" => vec![ip("10.2.2.2")],
            _ => Vec::new(),
        }
    }

    fn parse(text: &str) -> Result<Exports, ExportsError> {
        Exports::parse_with_resolver(text, &mut fake_resolver)
    }

    fn defaults() -> ExportOptions {
        ExportOptions::default()
    }

    fn rw() -> ExportOptions {
        ExportOptions { read_only: false, ..defaults() }
    }

    fn rule(matcher: ClientMatcher, options: ExportOptions) -> ClientRule {
        ClientRule { matcher, options }
    }

    fn net(text: &str) -> ClientMatcher {
        ClientMatcher::Network(text.parse().unwrap())
    }

    fn syntax_line(result: Result<Exports, ExportsError>) -> (usize, String) {
        match result {
            Err(ExportsError::Syntax { line, message }) => (line, message),
            other => panic!("expected a syntax error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_documented_ones() {
        assert_eq!(
            defaults(),
            ExportOptions {
                read_only: true,
                squash: Squash::Root,
                anonymous_uid: 65534,
                anonymous_gid: 65534,
                secure: false,
            }
        );
    }

    #[test]
    fn line_table() {
        let host1 =
            || ClientMatcher::Host { name: "host1".into(), addresses: vec![ip("10.1.1.1"), ip("fd00::1")] };
        let table: Vec<(&str, &str, Vec<ClientRule>)> = vec![
            ("/a *(rw)", "/a", vec![rule(ClientMatcher::Everyone, rw())]),
            ("/a", "/a", vec![rule(ClientMatcher::Everyone, defaults())]),
            ("/a   # only a path", "/a", vec![rule(ClientMatcher::Everyone, defaults())]),
            ("/a (rw)", "/a", vec![rule(ClientMatcher::Everyone, rw())]),
            ("/a 10.0.0.1", "/a", vec![rule(ClientMatcher::Address(ip("10.0.0.1")), defaults())]),
            ("/a ::ffff:10.0.0.1()", "/a", vec![rule(ClientMatcher::Address(ip("10.0.0.1")), defaults())]),
            ("/a 10.0.0.0/8(rw)", "/a", vec![rule(net("10.0.0.0/8"), rw())]),
            ("/a 10.1.2.3/255.255.0.0(rw)", "/a", vec![rule(net("10.1.0.0/16"), rw())]),
            ("/a fd00::/8(rw)", "/a", vec![rule(net("fd00::/8"), rw())]),
            ("/a ::ffff:10.0.0.0/104(rw)", "/a", vec![rule(net("10.0.0.0/8"), rw())]),
            ("/a host1(rw)", "/a", vec![rule(host1(), rw())]),
            (
                "/a nowhere(rw)",
                "/a",
                vec![rule(ClientMatcher::Host { name: "nowhere".into(), addresses: vec![] }, rw())],
            ),
            ("//a//b/// *", "/a/b", vec![rule(ClientMatcher::Everyone, defaults())]),
            ("/ *", "/", vec![rule(ClientMatcher::Everyone, defaults())]),
            ("\"/my dir\" *(rw)", "/my dir", vec![rule(ClientMatcher::Everyone, rw())]),
            ("/my\\040dir *(rw)", "/my dir", vec![rule(ClientMatcher::Everyone, rw())]),
            ("/a *(ro,rw)", "/a", vec![rule(ClientMatcher::Everyone, rw())]),
            ("/a *(rw,ro)", "/a", vec![rule(ClientMatcher::Everyone, defaults())]),
            (
                "/a *(rw,no_root_squash,anonuid=7,anongid=8,secure,sync,no_subtree_check,fsid=0,sec=sys)",
                "/a",
                vec![rule(
                    ClientMatcher::Everyone,
                    ExportOptions {
                        read_only: false,
                        squash: Squash::None,
                        anonymous_uid: 7,
                        anonymous_gid: 8,
                        secure: true,
                    },
                )],
            ),
            (
                "/a *(all_squash,no_root_squash)",
                "/a",
                vec![rule(ClientMatcher::Everyone, ExportOptions { squash: Squash::All, ..defaults() })],
            ),
            (
                "/a *(no_root_squash,all_squash)",
                "/a",
                vec![rule(ClientMatcher::Everyone, ExportOptions { squash: Squash::All, ..defaults() })],
            ),
            ("/a *(all_squash,no_all_squash)", "/a", vec![rule(ClientMatcher::Everyone, defaults())]),
            (
                "/a *(secure,insecure,async,wdelay,no_wdelay,crossmnt,nohide,hide,acl,no_acl,mp,mountpoint=/x)",
                "/a",
                vec![rule(ClientMatcher::Everyone, defaults())],
            ),
            (
                "/a -rw,no_root_squash host2 *(ro)",
                "/a",
                vec![
                    rule(
                        ClientMatcher::Host { name: "host2".into(), addresses: vec![ip("10.2.2.2")] },
                        ExportOptions { squash: Squash::None, ..rw() },
                    ),
                    rule(ClientMatcher::Everyone, ExportOptions { squash: Squash::None, ..defaults() }),
                ],
            ),
            ("/a -rw", "/a", vec![rule(ClientMatcher::Everyone, rw())]),
            (
                "  /a\t10.0.0.1(rw)  *(ro) # trailing comment",
                "/a",
                vec![
                    rule(ClientMatcher::Address(ip("10.0.0.1")), rw()),
                    rule(ClientMatcher::Everyone, defaults()),
                ],
            ),
            (
                "/a 10.0.0.1(rw) \\\n   *(ro)",
                "/a",
                vec![
                    rule(ClientMatcher::Address(ip("10.0.0.1")), rw()),
                    rule(ClientMatcher::Everyone, defaults()),
                ],
            ),
            ("\"/a#b\" *(rw)", "/a#b", vec![rule(ClientMatcher::Everyone, rw())]),
            ("/a *(rw)\r", "/a", vec![rule(ClientMatcher::Everyone, rw())]),
        ];
        for (text, path, rules) in table {
            let exports = parse(text).unwrap_or_else(|error| panic!("{text:?}: {error}"));
            assert_eq!(exports.entries, vec![ExportEntry { path: path.into(), rules }], "{text:?}");
        }
    }

    #[test]
    fn space_before_options_means_everyone() {
        let exports = parse("/data host2 (rw)").unwrap();
        let rules = &exports.entries[0].rules;
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].options, defaults());
        assert_eq!(rules[1], rule(ClientMatcher::Everyone, rw()));
        // host2 gets read-only (its own rule comes first), everyone else read-write.
        assert_eq!(exports.options_for_mount("/data", ip("10.2.2.2")), Some(defaults()));
        assert_eq!(exports.options_for_mount("/data", ip("192.0.2.1")), Some(rw()));
    }

    #[test]
    fn comments_blank_lines_and_duplicates() {
        let text = "# header\n\n   \n/a 10.0.0.1(rw)\n# middle\n/b *\n/a/ *(ro)\n";
        let exports = parse(text).unwrap();
        assert_eq!(exports.entries.len(), 2);
        assert_eq!(exports.entries[0].path, "/a");
        assert_eq!(
            exports.entries[0].rules,
            vec![
                rule(ClientMatcher::Address(ip("10.0.0.1")), rw()),
                rule(ClientMatcher::Everyone, defaults())
            ]
        );
        assert_eq!(exports.entries[1].path, "/b");
        assert_eq!(parse("").unwrap(), Exports::default());
        assert_eq!(parse("# nothing\n\\\n").unwrap(), Exports::default());
    }

    #[test]
    fn errors_name_the_line() {
        let cases: Vec<(&str, usize, &str)> = vec![
            ("/a *(rw)\n/b *(bogus)", 2, "bogus"),
            ("# c\n\n/a *(rw,frobnicate=1)", 3, "frobnicate"),
            ("relative *(rw)", 1, "absolute"),
            ("/a/../b *", 1, ".."),
            ("/a/./b *", 1, "\".\""),
            ("/a *.example.com(rw)", 1, "wildcard"),
            ("/a @group(rw)", 1, "netgroups"),
            ("/a *(rw", 1, "not closed"),
            ("/a host(rw)x", 1, "not closed"),
            ("/a *(rw))", 1, "malformed"),
            ("/a host)", 1, "unmatched"),
            ("\"/a *(rw)", 1, "quote"),
            ("/a 10.0.0.0/33", 1, "prefix"),
            ("/a 10.0.0.0/255.0.255.0", 1, "netmask"),
            ("/a 10.0.0.0/x", 1, "netmask"),
            ("/a nothost/8", 1, "not an IP address"),
            ("/a *(anonuid=-1)", 1, "anonuid"),
            ("/a *(anongid=x)", 1, "anongid"),
            ("/a *(sec=krb5)", 1, "sec=krb5"),
            ("/a *(fsid=)", 1, "fsid"),
            ("/a *(rw=x)", 1, "rw=x"),
            ("/a -bogus *", 1, "bogus"),
            ("/a \\\n  *(rw) \\\n  *(bogus)\n", 1, "bogus"),
            ("/a *(rw)\n/b \\\n  *(bogus)\n", 2, "bogus"),
            ("/a ho$t", 1, "host name"),
        ];
        for (text, line, needle) in cases {
            let (got, message) = syntax_line(parse(text));
            assert_eq!(got, line, "{text:?}: {message}");
            assert!(message.contains(needle), "{text:?}: {message:?} should mention {needle:?}");
        }
        let error = parse("/a\n/b *(nope)").unwrap_err().to_string();
        assert!(error.contains("line 2") && error.contains("nope"), "{error}");
    }

    #[test]
    fn folders_below_an_export_mount_with_the_longest_export_that_admits_the_client() {
        let exports = parse("/ 10.0.0.0/8(ro)\n/data 10.1.0.0/16(rw)\n/database *(rw,all_squash)\n").unwrap();
        let mount = |path: &str, client: &str| exports.options_for_mount(path, ip(client));
        assert_eq!(mount("/data/a/b", "10.1.2.3").map(|o| o.read_only), Some(false));
        // Not admitted by /data, so the enclosing / decides.
        assert_eq!(mount("/data/a", "10.2.0.1").map(|o| o.read_only), Some(true));
        // /database is not below /data: component-wise prefixes only.
        assert_eq!(mount("/database/x", "10.1.2.3").map(|o| o.squash), Some(Squash::All));
        assert_eq!(mount("/elsewhere", "192.0.2.1"), None);
        assert_eq!(mount("/data/x", "192.0.2.1"), None);
    }

    #[test]
    fn matching_addresses_networks_and_hosts() {
        let text = "/v4 10.0.0.0/8(rw)\n/mask 192.168.0.0/255.255.255.0(rw)\n/v6 fd00::/8(rw)\n\
                    /one 10.9.9.9(rw)\n/host host1(rw)\n/mapped ::ffff:172.16.0.1(rw)\n";
        let exports = parse(text).unwrap();
        let mount = |path: &str, client: &str| exports.options_for_mount(path, ip(client)).is_some();
        assert!(mount("/v4", "10.200.0.1"));
        assert!(!mount("/v4", "11.0.0.1"));
        assert!(mount("/v4", "::ffff:10.200.0.1"));
        assert!(!mount("/v4", "fd00::1"));
        assert!(mount("/mask", "192.168.0.254"));
        assert!(!mount("/mask", "192.168.1.1"));
        assert!(mount("/v6", "fd12::5"));
        assert!(!mount("/v6", "fe80::1"));
        assert!(!mount("/v6", "10.0.0.1"));
        assert!(mount("/one", "10.9.9.9"));
        assert!(mount("/one", "::ffff:10.9.9.9"));
        assert!(!mount("/one", "10.9.9.8"));
        assert!(mount("/host", "10.1.1.1"));
        assert!(mount("/host", "::ffff:10.1.1.1"));
        assert!(mount("/host", "fd00::1"));
        assert!(!mount("/host", "10.2.2.2"));
        assert!(mount("/mapped", "172.16.0.1"));
        // Paths are normalised; invalid or unexported paths match nothing.
        assert!(mount("//v4/", "10.0.0.1"));
        assert!(mount("/v4/sub", "10.0.0.1"));
        assert!(!mount("/v4sub", "10.0.0.1"));
        assert!(!mount("v4", "10.0.0.1"));
        assert!(!mount("/v4/..", "10.0.0.1"));
        assert!(!mount("/nope", "10.0.0.1"));
        // A host that did not resolve matches nobody.
        let unresolved = parse("/a nowhere(rw)").unwrap();
        assert_eq!(unresolved.options_for_mount("/a", ip("127.0.0.1")), None);
        // Matchers built directly with mapped addresses match too.
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        assert!(ClientMatcher::Address(mapped).matches(ip("10.0.0.1")));
        assert!(ClientMatcher::Network("::ffff:0:0/96".parse().unwrap()).matches(mapped));
        assert!(ClientMatcher::Everyone.matches(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    }

    #[test]
    fn first_matching_rule_wins() {
        let exports = parse("/a 10.0.0.0/8(rw) 10.1.0.0/16(ro,no_root_squash) *(ro)").unwrap();
        assert_eq!(exports.options_for_mount("/a", ip("10.1.0.1")), Some(rw()));
        assert_eq!(exports.options_for_mount("/a", ip("11.0.0.1")), Some(defaults()));
    }

    #[test]
    fn request_options_are_the_least_privileged() {
        let text = "/rw 10.0.0.0/8(rw,no_root_squash,anonuid=1,anongid=1)\n\
                    /root 10.0.0.0/8(rw,anonuid=2,anongid=2) *(rw,all_squash)\n\
                    /all 10.1.0.0/16(rw,all_squash,anonuid=3,anongid=4,secure)\n\
                    /all2 10.1.0.0/16(rw,all_squash,anonuid=5,anongid=6)\n\
                    /ro 10.2.0.0/16(ro,no_root_squash)\n";
        let exports = parse(text).unwrap();
        let request = |client: &str| exports.options_for_request(ip(client));
        assert_eq!(
            request("10.9.0.1"),
            Some(ExportOptions {
                read_only: false,
                squash: Squash::Root,
                anonymous_uid: 2,
                anonymous_gid: 2,
                secure: false
            })
        );
        assert_eq!(
            request("10.1.0.1"),
            Some(ExportOptions {
                read_only: false,
                squash: Squash::All,
                anonymous_uid: 3,
                anonymous_gid: 4,
                secure: true
            })
        );
        assert_eq!(
            request("10.2.0.1"),
            Some(ExportOptions {
                read_only: true,
                squash: Squash::Root,
                anonymous_uid: 2,
                anonymous_gid: 2,
                secure: false
            })
        );
        // Only the `*` rule of /root matches outside 10/8.
        assert_eq!(request("192.0.2.1"), Some(ExportOptions { squash: Squash::All, ..rw() }));
        assert_eq!(parse("/a 10.0.0.0/8").unwrap().options_for_request(ip("11.0.0.1")), None);
        assert_eq!(Exports::default().options_for_request(ip("10.0.0.1")), None);
    }

    #[test]
    fn caller_for_each_squash_mode() {
        let options = |squash| ExportOptions { squash, anonymous_uid: 99, anonymous_gid: 98, ..rw() };
        let caller = |uid, gid, groups: Vec<u32>| Caller { uid, gid, groups };

        let none = options(Squash::None);
        assert_eq!(none.caller_for(Some((0, 0, &[0, 5]))), caller(0, 0, vec![0, 5]));
        assert_eq!(none.caller_for(Some((1000, 100, &[]))), caller(1000, 100, vec![]));
        assert_eq!(none.caller_for(None), caller(99, 98, vec![]));

        let root = options(Squash::Root);
        assert_eq!(root.caller_for(Some((0, 0, &[0, 5]))), caller(99, 98, vec![98, 5]));
        assert_eq!(root.caller_for(Some((0, 10, &[10]))), caller(99, 10, vec![10]));
        assert_eq!(root.caller_for(Some((1000, 0, &[4, 0]))), caller(1000, 98, vec![4, 98]));
        assert_eq!(root.caller_for(Some((1000, 100, &[4]))), caller(1000, 100, vec![4]));
        assert_eq!(root.caller_for(None), caller(99, 98, vec![]));

        let all = options(Squash::All);
        assert_eq!(all.caller_for(Some((1000, 100, &[4, 5]))), caller(99, 98, vec![]));
        assert_eq!(all.caller_for(Some((0, 0, &[0]))), caller(99, 98, vec![]));
        assert_eq!(all.caller_for(None), caller(99, 98, vec![]));
    }

    #[test]
    fn load_reads_the_file_or_names_it() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("exports");
        std::fs::write(&path, "/a 127.0.0.1(rw)\n").unwrap();
        let exports = Exports::load(&path).unwrap();
        assert_eq!(exports.options_for_mount("/a", ip("127.0.0.1")), Some(rw()));
        let missing = directory.path().join("missing");
        match Exports::load(&missing) {
            Err(ExportsError::Read { path, .. }) => assert!(path.ends_with("missing")),
            other => panic!("expected a read error, got {other:?}"),
        }
    }

    #[test]
    fn normalize_path_cases() {
        assert_eq!(normalize_path("/").unwrap(), "/");
        assert_eq!(normalize_path("///").unwrap(), "/");
        assert_eq!(normalize_path("/a//b/").unwrap(), "/a/b");
        assert_eq!(normalize_path("/a/.b/c..").unwrap(), "/a/.b/c..");
        assert!(normalize_path("").is_err());
        assert!(normalize_path("a/b").is_err());
        assert!(normalize_path("/a/./b").is_err());
        assert!(normalize_path("/..").is_err());
    }

    /// Random lines built from exports fragments and random bytes never panic the parser or the
    /// matchers.
    #[test]
    fn random_input_never_panics() {
        const FRAGMENTS: &[&str] = &[
            "/",
            "/a",
            "//b/",
            "\"",
            "#",
            "\\",
            "\\040",
            "\\377",
            "\\\n",
            "\n",
            " ",
            "\t",
            "(",
            ")",
            ",",
            "=",
            "*",
            "@",
            "-",
            "rw",
            "ro",
            "all_squash",
            "no_root_squash",
            "anonuid=",
            "4294967296",
            "10.0.0.0",
            "/8",
            "/255.255.0.0",
            "::ffff:",
            "fd00::",
            "/129",
            "host1",
            "é",
            "..",
            ".",
            "sec=",
            "fsid=",
            "\r",
        ];
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let clients = [ip("10.0.0.1"), ip("::ffff:10.1.1.1"), ip("fd00::1"), ip("127.0.0.1")];
        for _ in 0..5000 {
            let mut text = String::new();
            for _ in 0..(next() % 24) {
                if next() % 4 == 0 {
                    let bytes: Vec<u8> = (0..(next() % 6)).map(|_| next() as u8).collect();
                    text.push_str(&String::from_utf8_lossy(&bytes));
                } else {
                    text.push_str(FRAGMENTS[(next() % FRAGMENTS.len() as u64) as usize]);
                }
            }
            if let Ok(exports) = parse(&text) {
                for client in clients {
                    let _ = exports.options_for_request(client);
                    for entry in &exports.entries {
                        let _ = exports.options_for_mount(&entry.path, client);
                    }
                    let _ = exports.options_for_mount(&text, client);
                }
            }
            let _ = normalize_path(&text);
        }
    }
}
